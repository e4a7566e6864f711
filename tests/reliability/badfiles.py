"""Bad inputs for the reliability suite, made at test time (nothing binary is committed).

Each ``make_*`` function writes one file (or folder) under the path it is given and returns the
path. They are small and fast: the 20000x20000 image is a real, valid 1-bit PNG whose pixel
rows are all zero, so zlib squeezes its 50 MB of raw rows into ~50 KB in a fraction of a second
(a small-file decompression bomb: harmless unless a decoder allocates 400 M pixels for it).
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# ----------------------------------------------------------------------------------- images


def _photo(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    """A smooth RGB picture (JPEG-friendly), deterministic."""
    rng = np.random.default_rng(seed)
    base = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
    return Image.fromarray(base).resize((w, h), Image.BILINEAR)


def make_zero_bytes(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def make_truncated_jpeg(p: Path) -> Path:
    buf = io.BytesIO()
    _photo(128, 96).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    p.write_bytes(data[: len(data) // 3])  # header intact, most of the scan data missing
    return p


def make_random_bytes(p: Path) -> Path:
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return p


def make_png_named_jpeg(p: Path) -> Path:
    _photo().save(p, "PNG")  # Pillow sniffs the content, not the extension
    return p


def make_webp_named_jpeg(p: Path) -> Path:
    _photo().save(p, "WEBP")
    return p


def make_cmyk_jpeg(p: Path) -> Path:
    _photo().convert("CMYK").save(p, "JPEG")
    return p


def make_png16(p: Path) -> Path:
    ramp = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    Image.fromarray(ramp).save(p, "PNG")  # mode I;16
    return p


def make_palette_transparent(p: Path) -> Path:
    img = _photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.info["transparency"] = 0
    img.save(p, "PNG", transparency=0)
    return p


def make_one_pixel(p: Path) -> Path:
    Image.new("RGB", (1, 1), (200, 30, 30)).save(p, "PNG")
    return p


def make_exif_rotated(p: Path) -> Path:
    """A JPEG whose EXIF says "rotate 90 degrees clockwise to display" (Orientation = 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    _photo(80, 40).save(p, "JPEG", quality=95, exif=exif.tobytes())
    return p


BOMB_SIDE = 20000


def make_bomb_png(p: Path, side: int = BOMB_SIDE) -> Path:
    """A valid side x side 1-bit PNG of ~50 KB (400 M pixels when decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed 1-bit pixels
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                  + chunk(b"IEND", b""))
    return p


# name -> (maker, decodable?)   decodable images must be predicted, the others refused/skipped
IMAGE_CASES = {
    "zero_bytes.JPEG": (make_zero_bytes, False),
    "truncated.JPEG": (make_truncated_jpeg, False),
    "random_bytes.JPEG": (make_random_bytes, False),
    "png_named.JPEG": (make_png_named_jpeg, True),
    "webp_named.JPEG": (make_webp_named_jpeg, True),
    "cmyk.JPEG": (make_cmyk_jpeg, True),
    "sixteen_bit.png": (make_png16, True),
    "palette_alpha.png": (make_palette_transparent, True),
    "one_pixel.png": (make_one_pixel, True),
    "bomb_20000x20000.png": (make_bomb_png, False),
    "exif_rotated.JPEG": (make_exif_rotated, True),
}


# ----------------------------------------------------------------------------- checkpoints
SIDE_EFFECT = "PWNED"


class RunsCode:
    """Unpickling this calls ``os.system('touch <dir>/PWNED')``: the classic malicious pickle."""

    def __init__(self, folder: Path):
        self.cmd = f"touch {folder / SIDE_EFFECT}"

    def __reduce__(self):
        return (os.system, (self.cmd,))


def make_code_pickle(p: Path) -> Path:
    """A torch.save file (zip) whose pickle would run a shell command if fully unpickled."""
    import torch

    torch.save({"features.0.0.weight": torch.zeros(1), "x": RunsCode(p.parent)}, p)
    return p


def make_code_torchscript_lookalike(p: Path) -> Path:
    """The same malicious pickle, in a zip that looks like a TorchScript archive (has code/)."""
    src = p.with_suffix(".tmp")
    make_code_pickle(src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(p, "w") as zout:
        prefix = zin.namelist()[0].split("/")[0]
        for item in zin.infolist():
            zout.writestr(item, zin.read(item.filename))
        zout.writestr(f"{prefix}/code/__torch__.py", "import os\nos.system('touch PWNED')\n")
        zout.writestr(f"{prefix}/constants.pkl", zin.read(f"{prefix}/data.pkl"))
    src.unlink()
    return p
