"""ONNX Runtime's side of calibration: the ``CalibrationDataReader`` that streams images
through the one inference preprocessing, and bias correction of int8 weights."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx

from mnv3.calibration import decode_batches
from mnv3.meta import PreprocessCfg
from mnv3.onnx_source import cpu_session


def make_reader(files: Sequence[Path], cfg: PreprocessCfg, input_name: str, batch: int = 1,
                progress: bool = True):
    """An ORT ``CalibrationDataReader`` streaming ``files`` through the shared preprocessing.

    It also offers ``len`` (batches) and ``set_range`` so ORT can calibrate in windows
    (``CalibStridedMinMax``): its histogram calibrators otherwise keep every batch's
    activations in memory (6.8 GB for Lite0 on 100 images).
    """
    from onnxruntime.quantization import CalibrationDataReader
    from tqdm import tqdm

    class ImageCalibrationReader(CalibrationDataReader):
        def __init__(self):
            self._bar = tqdm(total=len(files), desc="calibrating", unit="img",
                             disable=not progress, leave=False)
            self.set_range(0, len(self))

        def __len__(self):
            return -(-len(files) // batch)

        def set_range(self, start_index: int, end_index: int):
            self._it = decode_batches(files[start_index * batch:end_index * batch], cfg, batch)

        def get_next(self):
            x = next(self._it, None)
            if x is None:
                return None
            self._bar.update(len(x))
            if self._bar.n >= len(files):
                self._bar.close()
            return {input_name: x}

    return ImageCalibrationReader()


# ----------------------------------------------------------------------------- bias correction
def input_channel_means(model: onnx.ModelProto, batches: Iterable[np.ndarray],
                        names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-channel mean (over N, H, W) of tensors ``names`` on ``batches``, streamed."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                          for n in names if n not in have)
    sess = cpu_session(m)
    input_name = sess.get_inputs()[0].name
    sums = {n: 0.0 for n in names}
    counts = dict.fromkeys(names, 0)
    for x in batches:
        for n, y in zip(names, sess.run(list(names), {input_name: x})):
            axes = (0,) + tuple(range(2, y.ndim))
            sums[n] = sums[n] + y.astype(np.float64).sum(axes)
            counts[n] += y.size // y.shape[1]
    return {n: sums[n] / max(counts[n], 1) for n in names}


def fake_quant_weight(w: np.ndarray, qrange: tuple[int, int] | int,
                      per_channel: bool, scale: np.ndarray | None = None) -> np.ndarray:
    """What ORT's symmetric weight quantization to ``qrange`` = (qmin, qmax) turns ``w`` into.

    ORT: scale = 2 max|w| / (qmax - qmin), zero point = round((qmax + qmin) / 2), values
    rounded half to even and clipped; e.g. int8 (-127, 127), reduce_range int8 (-64, 64),
    uint8 (0, 255) with zero point 128. A bare int q means (-q, q). ``scale``: the scales
    given to ORT instead (per channel along axis 0, e.g. ``onnxruntime_quant.pair_safe_scales``).
    """
    qmin, qmax = (-qrange, qrange) if isinstance(qrange, int) else qrange
    axes = tuple(range(1, w.ndim)) if per_channel else None
    if scale is not None:
        scale = np.asarray(scale, np.float64).reshape((-1,) + (1,) * (w.ndim - 1))
    else:
        amax = np.abs(w).max(axis=axes, keepdims=per_channel)
        scale = np.where(amax > 0, 2 * amax / (qmax - qmin), 1.0)
    zero = np.rint((qmax + qmin) / 2.0)
    return (np.clip(np.rint(w / scale) + zero, qmin, qmax) - zero) * scale


def _correctable(model: onnx.ModelProto):
    """Conv/Gemm nodes with constant weight and bias: the ones bias correction can adjust."""
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2
            and n.input[1] in inits and n.input[2] in inits]


def conv_input_means(model: onnx.ModelProto, batches: Iterable[np.ndarray]) -> dict:
    """Per-channel input means of every correctable layer (``bias_correct``'s statistics)."""
    names = sorted({n.input[0] for n in _correctable(model)})
    return input_channel_means(model, batches, names)


def bias_correct(model: onnx.ModelProto, batches: Iterable[np.ndarray] | None, *,
                 qrange: tuple[int, int] | int = 127, per_channel: bool = True,
                 skip: Sequence[str] = (), means: dict | None = None,
                 scales: dict[str, np.ndarray] | None = None) -> tuple[onnx.ModelProto, int]:
    """Fold the expected output error of int8 weights into the float biases (Nagel et al. 2019).

    For a conv y = W * x + b, quantized weights Wq shift the mean output of channel c by
    sum_{i,kh,kw} (Wq - W)[c, i, kh, kw] * E[x_i]; subtracting it from b removes that bias.
    E[x_i] comes from the calibration images (borders and padding are ignored), or from
    ``means`` (``conv_input_means``) when already measured. Layers named in ``skip`` stay
    float and are left alone. ``scales``: per weight initializer, the per-output-channel
    scales ORT is given instead of its own. Returns the corrected model and the layer count.
    """
    scales = scales or {}
    inits = {i.name: i for i in model.graph.initializer}
    nodes = [n for n in _correctable(model) if n.name not in set(skip)]
    if means is None:
        means = input_channel_means(model, batches, sorted({n.input[0] for n in nodes}))
    for n in nodes:
        w = onnx.numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Gemm":
            if attrs.get("transA", 0):
                continue  # not a classifier head; leave it alone
            w = w if attrs.get("transB", 0) else w.T  # -> [out, in]
            wq = fake_quant_weight(w, qrange, per_channel, scales.get(n.input[1]))
            err = (wq - w) @ means[n.input[0]]
        else:
            groups = int(attrs.get("group", 1))
            dw = (fake_quant_weight(w, qrange, per_channel, scales.get(n.input[1])) - w).reshape(
                w.shape[0], w.shape[1], -1)
            mu = means[n.input[0]].reshape(groups, w.shape[1])  # inputs seen by each group
            group_of = np.arange(w.shape[0]) // (w.shape[0] // groups)
            err = np.einsum("oik,oi->o", dw, mu[group_of])
        b = onnx.numpy_helper.to_array(inits[n.input[2]]).astype(np.float64)
        inits[n.input[2]].CopyFrom(onnx.numpy_helper.from_array((b - err).astype(np.float32),
                                                                n.input[2]))
    return model, len(nodes)
