"""Images that take every decoding path of the C++ decoder (mnv3-infer-cpp and
libmnv3-preprocess): PNG and JPEG in every mode and chroma subsampling Python reads, at sizes that
take each resize pass order, and large JPEGs whose crop is decoded on its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def decode_corpus(folder: Path) -> list[Path]:
    """Every decoding path the program has, at sizes that take each resize pass order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)

    def smooth(w, h, c=3):
        base = rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), c), dtype=np.uint8)
        img = Image.fromarray(base.squeeze() if c == 1 else base)
        arr = np.asarray(img.resize((w, h), Image.BICUBIC))
        return np.clip(arr.astype(int) + rng.integers(-20, 21, arr.shape), 0, 255).astype(np.uint8)

    items = []
    for i, (w, h) in enumerate([(97, 61), (61, 97), (40, 130), (130, 40), (36, 36), (36, 50),
                                (20, 30), (300, 36), (33, 33), (500, 375), (375, 500)]):
        items.append((f"rgb_{i:02d}.png", Image.fromarray(smooth(w, h))))
    items.append(("jpeg_q90.jpg", Image.fromarray(smooth(120, 90))))  # saved below as JPEG
    items.append(("jpeg_prog.jpeg", Image.fromarray(smooth(90, 120))))
    items.append(("grey.jpg", Image.fromarray(smooth(80, 64, 1), "L")))
    items.append(("cmyk.jpg", Image.fromarray(smooth(70, 50, 4), "CMYK")))
    items.append(("grey.png", Image.fromarray(smooth(50, 70, 1), "L")))
    items.append(("rgba.png", Image.fromarray(smooth(64, 48, 4), "RGBA")))
    items.append(("la.png", Image.fromarray(smooth(48, 64, 4), "RGBA").convert("LA")))
    items.append(("pal_trns.png", Image.fromarray(smooth(60, 45)).convert("P")))
    items.append(("pal.png", Image.fromarray(smooth(45, 60)).convert("P")))
    items.append(("bits1.png", Image.fromarray(smooth(50, 40, 1), "L").convert("1")))
    # Large JPEGs, so that decoding only the iMCU columns / rows the crop needs is exercised:
    # every chroma subsampling (4:2:0, 4:2:2, 4:4:4), progressive, grey, CMYK, both orientations
    for name, (w, h), c in (("big_420.jpg", (500, 375), 3), ("big_422.jpg", (375, 500), 3),
                            ("big_444.jpg", (411, 307), 3), ("big_prog.jpeg", (307, 411), 3),
                            ("big_grey.jpg", (330, 250), 1), ("big_cmyk.jpg", (250, 330), 4)):
        mode = {1: "L", 3: "RGB", 4: "CMYK"}[c]
        items.append((name, Image.fromarray(smooth(w, h, c), mode)))
    g16 = (smooth(44, 52, 1).astype(np.uint16) * 257 + rng.integers(0, 257, (52, 44))).astype(np.uint16)
    items.append(("grey16.png", Image.fromarray(g16)))
    paths = []
    for name, img in items:
        p = folder / name
        if name in ("jpeg_prog.jpeg", "big_prog.jpeg"):
            img.save(p, quality=85, progressive=True)
        elif name in ("big_422.jpg", "big_444.jpg"):
            img.save(p, quality=90, subsampling=1 if "422" in name else 0)
        elif name.endswith(".jpg"):
            img.save(p, quality=90)
        elif name == "pal_trns.png":
            img.save(p, transparency=3)
        else:
            img.save(p)
        paths.append(p)
    return paths
