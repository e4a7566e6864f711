"""Stage 1: export a network to ONNX and prove the graph computes what PyTorch computes.

``export_onnx(model, "model.onnx")`` writes a standard ONNX graph (opset >= 17, float32 NCHW input
``input``, output ``logits``, batch fixed or symbolic) with BatchNorm folded into the convolutions
and constants folded, then runs it in ONNX Runtime against PyTorch eager on random inputs and, when
given, real preprocessed images. The file appears only when every check passes (it is written to a
temporary file beside the target and renamed); otherwise ``ExportError`` names the worst check.

How the graph is made (measured with ``benchmarks/export_choice.py``, full-size networks, shared
2-vCPU machine under load):
- exporter ``"torchscript"`` (``torch.onnx.export(dynamo=False)``, the default): 0.5-1.1 s per
  network, honours opset 17, and folds eval-mode BatchNorm into Conv itself. ``"dynamo"``
  (torch.export-based) gives the same nodes in 8-12 s and only emits opset >= 18.
- then ``onnxscript.optimizer`` folds constants and drops Identity/Constant/Flatten leftovers
  (e.g. Large torchvision 147 -> 140 nodes) while keeping HardSwish/HardSigmoid as single standard
  ops. ORT's offline "basic" optimisation was rejected: it saves every HardSwish decomposed into
  HardSigmoid + Mul, which other engines and int8 quantization then pay for. ORT latency at batch 1
  did not separate the variants beyond run-to-run noise (e.g. Small seed 3.5-4.0 ms for all four).
- a symbolic batch is exported from a batch-2 example, never batch 1, which can silently
  specialise the "dynamic" batch to 1 (a known trap); verification then runs batches 1, 3 and 8.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from mnv3 import __version__
from mnv3.atomic import atomic_file
from mnv3.engine_errors import onnx_errors
from mnv3.errors import ExportError, UsageError
from mnv3.export_verify import (
    INPUT_NAME, OUTPUT_NAME, ParityCheck, images_for_verify, judge, verify_onnx)
from mnv3.meta import PreprocessCfg, sha256_file
from mnv3.models.checkpoints import LoadedModel
from mnv3.models.registry import count_params, preprocess_preset
from mnv3.provenance import exported_by_mnv3, stamp_onnx

MIN_OPSET = 17
DYNAMIC_VERIFY_BATCHES = (1, 3, 8)
EXPORTERS = ("torchscript", "dynamo")


@dataclass
class ExportReport:
    output: str
    arch: str | None
    layout: str | None
    width_mult: float | None
    num_classes: int
    num_params: int
    opset: int
    dynamic_batch: bool
    batch_size: int | None  # None when the batch is symbolic
    input_shape: list
    output_shape: list
    exporter: str
    optimizer: str
    export_seconds: float
    verify_seconds: float
    tolerance: float
    checks: list[ParityCheck] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)
    preprocess: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    onnx_sha256: str = ""
    untrained: bool = False  # random weights (create_model / --demo-weights): accuracy is noise
    replaced: bool = False  # an earlier mnv3 export was at the output path

    @property
    def max_rel_error(self) -> float:
        return max((c.max_rel_error for c in self.checks), default=float("nan"))

    def to_dict(self) -> dict:
        return asdict(self) | {"max_rel_error": self.max_rel_error}


def export_onnx(model, output, *, batch_size: int = 1, dynamic_batch: bool = False,
                image_size: int = 224, opset: int = MIN_OPSET, verify_images=None,
                preprocess: PreprocessCfg | None = None, tolerance: float = 1e-4,
                exporter: str = "torchscript", max_verify_images: int = 16,
                force: bool = False) -> ExportReport:
    """Export ``model`` (an nn.Module, TorchScript module or ``LoadedModel``) to ``output``.

    ``verify_images``: a folder or list of image files, preprocessed with ``preprocess`` (default:
    the model's own ``.preprocess``) and added to the random parity inputs.
    Raises ``ExportError`` (nothing written) when a check exceeds ``tolerance``. An existing
    ``output`` is replaced only when an earlier mnv3 export wrote it, or with ``force``.
    """
    module, info = _unwrap(model, preprocess)
    _check_args(batch_size, image_size, opset, tolerance, exporter)
    replaced = _check_output(Path(output), force)
    # Bad image folders fail before any work is done.
    images = images_for_verify(verify_images, info["preprocess"], image_size, max_verify_images)
    output = Path(output)
    written = contextlib.ExitStack()
    try:
        tmp = written.enter_context(atomic_file(output))
    except OSError as e:  # a file in the way, a read-only place: the user's to fix
        raise UsageError(f"cannot write {output} ({e.strerror or e}); "
                         "choose a writable --output") from None
    with written, _one_torch_thread():  # the file is in place once both have ended
        report = _export_and_verify(module, info, tmp, output, batch_size, dynamic_batch,
                                    image_size, opset, images, tolerance, exporter)
    report.replaced = replaced
    return report


def _export_and_verify(module, info, tmp, output, batch_size, dynamic_batch, image_size, opset,
                       images, tolerance, exporter) -> ExportReport:
    """Export to ``tmp``, check the graph, compare it with PyTorch; raise on a failed check."""
    t0 = time.perf_counter()
    example = torch.randn(2 if dynamic_batch else batch_size, 3, image_size, image_size,
                          generator=torch.Generator().manual_seed(0))
    _export(module, example, tmp, opset, dynamic_batch, exporter)
    optimizer = _optimize(tmp)
    stamp_onnx(tmp, version=__version__, random_seed=info.get("random_seed"),
               untrained=info.get("untrained", False))
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batches = DYNAMIC_VERIFY_BATCHES if dynamic_batch else (batch_size,)
    checks = verify_onnx(module, tmp, batches, image_size, images)
    verify_s = time.perf_counter() - t0
    report = _report(tmp, output, info, module, opset, dynamic_batch, batch_size, exporter,
                     optimizer, export_s, verify_s, tolerance, checks)
    judge(checks, tolerance)
    return report


# ------------------------------------------------------------------------------------- pieces
@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def _one_torch_thread():
    """Export and verification batches are small; on a shared 2-vCPU machine torch's OpenMP
    threads spin-wait on each other (measured: 13.5 s wall / 5.2 s CPU with 2 threads vs 1.6 s /
    0.6 s with 1 for the same export), so run them on one thread and restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _unwrap(model, preprocess) -> tuple[nn.Module, dict]:
    if isinstance(model, LoadedModel):
        module, src = model.module, model.to_dict()
        info = {k: src[k] for k in ("arch", "layout", "width_mult")} | {"source": src}
        pre = preprocess or model.preprocess
    elif isinstance(model, nn.Module):
        module, info = model, {k: getattr(model, k, None) for k in ("arch", "layout", "width_mult",
                                                                    "random_seed")}
        info["untrained"] = bool(getattr(model, "untrained", False))
        info["source"] = {"random_seed": info["random_seed"]} if info["untrained"] else {}
        pre = preprocess or getattr(model, "preprocess", None) or preprocess_preset()
    else:
        raise UsageError(f"export_onnx needs an nn.Module or LoadedModel, got {type(model).__name__}")
    module.eval()  # dropout off, BatchNorm on running statistics: the graph is for inference
    return module, info | {"preprocess": pre}


def _check_output(output: Path, force: bool) -> bool:
    """True when ``output`` holds an earlier mnv3 export (replaced, as a rebuild replaces a
    model); anything else there is the user's and needs ``force`` (issue 13)."""
    if output.is_dir():
        raise UsageError(f"--output {output} is a folder; give the path of the .onnx file to write")
    if not output.exists():
        return False
    if force or exported_by_mnv3(output):
        return True
    raise UsageError(f"--output {output} exists and is not an ONNX file exported by mnv3; pass "
                     "--force to replace it, or choose another --output")


def _check_args(batch_size, image_size, opset, tolerance, exporter) -> None:
    if int(batch_size) < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    if int(image_size) < 32:
        raise UsageError(f"image size must be >= 32 pixels, got {image_size}")
    if int(opset) < MIN_OPSET:
        raise UsageError(f"opset must be >= {MIN_OPSET} (HardSwish and modern Reduce ops), got {opset}")
    if not tolerance > 0:
        raise UsageError(f"tolerance must be > 0, got {tolerance}")
    if exporter not in EXPORTERS:
        raise UsageError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")


def _export(module, example, path: Path, opset: int, dynamic: bool, exporter: str) -> None:
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is deprecated, works
            warnings.filterwarnings("ignore", message="no signature found")  # TorchScript sources
            if exporter == "torchscript":
                axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None
                torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                                  dynamic_axes=axes, do_constant_folding=True, **names)
            else:
                warnings.simplefilter("ignore", FutureWarning)
                shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
                with _quiet_logger("torch.onnx"):  # "torchvision is not installed. Skipping ..."
                    prog = torch.onnx.export(
                        module, (example,), dynamo=True, opset_version=max(opset, 18),
                        dynamic_shapes=shapes, optimize=True, verbose=False, **names)
                prog.save(str(path), external_data=False)
    # torch.onnx's errors (UnsupportedOperatorError, TorchExportError ...) and torch's own all
    # derive from RuntimeError; OSError: writing the file. Keep the cause chained.
    except (RuntimeError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"torch.onnx.export ({exporter}) failed: {first}; try "
                          f"exporter={'dynamo' if exporter == 'torchscript' else 'torchscript'}") from e


def _optimize(path: Path) -> str:
    """Fold constants, drop Identity/Constant nodes; keep every op standard ONNX. Then check."""
    import onnx
    import onnxscript.optimizer

    proto = onnxscript.optimizer.optimize(onnx.load(str(path)), num_iterations=1)
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx_errors() as e:  # ValidationError / InferenceError
        raise ExportError(f"the exported graph fails onnx.checker: {str(e).splitlines()[0]}") from e
    return f"onnxscript.optimizer {onnxscript.__version__}"


def _report(tmp, output, info, module, opset, dynamic, batch_size, exporter, optimizer,
            export_s, verify_s, tolerance, checks) -> ExportReport:
    import onnx

    proto = onnx.load(str(tmp))
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    out_shape = dims(proto.graph.output[0])
    return ExportReport(
        output=str(output), arch=info.get("arch"), layout=info.get("layout"),
        width_mult=info.get("width_mult"), num_classes=int(out_shape[-1]),
        num_params=count_params(module), opset=next(o.version for o in proto.opset_import
                                                     if o.domain in ("", "ai.onnx")),
        dynamic_batch=dynamic, batch_size=None if dynamic else int(batch_size),
        input_shape=dims(proto.graph.input[0]), output_shape=out_shape, exporter=exporter,
        optimizer=optimizer, export_seconds=round(export_s, 3), verify_seconds=round(verify_s, 3),
        tolerance=tolerance, checks=checks,
        op_counts=dict(Counter(n.op_type for n in proto.graph.node)),
        preprocess=info["preprocess"].to_dict(), source=info["source"],
        onnx_sha256=sha256_file(tmp), untrained=info.get("untrained", False))
