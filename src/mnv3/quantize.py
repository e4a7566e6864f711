"""Stage 2a: calibration data, int8 QDQ quantization, fp16 conversion, batch-dimension edits.

Everything here speaks ONNX Runtime's quantization interface (``CalibrationDataReader``,
``quantize_static``) and is fed by ``mnv3.data.preprocess.preprocess_image``, the same function
inference and evaluation use: a calibration set preprocessed any other way would calibrate the
wrong activation ranges (DESIGN.md practice 8).

The int8 recipe and why (issue 3, "MobileNetV3's int8 traps"):
- weights int8, symmetric, **per channel**: per-tensor scales collapse depthwise convolutions,
  whose channels differ in range by orders of magnitude;
- activations uint8 with calibrated ranges (U8S8, ORT's fast path on x86);
- ``reduce_range`` (7-bit weights) only on x86 CPUs without VNNI, where U8S8 can saturate;
- only Conv / Gemm / MatMul are quantized (explicit QuantizeLinear/DequantizeLinear around
  them), so the same file also serves TensorRT-style engines; everything else stays float.
  HardSigmoid's and HardSwish's outputs then stay in float, so their [0, 1] / [-0.375, inf)
  ranges are never squeezed by a calibrated scale.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx

from mnv3.data.preprocess import preprocess_image
from mnv3.errors import BuildError, Mnv3Error, UsageError
from mnv3.meta import PreprocessCfg

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
CALIB_METHODS = ("minmax", "entropy", "percentile")
CALIB_SEED = 0  # fixed: the same folder and count always give the same calibration subset
# Ops whose inputs/weights are quantized to int8 (the "convolutions and matrix products").
INT8_OPS = ("Conv", "Gemm", "MatMul")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


# ----------------------------------------------------------------------------- calibration files
def list_images(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files of ``folder`` (or of its ``images/`` subfolder, the dataset layout)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"calibration folder {folder} does not exist; pass --calib-dir DIR")
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".") and p.is_file())
    if not files and (folder / "images").is_dir():
        return list_images(folder / "images")
    return files


def split_calibration(files: Sequence[Path], num: int) -> tuple[list[Path], list[Path]]:
    """(calibration subset, held-out rest): a seeded sample of ``num`` files, both sorted.

    When ``num`` >= the number of files all of them calibrate and nothing is held out; the
    caller says so (documented choice: use all with a warning rather than refuse, so small demo
    folders still build).
    """
    files = sorted(files)
    if num >= len(files):
        return list(files), []
    chosen = set(random.Random(CALIB_SEED).sample(range(len(files)), num))
    calib = [f for i, f in enumerate(files) if i in chosen]
    rest = [f for i, f in enumerate(files) if i not in chosen]
    return calib, rest


def files_sha256(files: Sequence[Path]) -> str:
    """Hash of the file list (names, in order): identifies the calibration set in meta.json."""
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).name.encode("utf-8") + b"\n")
    return h.hexdigest()


def iter_batches(files: Sequence[Path], cfg: PreprocessCfg, batch: int) -> Iterator[np.ndarray]:
    """Preprocessed float32 batches, decoded lazily (only one batch is ever in memory)."""
    for start in range(0, len(files), batch):
        yield np.stack([preprocess_image(f, cfg) for f in files[start:start + batch]])


def make_reader(files: Sequence[Path], cfg: PreprocessCfg, input_name: str, batch: int = 1,
                progress: bool = True):
    """A ``CalibrationDataReader`` streaming ``files`` through the shared preprocessing."""
    from onnxruntime.quantization import CalibrationDataReader
    from tqdm import tqdm

    class ImageCalibrationReader(CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def rewind(self):
            self._bar = tqdm(total=len(files), desc="calibrating", unit="img",
                             disable=not progress, leave=False)
            self._it = iter_batches(files, cfg, batch)

        def get_next(self):
            x = next(self._it, None)
            if x is None:
                self._bar.close()
                return None
            self._bar.update(len(x))
            return {input_name: x}

    return ImageCalibrationReader()


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
def has_vnni() -> bool:
    """x86 VNNI (or ARM) lets U8S8 use all 8 weight bits; without it ORT needs reduce_range."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: assume a modern CPU (ARM kernels do not saturate)
    if "GenuineIntel" not in flags and "AuthenticAMD" not in flags:
        return True
    return "avx512_vnni" in flags or "avx_vnni" in flags


def quantize_int8(src: Path, dst: Path, reader, *, method: str = "minmax",
                  exclude_nodes: Sequence[str] = (), options: dict | None = None) -> dict:
    """QDQ int8 quantization of ``src`` (a dynamic-batch float model) into ``dst``.

    Returns the settings used (recorded in meta.calibration). ``options`` may override
    ``per_channel``, ``reduce_range``, ``activation_symmetric`` (measured in
    benchmarks/fidelity_lite0.py).
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    options = options or {}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    settings = {
        "format": "QDQ",
        "weights": "int8 symmetric",
        "activations": "uint8",
        "per_channel": bool(options.get("per_channel", True)),
        "reduce_range": bool(options.get("reduce_range", not has_vnni())),
        "activation_symmetric": bool(options.get("activation_symmetric", False)),
        "op_types": list(INT8_OPS),
        "excluded_nodes": list(exclude_nodes),
    }
    extra = {"WeightSymmetric": True, "ActivationSymmetric": settings["activation_symmetric"],
             # bound the calibrator's memory: merge ranges every 16 batches
             "CalibMaxIntermediateOutputs": 16}
    # ORT logs "consider pre-processing" on the root logger; our input already went through
    # ORT's basic optimizations (BN folding, constant folding) and shape inference.
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        quantize_static(
            str(src), str(dst), reader, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(INT8_OPS), per_channel=settings["per_channel"],
            reduce_range=settings["reduce_range"], activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude_nodes),
            calibrate_method=methods[method], extra_options=extra,
        )
    except (KeyboardInterrupt, Mnv3Error):  # e.g. a DataError naming a bad calibration image
        raise
    except Exception as e:  # ORT raises bare Exceptions for unsupported graphs
        raise BuildError(f"int8 quantization failed: {e}") from e
    finally:
        logging.getLogger().setLevel(level)
    return settings


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


# ----------------------------------------------------------------------------- what really runs
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
