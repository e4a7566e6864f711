"""--decode fast (mnv3.data.fast_decode): DCT-scaled JPEGs, one resize to the crop, opt-in only.

Its accuracy cost is measured in benchmarks/fast_decode.py; here: where it applies, that it
keeps the exact path's geometry, and that the exact path stays the default, untouched.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mnv3.data.datasets import demo_dataset
from mnv3.data.fast_decode import preprocess_fast
from mnv3.data.loader import iter_batches
from mnv3.data.preprocess import decode_image, preprocess_image
from mnv3.errors import UsageError
from mnv3.inference import infer
from mnv3.meta import PreprocessCfg
from test_infer import FakeSession, fake_meta

CFG = PreprocessCfg()  # 256 -> 224: the sizes the draft rule is about


def _photo(path, w, h, fmt="JPEG"):
    """A smooth, asymmetric picture: a shifted or mirrored crop would differ by a lot."""
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    rgb = np.stack([x * 255, y * 255, (x * y) ** 0.5 * 255], axis=2).astype(np.uint8)
    Image.fromarray(rgb).save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


@pytest.mark.parametrize("w,h,scale", [(1200, 900, 2), (900, 2400, 2), (2200, 2100, 8),
                                       (500, 375, 1), (520, 511, 1)])
def test_jpeg_drafted_only_where_twice_the_resize_target(tmp_path, w, h, scale):
    img, size, got = decode_image(_photo(tmp_path / "a.jpg", w, h), draft_for=CFG)
    assert (size, got) == ((w, h), scale)
    assert img.size == (-(-w // scale), -(-h // scale)) and img.mode == "RGB"


@pytest.mark.parametrize("w,h,fmt", [(1200, 900, "JPEG"), (900, 1300, "JPEG"),
                                     (333, 500, "PNG"), (150, 120, "PNG")])
def test_fast_path_keeps_the_exact_geometry(tmp_path, w, h, fmt):
    path = _photo(tmp_path / f"a.{fmt.lower()}", w, h, fmt)
    exact, fast = preprocess_image(path, CFG), preprocess_fast(path, CFG)
    assert fast.shape == exact.shape == (3, 224, 224) and fast.dtype == np.float32
    # a crop one pixel off differs by ~0.015 on average here; the drafted JPEGs differ by
    # ~0.003 (scaled IDCT), the undrafted ones by 0 with Pillow 13 (same filter, same centres)
    assert np.abs(fast - exact).mean() < 0.006


def test_exact_is_the_default_and_untouched():
    demo = demo_dataset()[:4]
    exact = np.stack([preprocess_image(s.path, CFG) for s in demo])
    loaded = np.concatenate([b.images for b in iter_batches(demo, CFG, batch_size=3)])
    assert loaded.tobytes() == exact.tobytes()


def test_loader_fast_batches_are_the_fast_images():
    demo = demo_dataset()[:5]
    loaded = np.concatenate([b.images for b in iter_batches(demo, CFG, 2, decode="fast")])
    np.testing.assert_array_equal(loaded, np.stack([preprocess_fast(s.path, CFG) for s in demo]))
    with pytest.raises(UsageError, match="decode must be one of"):
        iter_batches(demo, CFG, 2, decode="turbo")


def test_infer_records_the_decode_path(tmp_path):
    small = PreprocessCfg(resize=40, crop=32)
    demo = demo_dataset()[:6]
    for decode in ("exact", "fast"):
        r = infer(FakeSession(fake_meta(batch=3, cfg=small)), demo, tmp_path / decode,
                  progress=False, decode=decode)
        assert r.decode == decode
        assert json.loads((tmp_path / decode / "infer.json").read_text())["decode"] == decode
    with pytest.raises(UsageError, match="is for --engine python; the ray engine"):
        infer(str(tmp_path), demo, tmp_path / "x", engine="ray", decode="fast")
