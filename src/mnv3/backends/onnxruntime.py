"""ONNX Runtime engine: builds a standard ONNX file per quant mode and runs it.

The compiled file is plain ONNX (ORT's *basic* offline optimizations only: constant folding,
Conv+BatchNorm fusion, no engine-specific ops), so the same artifact serves other engines;
ORT applies its hardware-specific optimizations when the session is created. A second file
pre-optimized at ORT's extended level was measured (MobileNetV3-Large, batch 1): session load
37 -> 34 ms (fp32) and 65 -> 55 ms (int8), identical run time; not worth an ORT-version-bound
artifact, so none is written.

Modes: force_float32 (fp32 everywhere); force_float16 (fp16 weights/compute, float32 I/O);
qint8_mixed_float32 / qint8_mixed_float16 (QDQ int8 Conv/Gemm/MatMul, the rest fp32 / fp16).
``meta.op_precisions`` is read from the graph ORT actually executes, so it tells the truth
about fp16 ops that ORT's CPU provider runs in float32 between Casts.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from mnv3.backends import onnxruntime_quant as q
from mnv3.backends.onnxruntime_fp16 import QDQ_OPS, convert_fp16
from mnv3.onnx_source import run_batched, runs_any_batch, set_batch_dim
from mnv3.backends.base import Backend, BuildConfig, Capabilities, CompiledModel, Session
from mnv3.engine_errors import ort_errors
from mnv3.errors import BackendUnavailable, BuildError, ModelError
from mnv3.meta import ModelMeta
from mnv3.quant_mode import QuantMode

COMPILED_FILE = "model.onnx"
# The accuracy fallback scores int8 layers in this many groups of neighbours (one quantization
# pass each: about 4 s per group for EfficientNet-Lite0 on 2 cores).
FALLBACK_GROUPS = 8


def _groups(items: list, n: int) -> list[list]:
    """``items`` cut into at most ``n`` consecutive groups of near-equal size."""
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return [g for g in out if g]



def precision_notes(mode: QuantMode, precisions: dict[str, str], device: str = "CPU") -> list[str]:
    """Honest caveats read from what ORT actually runs (``op_precisions``), not assumed."""
    def runs(prec):  # op types that run only in ``prec``; mixed ones are listed apart
        return sorted(op for op, p in precisions.items() if p == prec)

    mixed = _mixed(precisions)
    notes = []
    if mode.float_type == "float16":
        half = runs("float16")
        notes.append(
            f"float16 on ONNX Runtime's {device} provider: weights are stored in float16, but "
            "ops without a float16 kernel run in float32 between Casts that ORT inserts "
            f"(float32: {', '.join(runs('float32')) or 'none'}; float16: "
            f"{', '.join(half) or 'none'}{mixed}). Expect about force_float32 speed on CPU "
            "(benchmarks/int8_speed.py measures it), not a speed-up; fp16 compute needs a GPU "
            "provider.")
    if mode.int8:
        notes.append(
            f"int8 kernels: {', '.join(runs('int8')) or 'none'}; still float: "
            f"{', '.join(o for o in runs('float32') + runs('float16')) or 'none'}{mixed} "
            "(between QuantizeLinear/DequantizeLinear). int8 speed on ORT CPU depends on how much "
            "stays float: compare with the force_float32 build (benchmarks/int8_speed.py).")
    return notes


def _mixed(precisions: dict[str, str]) -> str:
    """'; mixed: Transpose (float32:9, int8:9)': an op type in several precisions, named once
    (it was listed both as int8 and as float: issue 13)."""
    ops = [f"{op} ({p[len('mixed('):-1].replace(',', ', ')})"
           for op, p in sorted(precisions.items()) if p.startswith("mixed(")]
    return f"; mixed: {', '.join(ops)}" if ops else ""


_INT8_KERNELS = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
                 "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearGlobalAveragePool",
                 "QLinearConcat", "QLinearLeakyRelu", "QLinearAveragePool"}
_ELEM = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
         onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.DOUBLE: "float64",
         onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "int8"}


def op_precisions(model: onnx.ModelProto) -> dict[str, str]:
    """op type -> precision it runs in, read from the graph the engine actually executes.

    Pass the engine-optimized graph (ORT's ``optimized_model_filepath``): there the int8
    patterns appear as QLinearConv / QGemm, and fp16 ops without CPU kernels appear wrapped in
    Casts back to float32. An op type running in several precisions is reported as
    ``"mixed(float16:3,float32:1)"``.
    """
    model = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(model.graph.value_info) + list(model.graph.input)
             + list(model.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    seen: dict[str, Counter] = {}
    for n in model.graph.node:
        if n.op_type in _INT8_KERNELS:
            prec = "int8"
        elif n.op_type in QDQ_OPS or n.op_type == "Cast":
            prec = "conversion"
        else:
            prec = _ELEM.get(types.get(n.input[0]) if n.input else None, "float32")
        seen.setdefault(n.op_type, Counter())[prec] += 1
    out = {}
    for op, c in sorted(seen.items()):
        out[op] = next(iter(c)) if len(c) == 1 else \
            "mixed(" + ",".join(f"{p}:{k}" for p, k in sorted(c.items())) + ")"
    return out


def _session(path: Path | str, level, threads: int | None = None, optimized_out: Path | None = None,
             providers: list[str] | None = None, spin: bool | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    if spin is False:  # idle intra-op threads block instead of burning the cores decoding needs
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
    capabilities = Capabilities(
        modes=(QuantMode.FLOAT32, QuantMode.FLOAT16, QuantMode.INT8_FLOAT16,
               QuantMode.INT8_FLOAT32),  # no bfloat16 kernels on ORT's CPU provider
        calib_methods=("minmax", "entropy", "percentile"), fallback="layers",
        distribution="onnxruntime", install_hint='pip install "mnv3"')

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
            except ort_errors() as e:
                raise BuildError(f"ONNX Runtime cannot load {onnx_path}: {e}") from e
            extra: dict[str, Any] = {"offline_optimization": "ORT basic (standard ONNX ops)",
                                     "load_optimization": "ORT_ENABLE_ALL"}
            mode = cfg.quant_mode
            if mode.int8:
                model, extra["quantization"] = self._int8(fp32, work, cfg)
            else:
                model = onnx.load(str(fp32))
            if mode.float_type == "float16":
                model = convert_fp16(model, keep_fp32_nodes=q.quantized_node_names(model))
            onnx.save(model, str(out_dir / COMPILED_FILE))
            precisions = self._inspect(out_dir / COMPILED_FILE, work)
        notes = precision_notes(mode, precisions)
        return CompiledModel(COMPILED_FILE, op_precisions=precisions, notes=notes, extra=extra)

    def _int8(self, fp32: Path, work: Path, cfg: BuildConfig) -> tuple[onnx.ModelProto, dict]:
        quantizer = cfg.state.get("ort_quantizer")
        if quantizer is None:  # first round of this build: calibrate once, keep for fallbacks
            keep = Path(tempfile.mkdtemp(prefix=".ort-int8-", dir=work.parent))
            cfg.state["cleanup"] = [*cfg.state.get("cleanup", []), keep]
            dyn = keep / "dyn.onnx"  # calibrate with a symbolic batch whatever the target batch
            onnx.save(set_batch_dim(onnx.load(str(fp32)), "batch"), str(dyn))
            baked = not runs_any_batch(dyn, cfg.preprocess.crop)  # a Reshape to [1, C]...
            quantizer = cfg.state["ort_quantizer"] = q.Int8Quantizer(
                dyn, keep, cfg.calib_files, cfg.preprocess, method=cfg.calib_method,
                options=cfg.options, progress=cfg.options.get("progress", True),
                batch=cfg.batch_size if baked else None)
        out = quantizer.work / "int8.onnx"
        settings = quantizer.quantize(out, float_nodes=cfg.float_layers)
        if cfg.float_layers:
            settings["fallback_float_layers"] = list(cfg.float_layers)
        # the source's batch (onnx_source set it) again: calibration ran on a symbolic one
        return set_batch_dim(onnx.load(str(out)), "batch" if cfg.shape_mutable
                             else cfg.batch_size), settings

    def rank_layers(self, out_dir: Path, cfg: BuildConfig, images: np.ndarray) -> list[dict]:
        """int8 layers in groups of neighbours, the group whose return to float helps most first.

        Measured, not estimated: each group of consecutive int8 layers is kept float in turn
        (calibration and bias-correction statistics are reused, so a round is one
        quantization pass) and scored by the noise left on the largest logits against float32
        on ``images`` (``fidelity.top_logit_noise``: what the budget's expected agreement
        weighs; the mean logit cosine ranked before it). Why not rank single layers by the error they add (what mnv3 compare prints)? On
        EfficientNet-Lite0 with 7-bit weights (AVX2) that estimate picked the projection convs,
        whose return to float *lowered* cosine (0.9975 -> 0.9966 with 16 layers float, against
        0.9982 for the 16 it ranked last): bias correction and the quantized residual adds
        interact with single layers in ways a local error does not see.
        """
        from mnv3.fidelity import top_logit_noise

        quantizer = cfg.state.get("ort_quantizer")
        if quantizer is None:
            return []
        int8 = onnx.load(str(quantizer.work / "int8.onnx"))
        quantized = set(q.quantized_node_names(int8))
        layers = [n for n in quantizer.layers() if n in quantized]
        groups = _groups(layers, FALLBACK_GROUPS)
        reference = _session(quantizer.source, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        ref = run_batched(reference, images, quantizer.batch)
        probe = quantizer.work / "probe.onnx"
        scored = []
        for g, group in enumerate(groups):
            quantizer.quantize(probe, float_nodes=[*cfg.float_layers, *group])
            sess = _session(probe, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
            out = run_batched(sess, images, quantizer.batch).astype(np.float64)
            scored.append((float(top_logit_noise(ref.astype(np.float64), out).mean()), g))
        order = [g for _, g in sorted(scored)]
        return [{"layer": layer, "group": rank, "score": scored[g][0]}
                for rank, g in enumerate(order) for layer in groups[g]]

    def _inspect(self, compiled: Path, work: Path) -> dict[str, str]:
        """Load the result as ``open`` will and read the graph ORT executes."""
        optimized = work / "as_run.onnx"
        try:
            _session(compiled, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, 1, optimized)
        except ort_errors() as e:
            raise BuildError(f"ONNX Runtime cannot load the model it just built: {e}") from e
        return op_precisions(onnx.load(str(optimized)))

    # ------------------------------------------------------------------ load
    def open(self, model_dir: Path, meta: ModelMeta, threads: int | None = None,
             **options: Any) -> Session:
        """An ORT session: CPU provider (CUDA first when ``device="cuda"`` and available).

        ``spin=False``: idle intra-op threads sleep instead of spin-waiting. Engine-only speed
        is best with spinning (ORT's default); ``mnv3 infer`` decodes images on other threads
        between engine calls, and there spinning threads steal their CPU (measured: end-to-end
        53% of engine-only speed with spinning, 82% without; benchmarks/infer_speed.py).
        """
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
                            providers=providers, spin=options.get("spin"))
        except ort_errors() as e:
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
