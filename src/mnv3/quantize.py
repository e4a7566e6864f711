"""Stage 2a: int8 QDQ quantization, fp16 conversion, batch-dimension edits, precision report.

Everything here speaks ONNX Runtime's quantization interface (``quantize_static`` fed by the
``CalibrationDataReader`` of ``mnv3.calibration``, which uses the one inference preprocessing).

The int8 recipe and why (issue 3, "MobileNetV3's int8 traps"). Figures: top-1 agreement with
force_float32 / mean logit cosine on EfficientNet-Lite0's real weights, 400 held-out images
(``python benchmarks/fidelity_lite0.py --variants``); the default gets 99.0% / 0.9988, and each
line says what removing that one choice gives:
- weights int8, symmetric, **per channel**: per-tensor scales collapse depthwise convolutions,
  whose channels differ in range by orders of magnitude (per-tensor: 97.25% / 0.989);
- activations uint8 with calibrated (minmax) ranges: U8S8 is ORT's fast x86 path;
- ``reduce_range`` (7-bit weights) only on x86 CPUs without VNNI, where U8S8 can saturate;
- Conv / Gemm / MatMul are quantized with explicit QuantizeLinear/DequantizeLinear (the same
  file serves TensorRT-style engines), and ReLU/ReLU6 with them, so ORT fuses them and the
  conv output's scale spans [0, 6] instead of the wide pre-activation range (conv-only:
  96.25% / 0.983). Everything else (HardSwish, HardSigmoid, the SE multiply, pooling) stays
  float, so hardsigmoid's [0, 1] output is never squeezed by a calibrated scale;
- bias correction (``mnv3.calibration.bias_correct``): int8 weights shift each channel's mean
  output; folding the expected shift into the bias matters for small depthwise nets
  (without: 98.5% / 0.9968);
- the first three and the last two convolutions / matrix products stay float (~5% of the MACs,
  no measured speed cost; all int8: 98.5% / 0.9978 and 0.5 point lost; see FLOAT_FIRST).
Cross-layer equalization is not applied: ReLU6 and hardswish are not positively homogeneous,
so rescaling across them changes the function, and per-channel weights already remove the
inter-channel range problem it addresses. percentile / entropy calibration measured no better
in agreement (98.25% / 0.9990, 98.75% / 0.9989; within a few images) and calibrate slower, so
minmax stays the default; they are options (``--calib-method``).
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Sequence

import onnx

from mnv3 import calibration as calib
from mnv3.errors import BuildError, Mnv3Error
from mnv3.meta import PreprocessCfg

# Ops whose inputs/weights are quantized to int8 (the "convolutions and matrix products").
INT8_OPS = ("Conv", "Gemm", "MatMul")
# Activations quantized together with their producer: ORT then fuses them into QLinearConv and
# the conv's output scale covers the activation's range (ReLU6: [0, 6]) rather than the wide
# pre-activation range. Measured on Lite0: 86% -> 97% top-1 agreement (fidelity_lite0.py).
FUSED_ACTIVATIONS = ("Relu", "Clip")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
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
    "exact": {"weight_type": "int8", "reduce_range": False},
    "saturating": {"weight_type": "int8", "reduce_range": True},
}


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
    except Exception:  # shape inference is an optimisation aid, not a requirement
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


def dims_of(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in vi.type.tensor_type.shape.dim]


# ----------------------------------------------------------------------------- int8 / fp16
def default_recipe(isa: str | None = None) -> dict:
    """The int8 settings that keep accuracy on the CPU's int8 ISA class (``sysinfo.int8_isa``).

    See ``ISA_RECIPES``; the model is quantized for the CPU it is built on, and meta.json
    records that CPU's class so a load on another class warns.
    """
    from mnv3.sysinfo import int8_isa, int8_saturates

    isa = isa or int8_isa()
    return dict(ISA_RECIPES["saturating" if int8_saturates(isa) else "exact"], isa=isa)


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
                 method: str = "minmax", options: dict | None = None, progress: bool = True):
        options = options or {}
        recipe = default_recipe(options.get("isa"))
        s = {"format": "QDQ", "isa": recipe["isa"],
             "weight_type": str(options.get("weight_type", recipe["weight_type"])),
             "activations": "uint8", "calibration": method,
             "per_channel": bool(options.get("per_channel", True)),
             "reduce_range": bool(options.get("reduce_range", recipe["reduce_range"])),
             "activation_symmetric": bool(options.get("activation_symmetric", False)),
             "bias_correction": bool(options.get("bias_correction", True)),
             "op_types": list(INT8_OPS + (FUSED_ACTIVATIONS
                                          if options.get("fuse_activations", True) else ())),
             "float_first": int(options.get("float_first", FLOAT_FIRST)),
             "float_last": int(options.get("float_last", FLOAT_LAST))}
        if s["weight_type"] not in ("int8", "uint8"):
            raise BuildError(f"weight_type must be int8 or uint8, got {s['weight_type']!r}")
        s["weights"] = f"{s['weight_type']} symmetric" + (" 7-bit" if s["reduce_range"] else "")
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
        if s["bias_correction"]:
            model, s["bias_corrected_layers"] = self._bias_correct(model, s, exclude)
        prepared = Path(dst).with_suffix(".prepared.onnx")
        onnx.save(model, str(prepared))
        histogram = self.method != "minmax"
        files = self.files
        # ORT's histogram calibrators stack equal-shaped batches and keep them all in memory:
        # feed single images and let ORT merge histograms window by window.
        batch = 1 if histogram else 8
        window = max(d for d in range(1, HISTOGRAM_WINDOW + 1) if len(files) % d == 0)
        extra = {"WeightSymmetric": True, "ActivationSymmetric": s["activation_symmetric"],
                 "CalibMaxIntermediateOutputs": 16}
        if histogram:
            extra["CalibStridedMinMax"] = window
        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        reader = None if self.cache.is_file() else calib.make_reader(
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
            except Exception as e:  # ORT raises bare Exceptions for unsupported graphs
                raise BuildError(f"int8 quantization failed: {e}") from e
        prepared.unlink(missing_ok=True)
        return s

    def _bias_correct(self, model: onnx.ModelProto, s: dict,
                      exclude: Sequence[str]) -> tuple[onnx.ModelProto, int]:
        if self.means is None:  # one pass over the images, reused by every fallback round
            self.means = calib.conv_input_means(model, calib.iter_batches(self.files, self.cfg, 8))
        return calib.bias_correct(model, None, qrange=weight_qrange(s["weight_type"],
                                                                     s["reduce_range"]),
                                  per_channel=s["per_channel"], skip=exclude,
                                  means=self.means)


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
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
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
    except Exception as e:
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
