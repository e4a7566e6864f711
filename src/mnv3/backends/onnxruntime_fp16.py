"""fp16 conversion for ONNX Runtime: float16 weights and compute, float32 graph I/O, the int8
layers of a mixed model left as they are."""

from __future__ import annotations

from typing import Sequence

import onnx

from mnv3.engine_errors import ort_quantization_errors
from mnv3.errors import BuildError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def convert_fp16(model: onnx.ModelProto, keep_fp32_nodes: Sequence[str] = ()) -> onnx.ModelProto:
    """fp16 weights and compute, float32 graph inputs/outputs (callers keep passing float32).

    QuantizeLinear/DequantizeLinear and ``keep_fp32_nodes`` (the int8 convolutions of a mixed
    model, which ORT fuses to QLinearConv) stay float32; casts are inserted around them.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    try:
        model = convert_float_to_float16(
            model, keep_io_types=True, disable_shape_infer=False,
            op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(QDQ_OPS),
            node_block_list=list(keep_fp32_nodes),
        )
    except ort_quantization_errors() as e:
        raise BuildError(f"float16 conversion failed: {e}") from e
    return drop_cast_round_trips(model)


def drop_cast_round_trips(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove Cast(fp16) -> Cast(fp32) chains (and the reverse) the fp16 converter leaves.

    The converter wraps every kept-fp32 node in casts, even between two kept nodes, so
    DequantizeLinear -> Cast16 -> Cast32 -> Conv appears; ORT then cannot fuse the int8
    QLinearConv and runs the Conv in float. Dropping the round trip only removes a rounding.
    """
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}

    def cast_to(n):
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" \
            else None

    rename = {}
    for n in graph.node:
        first = producer.get(n.input[0]) if n.input else None
        if first is None or n.output[0] in outputs:
            continue
        a, b = cast_to(first), cast_to(n)
        if a in floats and b in floats and a != b:
            rename[n.output[0]] = first.input[0]  # the value before the round trip
    for n in graph.node:
        for i, name in enumerate(n.input):
            while name in rename:
                name = rename[name]
            n.input[i] = name
    used = {i for n in graph.node for i in n.input} | outputs
    changed = True
    while changed:  # drop casts nobody reads any more
        keep = [n for n in graph.node if n.op_type != "Cast" or n.output[0] in used]
        changed = len(keep) != len(graph.node)
        del graph.node[:]
        graph.node.extend(keep)
        used = {i for n in graph.node for i in n.input} | outputs
    return model
