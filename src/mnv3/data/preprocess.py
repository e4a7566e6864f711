"""The one preprocessing: calibration, inference and evaluation all call ``preprocess_image``.

It reproduces the reference PyTorch/torchvision evaluation pipeline bit for bit:
``Image.open(f).convert("RGB")`` -> Resize(short side, bilinear, antialiased as PIL does) ->
CenterCrop -> ToTensor -> Normalize, with the sizes, mean and std of the model's meta.json.
``tests/test_preprocess.py`` checks it against an independent implementation.

It is made fast only in ways that keep every pixel (a DataLoader-style pool of threads in
``mnv3.data.loader`` does the rest): the resize skips the columns or rows the crop throws away
(``_resize_cropped``) and normalization is a table lookup (``normalize``). Lossy speed-ups (JPEG
draft decoding, one resize straight to the crop) live apart, opt-in, in ``mnv3.data.fast_decode``
(``--decode fast``), whose cost to top-1 is measured.

Two deliberate departures from ``convert("RGB")``, for images the reference mishandles:
transparent images are composited over white (convert would expose whatever colour hides under
transparent pixels, often black), and 16-bit greyscale is scaled to 8 bits (not clipped at 255).
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnv3.data.files import clip, read_bytes, shown
from mnv3.errors import DataError
from mnv3.meta import PreprocessCfg

MAX_ASPECT = 64  # refuse thinner strips than this (see resize_and_crop)

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file to RGB; DataError naming the file when it cannot be decoded."""
    return decode_image(path)[0]


def decode_image(path: str | os.PathLike, draft_for: PreprocessCfg | None = None
                 ) -> tuple[Image.Image, tuple[int, int], int]:
    """(RGB image, the source image's size, the scale it was decoded at: 1, 2, 4 or 8).

    ``draft_for``: let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale (DCT-domain downscaling,
    Pillow's ``Image.draft``) while it stays at least as large as ``draft_for`` resizes it to:
    the fast path of ``mnv3.data.fast_decode``, which moves pixels. Without it the scale is 1.

    Any exception while *decoding* is the file's fault (Pillow's plugins raise struct.error,
    IndexError, EOFError ... on malformed files), so all of them become DataError: a corrupt
    image must never kill a run half-way through. Converting the decoded pixels is our code and
    stays outside that net.

    Only a regular file under the image size cap is read (``read_bytes``: a FIFO named
    ``x.jpg`` is refused, never read, and a read that stalls on a network mount ends at its
    deadline, so no decode can block forever; issue 19), whole, then decoded from memory.
    """
    path = Path(path)
    data = read_bytes(path, "image")  # DataError itself: missing, a FIFO, too large, stalled
    return _decode(io.BytesIO(data), shown(path), draft_for)


def decode_bytes(data: bytes, what: str = "image") -> Image.Image:
    """Decode an image held in memory (an HTTP request body, ``mnv3 serve``) to RGB, with the
    same checks and messages as a file; ``what`` names it in them."""
    return _decode(io.BytesIO(data), what, None)[0]


def _decode(f, name: str, draft_for: PreprocessCfg | None
            ) -> tuple[Image.Image, tuple[int, int], int]:
    """``decode_image`` on an open binary file ``f``, named ``name`` in its errors."""
    scale = 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as img:
                size = img.size
                if draft_for is not None:
                    scale = _draft(img, draft_for)
                img.load()
    except MemoryError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        # Pillow names the file object it was given, whose repr holds an fd number that
        # changes from run to run: name the problem itself, so skipped.txt is reproducible.
        why = ("cannot identify image file (not a format Pillow reads)"
               if isinstance(e, UnidentifiedImageError) else clip(e))
        raise DataError(f"cannot decode image {name}: {why}; replace or remove "
                        "the file") from None
    # Broad on purpose: only Pillow runs here, and on damaged files (fuzzed, Pillow 13)
    # its plugins raised SyntaxError, NotImplementedError and TypeError besides OSError.
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot decode image {name}: {type(e).__name__}: {clip(e)}; "
                        "replace or remove the file") from None
    return to_rgb(img), size, scale


def _draft(img: Image.Image, cfg: PreprocessCfg) -> int:
    """Ask libjpeg for the smallest scale still >= the resize target; returns the scale."""
    try:
        new_w, new_h, _ = _geometry(*img.size, cfg)
    except DataError:  # a strip too thin: resize_and_crop says so once decoded
        return 1
    width = img.size[0]
    drafted = img.draft("RGB", (new_w, new_h))  # None: not a JPEG (or one it cannot scale)
    return round(width / drafted[1][2]) if drafted else 1  # its box: the source's extent


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparent images are composited over white.

    A mode Pillow cannot convert (rare, e.g. premultiplied "La") is a DataError, not a crash.
    """
    try:
        return _to_rgb(img)
    except ValueError as e:
        raise DataError(f"cannot convert a {img.mode!r} image to RGB ({e}); save it as an RGB "
                        "JPEG or PNG") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit greyscale: scale to 8 bits rather than clipping at 255.
        arr = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def resize_and_crop(img: Image.Image, cfg: PreprocessCfg) -> Image.Image:
    """torchvision's Resize(cfg.resize) then CenterCrop(cfg.crop): same arithmetic, same pixels."""
    w, h = img.size
    new_w, new_h, crop = _geometry(w, h, cfg)
    resample = _RESAMPLE[cfg.interpolation]
    if (new_w, new_h) == (w, h):
        return img.crop(crop)
    if resample == Image.Resampling.NEAREST or not _split_resize_is_exact():
        return img.resize((new_w, new_h), resample).crop(crop)
    return _resize_cropped(img, new_w, new_h, crop, resample)


def _geometry(w: int, h: int, cfg: PreprocessCfg) -> tuple[int, int, tuple[int, int, int, int]]:
    """(resized width, resized height, crop box in the resized image), torchvision's arithmetic."""
    short, long = (w, h) if w <= h else (h, w)
    if long > MAX_ASPECT * short:  # resizing would allocate gigabytes for one thin strip
        raise DataError(f"image is {w}x{h}, more than {MAX_ASPECT} times longer than wide; "
                        "crop it to the subject first")
    new_short, new_long = cfg.resize, int(cfg.resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    top = int(round((new_h - cfg.crop) / 2.0))
    left = int(round((new_w - cfg.crop) / 2.0))
    return new_w, new_h, (left, top, left + cfg.crop, top + cfg.crop)


def _resize_cropped(img: Image.Image, new_w: int, new_h: int, crop, resample) -> Image.Image:
    """``img.resize((new_w, new_h)).crop(crop)`` with the same pixels, computing less.

    Pillow resamples in two separable passes with an 8-bit image in between; each output column
    of the vertical pass depends only on that column, each output row of the horizontal pass
    only on that row. So we run the two passes as two calls, in the order Pillow would, and
    drop the rows or columns the crop throws away before the second pass: identical filter
    coefficients and rounding, about 8% less resize time on the ImageNet sample (1.27 vs 1.38
    CPU ms per image, benchmarks/infer_speed.py).
    """
    w, h = img.size
    left, top, right, bottom = crop
    # Pillow >= 11's rule (libImaging/Resample.c): vertical first when the height shrinks by
    # more than twice as many pixels as the width does; horizontal first otherwise.
    if (h - new_h) > 0 and (h - new_h) > 2 * (w - new_w):
        img = img.resize((w, new_h), resample).crop((0, top, w, bottom))  # vertical pass
        if new_w != w:
            img = img.resize((new_w, bottom - top), resample)  # horizontal, kept rows only
        return img.crop((left, 0, right, bottom - top))
    if new_w != w:
        img = img.resize((new_w, h), resample)  # horizontal pass
    img = img.crop((left, 0, right, h))
    if new_h != h:
        img = img.resize((right - left, new_h), resample)  # vertical, kept columns only
    return img.crop((0, top, right - left, bottom))


@functools.lru_cache(maxsize=1)
def _split_resize_is_exact() -> bool:
    """Whether this Pillow resizes as ``_resize_cropped`` assumes (checked once, on sizes that
    take each pass order, for both filters); if not, we use the plain resize, never a guess."""
    rng = np.random.default_rng(0)
    for w, h, nw, nh in ((97, 61, 50, 31), (61, 97, 31, 50), (40, 130, 30, 60), (30, 20, 64, 43)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        crop = ((nw - 8) // 2, (nh - 8) // 2, (nw - 8) // 2 + 8, (nh - 8) // 2 + 8)
        for resample in (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC):
            full = img.resize((nw, nh), resample).crop(crop)
            if full.tobytes() != _resize_cropped(img, nw, nh, crop, resample).tobytes():
                return False
    return True


def normalize(img: Image.Image, cfg: PreprocessCfg, out: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 HWC -> float32 CHW: ``(x / 255 - mean) / std``, channel order per cfg.

    A uint8 pixel has only 256 values, so each channel goes through a 256-entry table computed
    with exactly the float32 operations of torchvision's ToTensor + Normalize (divide by 255,
    subtract mean, divide by std): bit-identical to doing the arithmetic per pixel, and about
    2.5x faster (0.27 vs 0.67 CPU ms per 224x224 image: one gather instead of four passes).
    ``out`` ([3, H, W] float32, e.g. a slot of a batch array) avoids a copy.
    """
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"normalize expects an RGB image, got array shape {arr.shape}")
    if out is None:
        out = np.empty((3, arr.shape[0], arr.shape[1]), dtype=np.float32)
    table = _lookup_table(cfg.mean, cfg.std)
    for c in range(3):
        src = 2 - c if cfg.channel_order == "BGR" else c
        # mode='clip' lets numpy write straight into out (uint8 indices are always in range)
        np.take(table[c], arr[:, :, src], out=out[c], mode="clip")
    return out


@functools.lru_cache(maxsize=16)
def _lookup_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[3, 256] float32: value v of channel c -> (float32(v) / 255 - mean[c]) / std[c]."""
    x = np.arange(256, dtype=np.float32) / np.float32(255.0)
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    table = (x[None, :] - m) / s
    table.setflags(write=False)
    return table


def preprocess_image(image: str | os.PathLike | Image.Image, cfg: PreprocessCfg,
                     out: np.ndarray | None = None) -> np.ndarray:
    """One image (path or PIL) -> float32 [3, crop, crop], exactly as the reference pipeline.

    ``out`` (float32 [3, crop, crop], e.g. ``batch[i]``) receives the result without a copy.
    """
    img = to_rgb(image) if isinstance(image, Image.Image) else load_image(image)
    return normalize(resize_and_crop(img, cfg), cfg, out=out)


def preprocess_batch(images, cfg: PreprocessCfg) -> np.ndarray:
    """Several images (paths or PIL) -> float32 [N, 3, crop, crop], decoded one after another.

    For many files use ``mnv3.data.loader.iter_batches`` (threads, bounded prefetch).
    """
    images = list(images)
    batch = np.empty((len(images), 3, cfg.crop, cfg.crop), dtype=np.float32)
    for i, im in enumerate(images):
        preprocess_image(im, cfg, out=batch[i])
    return batch
