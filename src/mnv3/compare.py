"""Where two builds of one network differ: final outputs, worst images, and layer by layer.

``compare(a, b, images)`` runs two built models (e.g. force_float32 and qint8_mixed_float16) on
the same preprocessed images and reports top-1 agreement, logit cosine / relative L2 / max |diff|
and the images that differ most. Where both engines expose intermediate tensors (ONNX Runtime:
outputs added to a copy of the graph; the tensors are matched by name), it also reports each
layer's error and the error that layer *adds*: the growth of the relative squared error (noise
power / signal power) from the layer's input to its output. The layers adding most are the
ones worth looking at; the build's accuracy fallback (mnv3.gate) instead measures each group
of layers by its effect on the output (backends/onnxruntime.py explains why). Peers:
Polygraphy ``run --validate``, ORT's ``qdq_loss_debug``, NNCF's accuracy-control ranking.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnx

from mnv3.onnx_source import tensor_readers

INT8_OPS = ("Conv", "Gemm", "MatMul")


# ----------------------------------------------------------------------------- metrics
def output_metrics(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Agreement and error of logits ``b`` against reference logits ``a`` ([N, classes])."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
    rel = np.linalg.norm(a - b, axis=1) / (np.linalg.norm(a, axis=1) + 1e-30)
    return {"count": int(len(a)), "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "rel_l2_mean": float(rel.mean()), "max_abs_diff": float(np.abs(a - b).max()),
            "per_image_cosine": cos}


class _ErrorSums:
    """Streaming per-tensor sums: signal power, noise power, max |diff|, cosine terms."""

    def __init__(self):
        self.s = {}

    def add(self, name: str, a: np.ndarray, b: np.ndarray) -> None:
        a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        t = self.s.setdefault(name, [0.0, 0.0, 0.0, 0.0, 0.0])
        d = a - b
        t[0] += float(a @ a)
        t[1] += float(d @ d)
        t[2] = max(t[2], float(np.abs(d).max()) if d.size else 0.0)
        t[3] += float(a @ b)
        t[4] += float(b @ b)

    def rel_sq(self, name: str) -> float:
        sig, noise = self.s[name][0], self.s[name][1]
        return noise / sig if sig > 0 else 0.0

    def row(self, name: str) -> dict[str, float]:
        sig, noise, mx, ab, bb = self.s[name]
        return {"rel_l2": float(np.sqrt(noise / sig)) if sig > 0 else 0.0,
                "cosine": float(ab / (np.sqrt(sig * bb) + 1e-30)), "max_abs_diff": mx}


# ----------------------------------------------------------------------------- ONNX graphs
def _session(model: onnx.ModelProto, names: Sequence[str]):
    """An ORT CPU session over a copy of ``model`` that also outputs the tensors ``names``."""
    from mnv3.onnx_source import cpu_session, set_batch_dim

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m = set_batch_dim(m, "batch")  # a fixed-batch build still takes any chunk here
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n)
                          for n in names if n not in have)
    return cpu_session(m, optimize=False)  # fusions would remove the tensors we ask for


def _run(sess, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    outs = sess.run(list(names), {sess.get_inputs()[0].name: x})
    return dict(zip(names, outs))


def _tensors(model: onnx.ModelProto) -> set[str]:
    return {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}


def _as_seen(model: onnx.ModelProto) -> dict[str, str]:
    """tensor -> the tensor carrying its value as the next layer sees it: the output of the
    QuantizeLinear -> DequantizeLinear pair it feeds in a QDQ graph (quantized and clamped to
    the calibrated range), else itself."""
    consumers = tensor_readers(model)
    seen = {}
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        dq = [c for c in consumers.get(n.output[0], []) if c.op_type == "DequantizeLinear"]
        if dq:
            seen.setdefault(n.input[0], dq[0].output[0])
    return seen


def layer_tensors(model: onnx.ModelProto, other: onnx.ModelProto,
                  layers: Sequence[str] | None = None) -> dict[str, tuple[str, str]]:
    """layer name -> (input tensor, output tensor) of ``model``'s Conv/Gemm/MatMul nodes whose
    tensors ``other`` has too. The output is taken after the layer's own ReLU/Clip, if any:
    ORT folds a quantized activation into its convolution, whose output then takes the
    activation's name (and is clamped by the QuantizeLinear that follows, see ``_as_seen``).
    """
    nodes = [n for n in model.graph.node if n.op_type in INT8_OPS and n.input and n.output]
    if layers is not None:
        wanted = set(layers)
        nodes = [n for n in nodes if n.name in wanted]
    consumers = tensor_readers(model)
    both = _tensors(model) & _tensors(other)
    out = {}
    for n in nodes:
        after = consumers.get(n.output[0], [])
        act = after[0].output[0] if len(after) == 1 and after[0].op_type in ("Relu", "Clip") \
            else n.output[0]
        if n.input[0] in both and act in both:
            out[n.name] = (n.input[0], act)
    return out


def _measure(ga: onnx.ModelProto, gb: onnx.ModelProto, io: dict, images: np.ndarray,
             chunk: int = 4) -> "_ErrorSums":
    """Error sums of every tensor in ``io``, ``ga``'s value against ``gb``'s as seen next."""
    names = sorted({t for pair in io.values() for t in pair})
    seen_a, seen_b = _as_seen(ga), _as_seen(gb)
    na = {t: seen_a.get(t, t) for t in names}
    nb = {t: seen_b.get(t, t) for t in names}
    ra, rb = _session(ga, sorted(set(na.values()))), _session(gb, sorted(set(nb.values())))
    sums = _ErrorSums()
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk]
        a, b = _run(ra, x, sorted(set(na.values()))), _run(rb, x, sorted(set(nb.values())))
        for t in names:
            sums.add(t, a[na[t]], b[nb[t]])
    return sums


# ----------------------------------------------------------------------------- two builds
@dataclass
class CompareReport:
    """What ``compare`` measured; ``to_dict`` is its JSON."""

    model_a: str
    model_b: str
    images: int
    outputs: dict[str, Any]
    worst_images: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    system: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(model_a, model_b, files: Sequence[os.PathLike], *, threads: int | None = 1,
            worst: int = 5, layers: bool = True, chunk: int = 8) -> CompareReport:
    """Run built models ``model_a`` (the reference) and ``model_b`` on ``files``."""
    import mnv3
    from mnv3.calibration import decode_batches
    from mnv3.errors import UsageError
    from mnv3.sysinfo import int8_isa, system_info

    files = list(files)
    if not files:
        raise UsageError("compare needs images; pass --images DIR with at least one image")
    sa, sb = mnv3.load(model_a, threads=threads), mnv3.load(model_b, threads=threads)
    if tuple(sa.meta.input_shape[1:]) != tuple(sb.meta.input_shape[1:]) \
            or sa.meta.num_classes != sb.meta.num_classes:
        raise UsageError(f"{model_a} and {model_b} are not builds of one network (input "
                         f"{sa.meta.input_shape} vs {sb.meta.input_shape}, classes "
                         f"{sa.meta.num_classes} vs {sb.meta.num_classes})")
    notes = []
    if sa.meta.preprocess != sb.meta.preprocess:
        notes.append("the two models preprocess differently: images go through model A's "
                     "preprocessing for both")
    batches = list(decode_batches(files, sa.meta.preprocess, chunk))
    ya = np.concatenate([sa.predict(x) for x in batches])
    yb = np.concatenate([sb.predict(x) for x in batches])
    out = output_metrics(ya, yb)
    cos = out.pop("per_image_cosine")
    order = np.argsort(cos)[:worst]
    worst_rows = [{"image": Path(files[i]).name, "cosine": float(cos[i]),
                   "top1_a": int(ya[i].argmax()), "top1_b": int(yb[i].argmax())}
                  for i in order]
    rows: list[dict] = []
    if layers:
        rows, why = _layers(Path(model_a), sa.meta, Path(model_b), sb.meta,
                            np.concatenate(batches))
        notes += [why] if why else []
    isa = {sa.meta.extra.get("isa"), sb.meta.extra.get("isa")} - {None}
    system = {**system_info(), "int8_isa": int8_isa()}
    if isa and int8_isa() not in isa:
        notes.append(f"measured on {int8_isa()}, the models were validated on "
                     f"{', '.join(sorted(isa))}")
    sa.close()
    sb.close()
    return CompareReport(str(model_a), str(model_b), len(files), out, worst_rows, rows, notes,
                         system)


def _layers(dir_a: Path, meta_a, dir_b: Path, meta_b, images: np.ndarray):
    """(per-layer rows, why there are none): both ONNX graphs (ONNX Runtime) or both OpenVINO
    IRs; a mixed pair has no tensor names in common."""
    fa, fb = dir_a / meta_a.compiled_file, dir_b / meta_b.compiled_file
    if fa.suffix == fb.suffix == ".onnx":
        rows = _layer_rows(onnx.load(str(fa)), onnx.load(str(fb)), images)
    elif fa.suffix == fb.suffix == ".xml":
        from mnv3.compare_openvino import layer_rows

        rows = layer_rows(fa, fb, images, _ErrorSums)
    else:
        return [], ("per-layer errors need both models on one engine's graph format (ONNX "
                    "or OpenVINO IR); this pair compares final outputs only")
    return rows, None if rows else "the two graphs share no Conv/Gemm/MatMul layer"


def _layer_rows(ga: onnx.ModelProto, gb: onnx.ModelProto, images: np.ndarray) -> list[dict]:
    """Per shared Conv/Gemm/MatMul layer: error of its output, and the error it adds."""
    io = layer_tensors(ga, gb)
    if not io:
        return []
    sums = _measure(ga, gb, io, images)
    return [{"index": i, "layer": layer, "tensor": outp, **sums.row(outp),
             "adds": sums.rel_sq(outp) - sums.rel_sq(inp)}
            for i, (layer, (inp, outp)) in enumerate(io.items())]


def top_layers(rows: Iterable[dict], n: int = 5) -> list[dict]:
    """The ``n`` layers that add the most error."""
    return sorted(rows, key=lambda r: -r["adds"])[:n]
