"""Pair-safe int8 weight scales, for CPUs whose u8 x s8 multiply-add saturates (AVX2 and AVX-512
without VNNI: ``mnv3.sysinfo.int8_saturates``).

There, ONNX Runtime's int8 kernels (MLAS; OpenVINO's convolutions seemed to pair the same way in
a scratch probe, not repeated by a test) multiply weights k and k+1 of an output channel with
two uint8 activations and sum the pair in int16 (vpmaddubsw), k running over (kernel row, kernel
column, input channel) with the input channel fastest; depthwise convolutions accumulate in
int32. Probed on ONNX Runtime 1.32 (tests/test_quantize.py asserts it on the installed one): a
pair summing to 128 or less never saturates (255 x 128 = 32640 <= 32767), one summing to 129
can. The engines' own remedy, 7-bit weights (ORT's ``reduce_range``, NNCF's overflow fix), keeps
*every* weight within 64; a pair-safe scale keeps every *pair* within 128, which leaves a
channel its full 8 bits wherever one weight of each pair is small, and is never coarser than 7
bits (max |w| / 63.5).
"""

from __future__ import annotations

import numpy as np

PAIR_LIMIT = 127  # + 1 from rounding two weights = 128


def conv_rows(w: np.ndarray) -> np.ndarray:
    """Convolution weights [O, I, kh, kw] as [O, K] in the kernels' K order (kh, kw, I)."""
    return w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)


def pair_safe_scale(rows: np.ndarray) -> np.ndarray:
    """Per output channel (row of [O, K], K in kernel order): the int8 scale for which every
    pair (k, k+1), k even, rounds to at most 128 in sum. float32; 1.0 for an all-zero row."""
    a = np.abs(np.asarray(rows, np.float64))
    if a.shape[1] % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
    scale = (a[:, 0::2] + a[:, 1::2]).max(1) / PAIR_LIMIT
    return np.where(scale > 0, scale, 1.0).astype(np.float32)
