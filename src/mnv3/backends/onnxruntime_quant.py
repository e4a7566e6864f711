"""ONNX Runtime's int8: QDQ quantization with ORT's ``quantize_static``, fed by the calibration
reader of ``mnv3.backends.onnxruntime_calib`` (the one inference preprocessing), and bias
correction. fp16 conversion: ``mnv3.backends.onnxruntime_fp16``.

The int8 recipe and why (issue 3, "MobileNetV3's int8 traps"). Figures: top-1 agreement with
force_float32 / mean logit cosine on EfficientNet-Lite0's real weights, 400 held-out images
(``python benchmarks/fidelity_lite0.py --variants``); the default gets 99.0% / 0.9988, and each
line says what removing that one choice gives:
- weights int8, symmetric, **per channel**: per-tensor scales collapse depthwise convolutions,
  whose channels differ in range by orders of magnitude (per-tensor: 97.25% / 0.989);
- activations uint8 with calibrated (minmax) ranges: U8S8 is ORT's fast x86 path;
- on x86 CPUs without VNNI, where U8S8 can saturate, **pair-safe 8-bit weight scales**
  (``pair_safe_scales``) instead of ORT's ``reduce_range`` (7-bit weights): per output channel
  the scale keeps every pair of weights the kernel multiplies together within what int16
  holds. On AVX2 (Zen 3), no fallback, 400 held-out images (``--variants``): 7-bit 98.25% /
  0.99764; plain 8-bit (saturating) 98.25% / 0.99375; uint8 weights (exact, U8U8) 98.0% /
  0.99867 but slow (``int8_speed.py``: 0.81x float32 on MobileNetV3-Large); pair-safe 98.0% /
  0.99857 and 0.00 point top-1 change, 1.55-1.58x float32 (the build's speed check, batch 8).
  On VNNI CPUs weights are plain 8-bit;
- Conv / Gemm / MatMul are quantized with explicit QuantizeLinear/DequantizeLinear (the same
  file serves TensorRT-style engines), and ReLU/ReLU6 with them, so ORT fuses them and the
  conv output's scale spans [0, 6] instead of the wide pre-activation range (conv-only:
  96.25% / 0.983). Everything else (HardSwish, HardSigmoid, the SE multiply, pooling) stays
  float, so hardsigmoid's [0, 1] output is never squeezed by a calibrated scale;
- bias correction (``onnxruntime_calib.bias_correct``): int8 weights shift each channel's mean
  output; folding the expected shift into the bias matters for small depthwise nets
  (without: 98.5% / 0.9968);
- the first three and the last two convolutions / matrix products stay float (~5% of the MACs,
  no measured speed cost; all int8: 98.5% / 0.9978 and 0.5 point lost; see FLOAT_FIRST).
Cross-layer equalization is not applied: ReLU6 and hardswish are not positively homogeneous,
so rescaling across them changes the function, and per-channel weights already remove the
weights' inter-channel range problem. For activations it would not pay either: on Lite0 (AVX2,
400 held-out images, float weights; ``benchmarks/int8_floor_lite0.py``) the activations'
channels are balanced (widest / median channel range: median 1.31), and per-channel activation
ranges, the most equalization can give, expected 12.4 flipped images against 4.5 per tensor
(unseen images overshoot a channel's calibrated maximum far more than a tensor's).
percentile / entropy calibration measured no better in agreement (98.25% / 0.9990, 98.75% /
0.9989; within a few images) and calibrate slower, so minmax stays the default; they are
options (``--calib-method``). On AVX2 with pair-safe scales (400 images, no fallback): minmax
98.0% / 0.99857 (expected agreement on the build's 200: 98.73%), percentile 98.25% / 0.99876
(98.84%), entropy 98.25% / 0.99867 (98.60%): within a few images again, but percentile then met
the default budget with 17 of 45 layers float (98.5% and 0.00 point on the 400, 1.18-1.22x
float32) where minmax is refused.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from mnv3.backends import onnxruntime_calib as oc
from mnv3.backends.int8_pairs import conv_rows, pair_safe_scale
from mnv3.calibration import decode_batches
from mnv3.engine_errors import ort_quantization_errors
from mnv3.errors import BuildError, Mnv3Error
from mnv3.meta import PreprocessCfg
from mnv3.onnx_source import graph_io, tensor_readers


# Ops whose inputs/weights are quantized to int8 (the "convolutions and matrix products").
INT8_OPS = ("Conv", "Gemm", "MatMul")
# Activations quantized together with their producer: ORT then fuses them into QLinearConv and
# the conv's output scale covers the activation's range (ReLU6: [0, 6]) rather than the wide
# pre-activation range. Measured on Lite0: 86% -> 97% top-1 agreement (fidelity_lite0.py).
FUSED_ACTIVATIONS = ("Relu", "Clip")
# Layers kept in float by default: the first three Conv/Gemm/MatMul (the stem and the first
# block, at the highest resolution, where the SQNR of the int8 graph falls fastest) and the last
# two (Lite0: head conv + classifier; MobileNetV3: its two classifier Linears); ~5% of the MACs.
# Measured (fidelity_lite0.py / int8_speed.py --variant): Lite0 logit cosine vs fp32 0.9978
# (all int8) -> 0.9983 (first 1 + last 2) -> 0.9988 (first 3 + last 2), and MobileNetV3-Large
# int8 speed unchanged (1.26x -> 1.31x force_float32 at batch 1, 1 thread: within noise).
FLOAT_FIRST, FLOAT_LAST = 3, 2
HISTOGRAM_WINDOW = 8  # images per histogram-calibration window (bounds memory)
# Per int8 ISA class (mnv3.sysinfo.INT8_ISAS): "exact" CPUs accumulate u8 x s8 in int32 (VNNI,
# AMX, ARM); "saturating" ones (AVX2, AVX-512 without VNNI) run ORT's u8 x s8 kernels on
# vpmaddubsw, whose int16 pair sums saturate. Figures in the module docstring.
ISA_RECIPES = {
    "exact": {"weight_type": "int8", "reduce_range": False, "weight_scales": "max"},
    "saturating": {"weight_type": "int8", "reduce_range": False, "weight_scales": "pair_safe"},
}
# pair_safe: see mnv3.backends.int8_pairs (which pairs the kernels sum in int16, and why).




def default_recipe(isa: str | None = None) -> dict:
    """The int8 settings that keep accuracy on the CPU's int8 ISA class (``sysinfo.int8_isa``).

    See ``ISA_RECIPES``; the model is quantized for the CPU it is built on, and meta.json
    records that CPU's class so a load on another class warns.
    """
    from mnv3.sysinfo import int8_isa, int8_saturates

    isa = isa or int8_isa()
    return dict(ISA_RECIPES["saturating" if int8_saturates(isa) else "exact"], isa=isa)


def pair_safe_scales(model: onnx.ModelProto,
                     names: Sequence[str] | None = None) -> dict[str, tuple]:
    """Per-output-channel int8 weight scales for the Conv/Gemm/MatMul nodes ``names`` that
    never let the saturating u8 x s8 kernels overflow (``int8_pairs.pair_safe_scale``: max over
    pairs of (|w_k| + |w_k+1|) / 127). Depthwise convolutions (int32 accumulation) get
    max |w| / 127.

    Returns {weight initializer: (channel axis, float32 scales)}; ``names`` None: every one.
    """
    inits = {i.name: i for i in model.graph.initializer}
    out: dict[str, tuple] = {}
    for n in model.graph.node:
        if (names is not None and n.name not in names) or n.op_type not in INT8_OPS or len(n.input) < 2 \
                or n.input[1] not in inits:
            continue
        w = onnx.numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        axis, rows = _weight_rows(n.op_type, w, attrs)
        if rows is None:  # depthwise: no pairs summed in int16
            amax = np.abs(w).reshape(w.shape[0], -1).max(1) / 127.0
            scale = np.where(amax > 0, amax, 1.0).astype(np.float32)
        else:
            scale = pair_safe_scale(rows)
        out[n.input[1]] = (axis, scale)
    return out


def _weight_rows(op: str, w: np.ndarray, attrs: dict) -> tuple[int, np.ndarray | None]:
    """(ORT's per-channel axis, the weights as [output channel, K] in the kernel's K order);
    rows None for a depthwise convolution."""
    if op == "Conv":
        group = int(attrs.get("group", 1))
        if group > 1 and w.shape[1] == 1 and w.shape[0] == group:
            return 0, None
        return 0, conv_rows(w)
    if op == "Gemm" and attrs.get("transB", 0):
        return 0, w.reshape(w.shape[0], -1)  # [N, K]
    return 1, w.reshape(w.shape[0], -1).T  # Gemm without transB / MatMul: [K, N]


def _scale_overrides(scales: dict[str, tuple]) -> dict[str, list[dict]]:
    """``pair_safe_scales`` as ORT's TensorQuantOverrides (symmetric: zero point 0)."""
    return {name: [{"axis": axis, "scale": float(sc), "zero_point": 0} for sc in scale]
            for name, (axis, scale) in scales.items()}


def weight_qrange(weight_type: str, reduce_range: bool) -> tuple[int, int]:
    """(qmin, qmax) of ORT's symmetric weights of ``weight_type`` ("int8" / "uint8")."""
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    qtype = onnx.TensorProto.INT8 if weight_type == "int8" else onnx.TensorProto.UINT8
    qmin, qmax = get_qmin_qmax_for_qType(qtype, reduce_range=reduce_range, symmetric=True)
    return int(qmin), int(qmax)


def quantize_int8(src: Path, dst: Path, files: Sequence[Path], cfg: PreprocessCfg, *,
                  method: str = "minmax", options: dict | None = None,
                  progress: bool = True) -> dict:
    """QDQ int8 quantization of ``src`` (a dynamic-batch float model) into ``dst``.

    Calibrates on ``files`` (preprocessed with ``cfg``). Returns the settings used (recorded
    in meta.extra). ``options`` may override ``isa`` (the CPU class to quantize for),
    ``per_channel``, ``reduce_range``, ``weight_type``, ``activation_symmetric``,
    ``bias_correction``, ``fuse_activations``, ``float_first``, ``float_last``,
    ``exclude_nodes`` (measured in benchmarks/fidelity_lite0.py).
    """
    work = Path(dst).parent
    quantizer = Int8Quantizer(src, work, files, cfg, method=method, options=options,
                              progress=progress)
    return quantizer.quantize(dst)


class Int8Quantizer:
    """One source model calibrated once, quantized as often as the accuracy fallback asks.

    Calibration ranges (ORT's calibration cache) and the bias-correction input means depend
    only on the float model and the images, so keeping more layers float reuses both: a
    fallback round costs a quantization pass (seconds), not a calibration (tens of seconds).
    """

    def __init__(self, src: Path, work: Path, files: Sequence[Path], cfg: PreprocessCfg, *,
                 method: str = "minmax", options: dict | None = None, progress: bool = True,
                 batch: int | None = None):
        """``batch``: the one batch ``src`` runs with, for a graph that bakes its export batch
        (``onnx_source.runs_any_batch``); None: any batch. Statistics then run in batches of
        exactly that many images, and a remainder that fills no batch is left out."""
        options = options or {}
        recipe = default_recipe(options.get("isa"))
        s = {"format": "QDQ", "isa": recipe["isa"],
             "weight_type": str(options.get("weight_type", recipe["weight_type"])),
             "activations": "uint8", "calibration": method,
             "per_channel": bool(options.get("per_channel", True)),
             "reduce_range": bool(options.get("reduce_range", recipe["reduce_range"])),
             "weight_scales": str(options.get("weight_scales", recipe["weight_scales"])),
             "activation_symmetric": bool(options.get("activation_symmetric", False)),
             "bias_correction": bool(options.get("bias_correction", True)),
             "op_types": list(INT8_OPS + (FUSED_ACTIVATIONS
                                          if options.get("fuse_activations", True) else ())),
             "float_first": int(options.get("float_first", FLOAT_FIRST)),
             "float_last": int(options.get("float_last", FLOAT_LAST))}
        if s["weight_type"] not in ("int8", "uint8"):
            raise BuildError(f"weight_type must be int8 or uint8, got {s['weight_type']!r}")
        if s["weight_scales"] not in ("max", "pair_safe"):
            raise BuildError(f"weight_scales must be max or pair_safe, got {s['weight_scales']!r}")
        if s["reduce_range"] or s["weight_type"] != "int8" or not s["per_channel"]:
            s["weight_scales"] = "max"  # pair-safe scales are per-channel int8 weights
        s["weights"] = f"{s['weight_type']} symmetric" + (
            " 7-bit" if s["reduce_range"] else
            " 8-bit, pair-safe scales" if s["weight_scales"] == "pair_safe" else "")
        self.batch = batch
        if batch and len(files) >= batch:
            files = list(files)[:len(files) // batch * batch]
            s["calibration_batch"] = batch  # the graph's baked batch
            s["calibration_images_used"] = len(files)
        self.settings, self.files, self.cfg, self.method = s, list(files), cfg, method
        self.progress = progress
        self.work = Path(work)
        self.source = Path(src)
        self.model = _name_nodes(onnx.load(str(src)))
        self.base_float = _float_nodes(self.model, s["float_first"], s["float_last"],
                                       options.get("exclude_nodes", ()))
        self.input_name = graph_io(self.model)[0].name
        self.cache = self.work / "calibration.cache.json"
        self.means = None

    def layers(self) -> list[str]:
        """Every Conv/Gemm/MatMul node, in graph order (candidates for int8)."""
        return [n.name for n in self.model.graph.node if n.op_type in INT8_OPS]

    def quantize(self, dst: Path, float_nodes: Sequence[str] = ()) -> dict:
        """Write the int8 model to ``dst`` with ``float_nodes`` kept float as well."""
        from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)

        s = dict(self.settings)
        s["excluded_nodes"] = list(dict.fromkeys([*self.base_float, *float_nodes]))
        exclude = _with_activations(self.model, s["excluded_nodes"])
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        scales = {}
        if s["weight_scales"] == "pair_safe":
            scales = pair_safe_scales(model, [n for n in self.layers() if n not in exclude])
        if s["bias_correction"]:
            model, s["bias_corrected_layers"] = self._bias_correct(model, s, exclude, scales)
        prepared = Path(dst).with_suffix(".prepared.onnx")
        onnx.save(model, str(prepared))
        histogram = self.method != "minmax"
        files = self.files
        # ORT's histogram calibrators stack equal-shaped batches and keep them all in memory:
        # feed single images and let ORT merge histograms window by window.
        batch = self.batch or (1 if histogram else 8)
        window = max(d for d in range(1, HISTOGRAM_WINDOW + 1)
                     if (len(files) // batch) % d == 0)
        extra = {"WeightSymmetric": True, "ActivationSymmetric": s["activation_symmetric"],
                 "CalibMaxIntermediateOutputs": 16}
        if histogram:
            extra["CalibStridedMinMax"] = window
        if scales:
            extra["TensorQuantOverrides"] = _scale_overrides(scales)
        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        reader = None if self.cache.is_file() else oc.make_reader(
            files, self.cfg, self.input_name, batch=batch, progress=self.progress)
        with _quiet_ort():
            try:
                quantize_static(
                    str(prepared), str(dst), reader, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=s["op_types"], per_channel=s["per_channel"],
                    reduce_range=s["reduce_range"], activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8 if s["weight_type"] == "int8"
                    else QuantType.QUInt8,
                    nodes_to_exclude=exclude, calibrate_method=methods[self.method],
                    extra_options=extra, calibration_cache_path=str(self.cache))
            except (KeyboardInterrupt, Mnv3Error):  # e.g. a DataError naming a bad image
                raise
            except ort_quantization_errors() as e:  # ValueError, RuntimeError, ORT's own
                raise BuildError(f"int8 quantization failed: {e}") from e
        prepared.unlink(missing_ok=True)
        return s

    def _bias_correct(self, model: onnx.ModelProto, s: dict, exclude: Sequence[str],
                      scales: dict[str, tuple]) -> tuple[onnx.ModelProto, int]:
        if self.means is None:  # one pass over the images, reused by every fallback round
            self.means = oc.conv_input_means(model, decode_batches(self.files, self.cfg,
                                                                   self.batch or 8))
        return oc.bias_correct(model, None, qrange=weight_qrange(s["weight_type"],
                                                                     s["reduce_range"]),
                                  per_channel=s["per_channel"], skip=exclude,
                                  means=self.means,
                                  scales={k: v[1] for k, v in scales.items()})


def _name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give unnamed nodes unique names: exclusions and reports refer to nodes by name."""
    taken = {n.name for n in model.graph.node}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
            while n.name in taken:
                n.name += "_"
            taken.add(n.name)
    return model


def _float_nodes(model: onnx.ModelProto, first: int, last: int, extra) -> list[str]:
    """The first ``first`` and last ``last`` Conv/Gemm/MatMul nodes (topological order), plus
    ``extra``: layers kept in float."""
    ops = [n.name for n in model.graph.node if n.op_type in INT8_OPS]
    chosen = ops[:max(first, 0)] + (ops[-last:] if last > 0 else [])
    return list(dict.fromkeys([*chosen, *extra]))


def _with_activations(model: onnx.ModelProto, names: Sequence[str]) -> list[str]:
    """``names`` plus the ReLU/Clip each feeds alone: a fused activation left quantized after a
    float layer would put a QuantizeLinear on the wide pre-activation range (measured on Lite0:
    keeping 22 layers float that way dropped agreement to 95%)."""
    consumers = tensor_readers(model)
    out = list(dict.fromkeys(names))
    by_name = {n.name: n for n in model.graph.node}
    for name in list(out):
        node = by_name.get(name)
        after = consumers.get(node.output[0], []) if node is not None and node.output else []
        if len(after) == 1 and after[0].op_type in FUSED_ACTIVATIONS:
            out.append(after[0].name)
    return list(dict.fromkeys(out))


@contextlib.contextmanager
def _quiet_ort():
    """ORT's quantizer logs "consider pre-processing" (our input already had ORT's basic
    optimizations and shape inference) and prints histogram progress to stdout."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantized_node_names(model: onnx.ModelProto) -> list[str]:
    """Names of INT8_OPS nodes whose weight comes from a DequantizeLinear (i.e. run int8)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    names = []
    for n in model.graph.node:
        if n.op_type in INT8_OPS and len(n.input) > 1:
            src = producers.get(n.input[1])
            if src is not None and src.op_type == "DequantizeLinear":
                names.append(n.name)
    return names
