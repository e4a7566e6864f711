"""The one preprocessing: calibration, inference and evaluation all call ``preprocess_image``.

It reproduces the reference PyTorch/torchvision pipeline to the pixel:
Resize(short side, bilinear, antialiased as PIL does) -> CenterCrop -> ToTensor -> Normalize.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnv3.errors import DataError
from mnv3.meta import PreprocessCfg

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file to RGB; DataError naming the file when it cannot be decoded."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return to_rgb(img)
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"cannot decode image {path}: {e}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparent images are composited over white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits rather than clipping at 255.
        arr = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def resize_and_crop(img: Image.Image, cfg: PreprocessCfg) -> Image.Image:
    """torchvision's Resize(cfg.resize) then CenterCrop(cfg.crop), same arithmetic."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = cfg.resize, int(cfg.resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), _RESAMPLE[cfg.interpolation])
    top = int(round((new_h - cfg.crop) / 2.0))
    left = int(round((new_w - cfg.crop) / 2.0))
    return img.crop((left, top, left + cfg.crop, top + cfg.crop))


def normalize(img: Image.Image, cfg: PreprocessCfg) -> np.ndarray:
    """RGB uint8 HWC -> float32 CHW in [0,1] -> (x - mean) / std, channel order per cfg."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    if cfg.channel_order == "BGR":
        arr = arr[..., ::-1]
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(((arr - mean) / std).transpose(2, 0, 1))


def preprocess_image(image: str | os.PathLike | Image.Image, cfg: PreprocessCfg) -> np.ndarray:
    """One image (path or PIL) -> float32 [3, crop, crop], exactly as the reference pipeline."""
    img = to_rgb(image) if isinstance(image, Image.Image) else load_image(image)
    return normalize(resize_and_crop(img, cfg), cfg)


def preprocess_batch(images, cfg: PreprocessCfg) -> np.ndarray:
    """Several images -> float32 [N, 3, crop, crop]."""
    return np.stack([preprocess_image(im, cfg) for im in images]).astype(np.float32, copy=False)
