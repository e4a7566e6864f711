"""OpenVINO engine: builds OpenVINO IR (``model.xml`` + ``model.bin``) and runs it on the CPU.

Modes and what actually runs (``meta.op_precisions`` is read back from the compiled model, so it
reports the precision each layer type really executes in on the build machine):

* ``force_float32``: fp32 weights; ``INFERENCE_PRECISION_HINT=f32`` is set explicitly, because
  on a CPU with bf16 (AVX512-BF16 / AMX) OpenVINO otherwise silently runs "fp32" models in bf16.
* ``force_float16``: fp16-compressed weights (half the file). Compute is f16 where the CPU has
  fp16 arithmetic (``FP16`` in OPTIMIZATION_CAPABILITIES); elsewhere the weights are expanded to
  f32 at load and everything runs in f32 (said in meta.json's notes).
* ``force_bfloat16`` (OpenVINO only): fp32 weights, ``INFERENCE_PRECISION_HINT=bf16``. Refused
  with BackendUnavailable on CPUs without bf16, at build and at load.
* ``qint8_mixed_float32`` / ``qint8_mixed_float16``: NNCF post-training int8 (FakeQuantize on
  convolutions / matmuls), fed by the same calibration files and ``preprocess_image`` as the ONNX
  Runtime backend (see ``mnv3.backends.openvino_quant``); the other ops run in f32, or in the
  CPU's 16-bit float (f16, else bf16, else f32) respectively; with ``max_drop`` (accuracy
  control) they run in f32, the precision NNCF validated the budget in.

Load (``openvino_session``) compiles with a model cache (``<model_dir>/.ov_cache``), the
latency hint for batch 1 and the throughput hint otherwise, one stream per concurrent caller (``streams``, default 1), and
keeps a pool of infer requests so ``Session.run`` is safe to call from several threads at once
(``mnv3 bench --streams S`` loads with ``streams=S``).
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

try:
    import openvino as ov
except ImportError as _e:  # capabilities stay readable; get_backend() says how to install it
    ov, _MISSING = None, str(_e)
else:
    _MISSING = None

from mnv3.backends.base import Backend, BuildConfig, Capabilities, CompiledModel, Session
from mnv3.engine_errors import openvino_errors
from mnv3.errors import BackendUnavailable, BuildError, ModelError
from mnv3.meta import ModelMeta, sha256_file
from mnv3.quant_mode import QuantMode

XML_FILE, BIN_FILE = "model.xml", "model.bin"

NOTE_F16_AS_F32 = ("this CPU has no fp16 arithmetic: the model keeps fp16 weights but runs with "
                   "INFERENCE_PRECISION_HINT=f32 (op_precisions shows each layer type's precision)")
NOTE_F16_AS_BF16 = ("this CPU has no fp16 arithmetic: the non-int8 ops run in bf16, its 16-bit "
                    "float (use qint8_mixed_float32 to keep them in f32)")

NOTE_MAX_DROP_F32 = ("--max-drop: the non-int8 ops run in f32, the precision NNCF's accuracy "
                     "control validated, so the top-1 budget holds (bf16 would add its own error)")


@lru_cache(maxsize=1)
def cpu_capabilities() -> frozenset[str]:
    """OpenVINO's CPU OPTIMIZATION_CAPABILITIES, e.g. {'FP32', 'BF16', 'INT8'} (the probe)."""
    return frozenset(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def inference_precision(mode: QuantMode, caps: frozenset[str] | None = None) -> str:
    """The INFERENCE_PRECISION_HINT a mode runs with on a CPU with capabilities ``caps``."""
    caps = cpu_capabilities() if caps is None else caps
    if mode.float_type == "bfloat16":
        if "BF16" not in caps:
            raise BackendUnavailable(
                f"{mode} needs a CPU with bfloat16 support (AVX512-BF16 or AMX); this one "
                f"offers {', '.join(sorted(caps))}. Use force_float32 or force_float16 instead"
            )
        return "bf16"
    if mode.float_type == "float16" and "FP16" in caps:
        return "f16"
    if mode.float_type == "float16" and mode.int8 and "BF16" in caps:
        return "bf16"
    return "f32"


class OpenVinoBackend(Backend):
    name = "openvino"
    capabilities = Capabilities(
        modes=tuple(QuantMode),
        # not percentile: NNCF's quantile estimators measured -20 points top-1 on Lite0
        calib_methods=("minmax", "entropy"),
        fallback="accuracy_control",  # NNCF's quantize_with_accuracy_control (--max-drop)
        distribution="openvino", install_hint='pip install "mnv3[openvino]"', cpp=True,
        split_batch=True)

    @classmethod
    def missing(cls) -> str | None:
        return _MISSING

    def runs_here(self, mode: QuantMode) -> bool:
        return mode.float_type != "bfloat16" or "BF16" in cpu_capabilities()

    def version(self) -> str:
        return ov.get_version()

    # ------------------------------------------------------------------ build
    def build_compiled(self, onnx_path: Path, out_dir: Path, cfg: BuildConfig) -> CompiledModel:
        """Convert ``onnx_path`` to IR in ``out_dir`` for ``cfg.quant_mode``; report what runs how."""
        mode = cfg.quant_mode
        precision = inference_precision(mode)  # refuses bf16 here, before any work
        model = _convert(onnx_path)
        extra: dict[str, Any] = {"inference_precision": precision}
        notes: list[str] = []
        if mode.int8:
            from mnv3.backends.openvino_quant import quantize  # NNCF is imported only for int8

            _set_batch(model, 1)  # calibrate image by image, whatever the target batch
            model, extra["quantization"] = quantize(model, cfg)
            _set_batch(model, -1 if cfg.shape_mutable else cfg.batch_size)  # the source's again
        if mode.int8 and precision != "f32" and "max_drop" in cfg.options:
            # NNCF checks the --max-drop budget with float layers in f32; bf16/f16 would add error
            # the budget never saw (measured on Lite0: -0.5 point instead of 0.0).
            precision = extra["inference_precision"] = "f32"
            notes.append(NOTE_MAX_DROP_F32)
        elif mode.float_type == "float16":
            notes.append({"f32": NOTE_F16_AS_F32, "bf16": NOTE_F16_AS_BF16}.get(precision, ""))
        try:
            ov.save_model(model, str(out_dir / XML_FILE),
                          compress_to_fp16=mode.float_type == "float16")
        except openvino_errors() as e:
            raise BuildError(f"OpenVINO could not write the IR to {out_dir}: {e}") from e
        extra["bin_file"] = BIN_FILE
        extra["bin_sha256"] = sha256_file(out_dir / BIN_FILE)
        runtime = ov.Core().compile_model(str(out_dir / XML_FILE), "CPU",
                                          {"INFERENCE_PRECISION_HINT": precision})
        if mode.int8:
            extra["float_layers"] = float_layers(runtime)
        return CompiledModel(XML_FILE, op_precisions=op_precisions(runtime),
                             notes=[n for n in notes if n], extra=extra)

    # ------------------------------------------------------------------ load
    def open(self, model_dir: Path, meta: ModelMeta, threads: int | None = None,
             streams: int | None = None, hint: str | None = None, **options: Any) -> Session:
        """Compile the IR for this CPU.

        threads: threads per stream (as ONNX Runtime's per-session threads); None = OpenVINO's
        choice. streams: concurrent infer streams, one per calling thread (``mnv3 bench
        --streams S``); None = 1. hint: "latency" / "throughput"; None = latency for batch 1,
        throughput otherwise.
        options: ``cache_dir`` (a folder, or "" to disable the model cache); ``split`` (S > 1,
        checked by ``mnv3.load``): each call's batch runs as S sub-batches at once, one infer
        request per stream, S streams of ``threads`` (default 1) threads; a fixed-batch model
        is compiled at batch / S for it.
        """
        from mnv3.backends.openvino_session import OpenVinoSession, cache_dir, compile_config

        model_dir = Path(model_dir)
        _check_bin(model_dir, meta)
        precision = meta.extra.get("inference_precision") or inference_precision(meta.quant_mode)
        caps = cpu_capabilities()
        if meta.quant_mode.float_type == "bfloat16":
            inference_precision(meta.quant_mode, caps)  # refuses on a CPU without bf16
        elif {"bf16": "BF16", "f16": "FP16"}.get(precision, "FP32") not in caps:
            # built where a 16-bit float ran the non-int8 ops; this CPU lacks it
            precision = inference_precision(meta.quant_mode, caps)
        core = ov.Core()
        cache = cache_dir(model_dir, options.get("cache_dir"))
        if cache:
            core.set_property({"CACHE_DIR": cache})
        split = int(options.get("split") or 1)
        if split > 1:  # S streams of 1 thread unless told (benchmarks/split_batch.py)
            streams, threads = split, threads or 1
        config = compile_config(meta, precision, threads, streams, hint)
        xml = model_dir / meta.compiled_file
        try:
            compiled = core.compile_model(_at_part_batch(core, xml, meta, split), "CPU", config)
        except openvino_errors() as e:
            raise ModelError(f"OpenVINO cannot compile {xml}: {e}; "
                             "rebuild the model with 'mnv3 build --backend openvino'") from e
        return OpenVinoSession(meta, compiled, threads, streams, cache, split=split)


# ---------------------------------------------------------------------- helpers
def _convert(onnx_path: Path) -> ov.Model:
    try:
        return ov.convert_model(str(onnx_path))
    except openvino_errors() as e:
        raise BuildError(f"OpenVINO cannot convert {onnx_path}: {e}; is it a valid ONNX "
                         "classifier with one NCHW float input?") from e


def _at_part_batch(core, xml: Path, meta: ModelMeta, split: int):
    """The IR to compile: its path, or, to split a fixed batch, the model at batch / split."""
    if split == 1 or meta.shape_mutable:
        return str(xml)
    model = core.read_model(str(xml))
    _set_batch(model, int(meta.batch_size) // split)
    return model


def _set_batch(model: ov.Model, batch: int) -> None:
    """Fix (or free, with -1) the batch dimension; H, W and channels stay as exported."""
    if len(model.inputs) != 1:
        raise BuildError(f"expected a classifier with one input, got {len(model.inputs)} inputs")
    shape = model.input(0).get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4:
        raise BuildError(f"expected an NCHW input of rank 4, got {shape}")
    dims = [ov.Dimension(batch)] + [shape[i] for i in range(1, 4)]
    try:
        model.reshape({model.input(0): ov.PartialShape(dims)})
    except openvino_errors() as e:
        raise BuildError(f"cannot reshape the model to batch {batch}: {e}") from e


def _check_bin(model_dir: Path, meta: ModelMeta) -> None:
    """``mnv3.load`` checked model.xml; the weights live in model.bin, so check it too."""
    name, expected = meta.extra.get("bin_file", BIN_FILE), meta.extra.get("bin_sha256")
    path = model_dir / name
    if not path.is_file():
        raise ModelError(f"{model_dir} lacks its weights file {name}; rebuild the model")
    if not expected or sha256_file(path) != expected:
        raise ModelError(f"{path} does not match the sha256 recorded in meta.json: the weights "
                         "are corrupt or were replaced; rebuild the model with 'mnv3 build'")


_SKIP = {"Input", "Output", "Parameter", "Result", "Const", "Reorder", "Reshape", "Convert"}


def op_precisions(compiled) -> dict[str, str]:
    """Layer type -> precision it runs in, from the executed graph, e.g. {'Convolution': 'int8'}.

    Mixed types read like 'int8 (52), f32 (2)'.
    """
    seen: dict[str, Counter] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str)
        if layer in _SKIP:
            continue
        prec = info["runtimePrecision"].astype(str)
        prec = "int8" if prec in ("u8", "i8") else prec
        seen.setdefault(layer, Counter())[prec] += 1
    return {layer: next(iter(c)) if len(c) == 1 else
            ", ".join(f"{p} ({n})" for p, n in c.most_common()) for layer, c in sorted(seen.items())}


def float_layers(compiled) -> list[str]:
    """Convolutions / matmuls that run in float (what int8 left, or accuracy control restored)."""
    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("Convolution", "FullyConnected", "MatMul") \
                and info["runtimePrecision"].astype(str) not in ("u8", "i8"):
            out.append(op.get_friendly_name())
    return out
