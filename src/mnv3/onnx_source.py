"""Check a source ONNX classifier and give it the batch dimension the build asks for.

``mnv3 build --onnx`` accepts any ImageNet-style classifier exported elsewhere, so nothing is
assumed: one float32 NCHW input with 3 channels and a square image matching the crop, one
[N, classes] output. The batch may be fixed or symbolic in the source; graphs that bake their
export batch into constants (a Reshape to [1, -1]) are detected by running them, and refused
with what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from mnv3.engine_errors import onnx_errors, ort_errors
from mnv3.errors import BuildError, UsageError
from mnv3.meta import PreprocessCfg


@dataclass
class PreparedSource:
    path: Path  # the source with the target batch dim (what the backend compiles)
    reference_path: Path  # the same float32 graph, used as the fidelity reference
    input_name: str
    output_name: str
    image_size: int
    num_classes: int
    source_batch: int | str

    def cleanup(self) -> None:
        self.path.unlink(missing_ok=True)


def load_onnx(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except onnx_errors() as e:
        raise BuildError(_not_onnx(path, e)) from e
    return model


def _not_onnx(path: Path, error: Exception) -> str:
    from mnv3.models.checkpoints import looks_like_checkpoint

    if looks_like_checkpoint(path):  # a .pth given to --onnx: say which flag takes it
        return (f"{path} is not an ONNX model: it looks like a PyTorch checkpoint (torch.save "
                f"zip or pickle); pass it with --weights {path} instead of --onnx (it is "
                "exported on the way)")
    return (f"{path} is not a valid ONNX model ({error}); export it again "
            "('mnv3 export' or torch.onnx.export)")


def prepare_source(onnx_path: Path, out_path: Path, mutable: bool, batch: int,
                   preprocess: PreprocessCfg) -> PreparedSource:
    """Validate ``onnx_path`` and write it with the target batch dim to ``out_path``."""
    model = load_onnx(onnx_path)
    inp, out = graph_io(model)
    size = _check_input(onnx_path, inp, preprocess)
    src_batch = dims_of(inp)[0]
    for d in inp.type.tensor_type.shape.dim[1:]:  # symbolic C/H/W become 3 and the crop size
        if not d.HasField("dim_value"):
            d.Clear()
            d.dim_value = 3 if d is inp.type.tensor_type.shape.dim[1] else size
    model = set_batch_dim(model, "batch" if mutable else batch)
    onnx.save(model, str(out_path))
    num_classes = _check_runs(out_path, inp.name, size, [None, 2] if mutable else [batch],
                              src_batch, batch)
    return PreparedSource(out_path, out_path, inp.name, out.name, size, num_classes, src_batch)


def _check_input(path: Path, inp: onnx.ValueInfoProto, cfg: PreprocessCfg) -> int:
    dims = dims_of(inp)
    bad_channels = len(dims) == 4 and isinstance(dims[1], int) and dims[1] != 3
    if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4 or bad_channels:
        raise BuildError(f"{path} input {inp.name!r} is {dims} of ONNX type "
                         f"{inp.type.tensor_type.elem_type}; expected float32 [N, 3, H, W] (NCHW)")
    h, w = dims[2], dims[3]
    if isinstance(h, int) and isinstance(w, int):
        if h != w:
            raise BuildError(f"{path} takes {h}x{w} images; only square inputs are supported")
        if h != cfg.crop:
            raise UsageError(f"{path} takes {h}x{h} images but preprocessing crops {cfg.crop}; "
                             f"pass --crop {h} (and a matching --resize, e.g. {round(h / 0.875)})")
        return h
    return cfg.crop


def _check_runs(path: Path, input_name: str, size: int, batches, src_batch, batch: int) -> int:
    """Run the re-batched graph once per batch size; returns the class count."""
    try:  # a load failure (unknown or custom op) is not a batch problem: say so apart
        sess = cpu_session(path)
    except ort_errors() as e:
        raise BuildError(f"ONNX Runtime cannot load the model ({e}); use standard ONNX ops "
                         "(export with 'mnv3 export' or torch.onnx.export)") from e
    try:
        num_classes = None
        for n in batches:
            n = n or 1
            y = sess.run(None, {input_name: np.zeros((n, 3, size, size), np.float32)})[0]
            if y.ndim != 2 or y.shape[0] != n:
                raise ValueError(f"batch {n} gave output shape {list(y.shape)}, not [{n}, classes]")
            num_classes = int(y.shape[1])
    except (*ort_errors(), ValueError) as e:  # ValueError: the shape check above, ORT's feed check
        hint = (f"re-export it with a dynamic batch ('mnv3 export --dynamic-batch') or build with "
                f"--shape-mutable false --batch-size {src_batch}") if isinstance(src_batch, int) \
            else "check that it is an image classifier returning [N, classes] logits"
        raise BuildError(f"{path} cannot run with the requested batch "
                         f"({'mutable' if len(batches) > 1 else batch}): {e}. The graph seems to "
                         f"bake in its export batch size; {hint}") from e
    return num_classes


# ----------------------------------------------------------------------------- graph edits
def set_batch_dim(model: onnx.ModelProto, batch: int | str) -> onnx.ModelProto:
    """Set the first dim of every graph input/output to ``batch`` (int = fixed, str = symbolic).

    Intermediate shapes recorded by the exporter may still hold the old batch, so value_info
    is cleared and shapes are inferred again. Graphs that bake the batch into constants (a
    Reshape to [1, -1]) are caught by the caller, which runs the result.
    """
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if not dims:
            continue
        dims[0].Clear()
        if isinstance(batch, str):
            dims[0].dim_param = batch
        else:
            dims[0].dim_value = int(batch)
    del model.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(model)
    except onnx_errors():  # shape inference is an optimisation aid, not a requirement
        return model


def graph_io(model: onnx.ModelProto) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    """The single real input (not an initializer) and the first output."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or not model.graph.output:
        raise BuildError(
            f"expected an image classifier with one input and one output, got inputs "
            f"{[i.name for i in inputs]} and {len(model.graph.output)} outputs"
        )
    return inputs[0], model.graph.output[0]


def tensor_readers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """tensor name -> the nodes that take it as an input, in graph order."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return readers


def dims_of(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in vi.type.tensor_type.shape.dim]


def cpu_session(model: str | os.PathLike | onnx.ModelProto, threads: int | None = 1, *,
                optimize: bool = True):
    """An ONNX Runtime CPU session for mnv3's own checks and references: export verification,
    the source check above, build fidelity, calibration statistics, the plain-ORT baseline.
    (A deployed model runs in ``mnv3.backends.onnxruntime``'s Session, tuned apart.)

    ``model``: a file or a ModelProto. ``threads``: intra-op threads, 1 by default (small
    batches on a shared machine), None for ONNX Runtime's own choice (its physical cores).
    ``optimize=False`` turns graph fusions off, so intermediate tensors asked for as outputs
    survive. Warnings are off: mnv3 reports what matters as its own errors.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = int(threads)
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def run_batched(sess, x: np.ndarray, batch: int | None = None) -> np.ndarray:
    """First output of ORT session ``sess`` on ``x``, in chunks of ``batch`` (default: the
    session's fixed input batch, else all at once), the last chunk padded with copies of its
    last image: the split-and-pad of ``Session.predict`` for mnv3's reference sessions."""
    name, fixed = sess.get_inputs()[0].name, sess.get_inputs()[0].shape[0]
    b = batch or (fixed if isinstance(fixed, int) else len(x))
    if b == len(x):
        return sess.run(None, {name: x})[0]
    out = []
    for i in range(0, len(x), b):
        chunk = x[i:i + b]
        pad = np.repeat(chunk[-1:], b - len(chunk), axis=0)
        out.append(sess.run(None, {name: np.concatenate([chunk, pad])})[0][:len(chunk)])
    return np.concatenate(out)


def runs_any_batch(path: Path, size: int) -> bool:
    """Whether the graph at ``path`` (symbolic batch) runs batches 1 and 2. False: it bakes
    its export batch into its constants (a Reshape to [1, C]), so its users must feed
    exactly the batch it was checked with."""
    sess = cpu_session(path)
    name = sess.get_inputs()[0].name
    try:
        return all(sess.run(None, {name: np.zeros((n, 3, size, size), np.float32)})[0].shape[0]
                   == n for n in (1, 2))
    except ort_errors():
        return False
