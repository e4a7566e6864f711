"""``mnv3 compare`` layer by layer for two OpenVINO IRs of one network (e.g. its float32 and
int8 builds): the same rows as the ONNX Runtime path of ``mnv3.compare``.

Layers are the Convolution / GroupConvolution / MatMul ops, matched by friendly name (NNCF
keeps them). A layer's output is taken after its bias Add and its ReLU/Clamp, and each
tensor is measured *as the next layer sees it*: through the FakeQuantize NNCF put after it,
if any. Tensors are named by the op that computes them, FakeQuantize skipped, so a float
model's tensor meets the int8 model's quantized copy of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

LAYER_OPS = ("Convolution", "GroupConvolution", "MatMul")
_FOLLOW = ("Add", "Relu", "Clamp")  # bias and activation folded into the layer's output


def _sole_consumer(output):
    targets = list(output.get_target_inputs())
    return targets[0].get_node() if len(targets) == 1 else None


def _key(output) -> str:
    """The tensor's name: its producer (FakeQuantize skipped) and port."""
    node = output.get_node()
    while node.get_type_name() == "FakeQuantize":
        output = node.input(0).get_source_output()
        node = output.get_node()
    return f"{node.get_friendly_name()}:{output.get_index()}"


def _as_seen(output):
    """``output`` as its consumer reads it: through a lone FakeQuantize, if there is one."""
    nxt = _sole_consumer(output)
    return nxt.output(0) if nxt is not None and nxt.get_type_name() == "FakeQuantize" else output


def _layer_out(op):
    out = op.output(0)
    while True:
        nxt = _sole_consumer(out)
        if nxt is None or nxt.get_type_name() not in _FOLLOW:
            return out
        if nxt.get_type_name() == "Add" and not any(
                nxt.input(i).get_source_output().get_node().get_type_name() == "Constant"
                for i in range(nxt.get_input_size())):
            return out  # a residual add, not a bias: the layer ends before it
        out = nxt.output(0)


def layer_ports(model) -> dict[str, tuple[str, object, str, object]]:
    """layer name -> (input key, input as seen, output key, output as seen)."""
    out = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in LAYER_OPS:
            continue
        src = op.input(0).get_source_output()
        o = _layer_out(op)
        out[op.get_friendly_name()] = (_key(src), src, _key(o), _as_seen(o))
    return out


def _tensors(path: Path, ports: Sequence, images: np.ndarray, chunk: int) -> list[list]:
    """The value of each port on every chunk of ``images``: [port][chunk] arrays."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    wanted = layer_ports(model)
    # one Result per distinct tensor (OpenVINO adds a port once, however often it is asked)
    distinct: dict[tuple[str, int], int] = {}
    outs, where = [], []
    for name, i in ports:
        port = wanted[name][i]
        key = (port.get_node().get_friendly_name(), port.get_index())
        if key not in distinct:
            distinct[key] = len(outs)
            port.get_tensor().add_names({f"mnv3-probe-{len(outs)}"})  # found by name below
            outs.append(port)
        where.append(distinct[key])
    model.add_outputs(outs)
    names = [sorted(port.get_names()) for port in outs]  # a model output keeps its own name
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    values: list[list] = [[] for _ in ports]
    dim = compiled.input(0).get_partial_shape()[0]
    step = dim.get_length() if dim.is_static else chunk  # a fixed batch: full, padded batches
    for i in range(0, len(images), step):
        x = images[i:i + step]
        n = len(x)
        if dim.is_static and n < step:
            x = np.concatenate([x, np.repeat(x[-1:], step - n, axis=0)])
        r = req.infer({0: x})
        for k, j in enumerate(where):
            values[k].append(np.array(_value(r, names[j]))[:n])
    return values


def _value(result, names: list[str]):
    for name in names:
        try:
            return result[name]
        except KeyError:
            continue
    raise KeyError(f"none of the tensor names {names} is an output of the compiled model")


def layer_rows(xml_a: Path, xml_b: Path, images: np.ndarray, sums_cls, chunk: int = 4
               ) -> list[dict]:
    """Per shared layer: error of its output, and the error it adds (as ``mnv3.compare``)."""
    import openvino as ov

    core = ov.Core()
    pa, pb = layer_ports(core.read_model(str(xml_a))), layer_ports(core.read_model(str(xml_b)))
    layers = [n for n in pa if n in pb and pa[n][0] == pb[n][0] and pa[n][2] == pb[n][2]]
    if not layers:
        return []
    ports = [(n, i) for n in layers for i in (1, 3)]
    va, vb = _tensors(xml_a, ports, images, chunk), _tensors(xml_b, ports, images, chunk)
    sums = sums_cls()
    for k, (name, i) in enumerate(ports):
        key = pa[name][i - 1]
        if key in sums.s:
            continue  # a tensor two layers read is measured once
        for a, b in zip(va[k], vb[k]):
            sums.add(key, a, b)
    return [{"index": i, "layer": n, "tensor": pa[n][2], **sums.row(pa[n][2]),
             "adds": sums.rel_sq(pa[n][2]) - sums.rel_sq(pa[n][0])}
            for i, n in enumerate(layers)]
