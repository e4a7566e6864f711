"""Annotated copies for ``mnv3 infer --save-images``: the top-1 class drawn on the image."""

from __future__ import annotations

from pathlib import Path

from PIL import ImageDraw, ImageFont

from mnv3.atomic import atomic_file
from mnv3.data.preprocess import load_image
from mnv3.errors import UsageError


def save_annotated(src: Path, dest: Path, text: str) -> None:
    """A copy of ``src`` with ``text`` drawn in a box at its top-left corner."""
    img = load_image(src)
    size = max(12, img.width // 25)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed-size bitmap font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(img)
    box = draw.textbbox((4, 4), text, font=font)
    draw.rectangle((0, 0, box[2] + 4, box[3] + 4), fill=(0, 0, 0))
    draw.text((4, 4), text, fill=(255, 255, 0), font=font)
    try:
        with atomic_file(dest, suffix=dest.suffix) as tmp:  # Pillow picks the format by suffix
            img.save(tmp, quality=90) if dest.suffix.lower() in (".jpg", ".jpeg") else img.save(tmp)
    except OSError as e:  # disk full, permissions: the output folder's problem, not a bug
        raise UsageError(f"cannot write {dest} ({e.strerror or e}); free space or choose "
                         "another --output-dir") from None
