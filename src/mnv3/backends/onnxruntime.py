"""ONNX Runtime engine: builds a standard ONNX file per quant mode and runs it.

The compiled file is plain ONNX (ORT's *basic* offline optimizations only: constant folding,
Conv+BatchNorm fusion, no engine-specific ops), so the same artifact serves other engines;
ORT applies its hardware-specific optimizations when the session is created.

Modes: force_float32 (fp32 everywhere); force_float16 (fp16 weights/compute, float32 I/O);
qint8_mixed_float32 / qint8_mixed_float16 (QDQ int8 Conv/Gemm/MatMul, the rest fp32 / fp16).
``meta.op_precisions`` is read from the graph ORT actually executes, so it tells the truth
about fp16 ops that ORT's CPU provider runs in float32 between Casts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from mnv3 import quantize as q
from mnv3.backends.base import Backend, BuildConfig, CompiledModel, Session
from mnv3.errors import BackendUnavailable, BuildError, ModelError
from mnv3.meta import ModelMeta

COMPILED_FILE = "model.onnx"

NOTE_FP16_CPU = (
    "ONNX Runtime's CPU provider has few float16 kernels: ops without one run in float32 "
    "between inserted Casts (see op_precisions), so float16 on CPU is typically several times "
    "slower than force_float32; it is meant for GPUs (CUDA/TensorRT providers)."
)
NOTE_INT8_CPU = (
    "int8 speed on ORT CPU depends on how many ops stay float between QuantizeLinear/"
    "DequantizeLinear pairs (HardSwish/HardSigmoid/Mul in MobileNetV3): measure with "
    "'mnv3 bench' against the force_float32 build (benchmarks/int8_speed.py)."
)


def _session(path: Path | str, level, threads: int | None = None, optimized_out: Path | None = None,
             providers: list[str] | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = int(threads or 0)  # 0 = ORT's choice (physical cores)
    so.inter_op_num_threads = 1  # one model, one stream: parallelism lives inside ops
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if optimized_out is not None:
        so.optimized_model_filepath = str(optimized_out)
    return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    install_hint = 'pip install "mnv3"'

    def version(self) -> str:
        return ort.__version__

    # ------------------------------------------------------------------ build
    def build_compiled(self, onnx_path: Path, out_dir: Path, cfg: BuildConfig) -> CompiledModel:
        """Write ``model.onnx`` for ``cfg.quant_mode`` into ``out_dir``; report what runs how."""
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".work-") as work:
            work = Path(work)
            fp32 = work / "fp32.onnx"
            try:  # basic level = standard ONNX ops only, so the file stays portable
                _session(onnx_path, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, 1, fp32)
            except Exception as e:
                raise BuildError(f"ONNX Runtime cannot load {onnx_path}: {e}") from e
            extra: dict[str, Any] = {"offline_optimization": "ORT basic (standard ONNX ops)",
                                     "load_optimization": "ORT_ENABLE_ALL"}
            notes: list[str] = []
            mode = cfg.quant_mode
            if mode == "force_float32":
                model = onnx.load(str(fp32))
            elif mode == "force_float16":
                model = q.convert_fp16(onnx.load(str(fp32)))
                notes.append(NOTE_FP16_CPU)
            elif mode in ("qint8_mixed_float32", "qint8_mixed_float16"):
                model, extra["quantization"] = self._int8(fp32, work, cfg)
                notes.append(NOTE_INT8_CPU)
                if mode == "qint8_mixed_float16":
                    model = q.convert_fp16(model, keep_fp32_nodes=q.quantized_node_names(model))
                    notes.append(NOTE_FP16_CPU)
            else:
                raise BuildError(f"the onnxruntime backend cannot build quant mode {mode!r}")
            model = q.set_batch_dim(model, "batch" if cfg.shape_mutable else cfg.batch_size)
            onnx.save(model, str(out_dir / COMPILED_FILE))
            precisions = self._inspect(out_dir / COMPILED_FILE, work)
        return CompiledModel(COMPILED_FILE, op_precisions=precisions, notes=notes, extra=extra)

    def _int8(self, fp32: Path, work: Path, cfg: BuildConfig) -> tuple[onnx.ModelProto, dict]:
        if not cfg.calib_files:
            raise BuildError("int8 quantization needs calibration images; pass --calib-dir DIR")
        dyn = work / "dyn.onnx"  # calibrate with a symbolic batch whatever the target batch
        onnx.save(q.set_batch_dim(onnx.load(str(fp32)), "batch"), str(dyn))
        out = work / "int8.onnx"
        settings = q.quantize_int8(dyn, out, cfg.calib_files, cfg.preprocess,
                                   method=cfg.calib_method, options=cfg.options,
                                   progress=cfg.options.get("progress", True))
        return onnx.load(str(out)), settings

    def _inspect(self, compiled: Path, work: Path) -> dict[str, str]:
        """Load the result as ``open`` will and read the graph ORT executes."""
        optimized = work / "as_run.onnx"
        try:
            _session(compiled, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, 1, optimized)
        except Exception as e:
            raise BuildError(f"ONNX Runtime cannot load the model it just built: {e}") from e
        return q.op_precisions(onnx.load(str(optimized)))

    # ------------------------------------------------------------------ load
    def open(self, model_dir: Path, meta: ModelMeta, threads: int | None = None,
             **options: Any) -> Session:
        """An ORT session: CPU provider (CUDA first when ``device="cuda"`` and available)."""
        providers = ["CPUExecutionProvider"]
        if options.get("device") == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    "CUDAExecutionProvider is not available; install onnxruntime-gpu "
                    "or run on the CPU (drop device='cuda')"
                )
            providers.insert(0, "CUDAExecutionProvider")
        path = Path(model_dir) / meta.compiled_file
        try:
            sess = _session(path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, threads,
                            providers=providers)
        except Exception as e:
            raise ModelError(f"ONNX Runtime cannot load {path}: {e}; rebuild the model") from e
        return OrtSession(meta, sess, threads)


class OrtSession(Session):
    """One ORT InferenceSession; names are bound once so a call is a single ``run``."""

    def __init__(self, meta: ModelMeta, sess: ort.InferenceSession, threads: int | None):
        super().__init__(meta)
        self.session = sess
        self.threads = threads
        self._inputs = sess.get_inputs()[0].name
        self._outputs = [sess.get_outputs()[0].name]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(self._outputs, {self._inputs: batch})[0]

    def close(self) -> None:
        self.session = None
