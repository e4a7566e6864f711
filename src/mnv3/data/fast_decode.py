"""The fast decode path (``--decode fast``, issue 17 item 4): fewer CPU ms per image, other pixels.

The exact path (``mnv3.data.preprocess``, the default) decodes the whole JPEG and resizes it as
torchvision does. Here libjpeg decodes at 1/2, 1/4 or 1/8 scale in the DCT domain wherever the
image is at least twice the resize target (Pillow's ``Image.draft``: a 500x375 photo resized to
256 is decoded at 250x188 instead, a quarter of the pixels to decode and filter), and one
resize call computes only the pixels the center crop keeps (``Image.resize``'s ``box``), from
the drafted image straight to the crop. The geometry is the exact path's, measured in source
pixels; the pixels differ (libjpeg's scaled IDCT, then a shorter filter), so what it costs in
top-1 is measured, not assumed: ``benchmarks/fast_decode.py`` (README, "infer / eval").
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from mnv3.data.preprocess import _RESAMPLE, _decode, _geometry, decode_image, normalize
from mnv3.defaults import DECODE_ENGINES, DECODES
from mnv3.errors import UsageError
from mnv3.meta import PreprocessCfg


def check_decode(decode: str, engine: str = "python") -> str:
    """``decode`` when it is a decode path that ``engine`` (infer's) has, else UsageError."""
    if decode not in DECODES:
        raise UsageError(f"decode must be one of {', '.join(DECODES)}, got {decode!r}")
    if engine in DECODE_ENGINES["exact"] and engine not in DECODE_ENGINES[decode]:
        raise UsageError(f"--decode {decode} is for --engine {' or '.join(DECODE_ENGINES[decode])}"
                         f"; the {engine} engine decodes the exact way")
    return decode


def tuned_decode(meta) -> str:
    """The decode ``mnv3 tune`` chose for this model (``mnv3.tune_decode``: ``fast`` or
    ``native`` only where it measured them), else ``exact``. A recorded ``native`` that cannot
    run here (the library not built on this machine) is ``exact``: the same pixels."""
    decode = (getattr(meta, "tuned", None) or {}).get("decode")
    if decode == "native":
        from mnv3.data.native_decode import unavailable

        return "exact" if unavailable(meta.preprocess) else "native"
    return decode if decode in DECODES else "exact"


def preprocess_fast(path: str | os.PathLike, cfg: PreprocessCfg,
                    out: np.ndarray | None = None) -> np.ndarray:
    """One image file -> float32 [3, crop, crop] by the fast path (``out``: as preprocess_image)."""
    img, size, scale = decode_image(path, draft_for=cfg)
    return normalize(resize_crop_scaled(img, size, scale, cfg), cfg, out=out)


def preprocess_fast_bytes(data: bytes, cfg: PreprocessCfg, what: str = "image") -> np.ndarray:
    """An image held in memory (``mnv3 serve``'s request body) by the fast path; ``what`` names
    it in errors, as ``preprocess.decode_bytes`` does."""
    img, size, scale = _decode(io.BytesIO(data), what, cfg)
    return normalize(resize_crop_scaled(img, size, scale, cfg), cfg)


def resize_crop_scaled(img: Image.Image, size: tuple[int, int], scale: int,
                       cfg: PreprocessCfg) -> Image.Image:
    """The exact path's Resize + CenterCrop of a ``size`` source that ``img`` shows at 1/scale,
    in one resize of the crop's region (box in img's pixels: source pixel x is x/scale)."""
    new_w, new_h, (left, top, right, bottom) = _geometry(*size, cfg)
    fx, fy = size[0] / (scale * new_w), size[1] / (scale * new_h)
    box = (left * fx, top * fy, right * fx, bottom * fy)
    return img.resize((right - left, bottom - top), _RESAMPLE[cfg.interpolation], box=box)

