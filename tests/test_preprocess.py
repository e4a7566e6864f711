"""The one preprocessing against an independent, straightforward implementation written here.

The reference is torchvision's ImageNet evaluation pipeline spelled out by hand (no torchvision):
``Image.open(f).convert("RGB")`` -> Resize(short side, PIL bilinear) -> CenterCrop -> ToTensor ->
Normalize, with the size and crop arithmetic and the tensor maths done in torch.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mnv3.data.datasets import demo_dataset
from mnv3.data.preprocess import (
    _split_resize_is_exact, load_image, preprocess_batch, preprocess_image, resize_and_crop, to_rgb,
)
from mnv3.errors import DataError
from mnv3.meta import PreprocessCfg

IMAGENET = PreprocessCfg()
TF_STYLE = PreprocessCfg(mean=(0.498,) * 3, std=(0.502,) * 3)  # EfficientNet-Lite0's weights
BGR_SMALL = PreprocessCfg(resize=160, crop=128, channel_order="BGR")


def reference(img: Image.Image, cfg: PreprocessCfg) -> np.ndarray:
    """torchvision's Resize/CenterCrop/ToTensor/Normalize, written out independently."""
    w, h = img.size
    scale = cfg.resize / min(w, h)
    # torchvision: the short side becomes `resize`, the long side int(resize * long / short)
    if w <= h:
        size = (cfg.resize, int(cfg.resize * h / w))
    else:
        size = (int(cfg.resize * w / h), cfg.resize)
    assert abs(size[0] - w * scale) <= 1 and abs(size[1] - h * scale) <= 1
    img = img.resize(size, Image.Resampling.BILINEAR)
    t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    t = t.to(torch.float32).div(255)  # ToTensor
    top = int(round((t.shape[1] - cfg.crop) / 2.0))  # CenterCrop's arithmetic
    left = int(round((t.shape[2] - cfg.crop) / 2.0))
    t = t[:, top:top + cfg.crop, left:left + cfg.crop]
    if cfg.channel_order == "BGR":
        t = t.flip(0)
    mean = torch.tensor(cfg.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(cfg.std, dtype=torch.float32)[:, None, None]
    return ((t - mean) / std).numpy()  # Normalize


@pytest.fixture(scope="module")
def demo():
    return demo_dataset()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The reference's tensors are small: threads only add overhead on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cfg", [IMAGENET, TF_STYLE, BGR_SMALL], ids=["imagenet", "tf", "bgr"])
def test_demo_images_equal_the_reference(demo, cfg):
    got = preprocess_batch([s.path for s in demo], cfg)
    assert got.dtype == np.float32 and got.shape == (len(demo), 3, cfg.crop, cfg.crop)
    for s, x in zip(demo, got):
        with Image.open(s.path) as im:
            ref = reference(im.convert("RGB"), cfg)
        np.testing.assert_allclose(x, ref, rtol=0, atol=1e-6, err_msg=str(s.path))
        assert np.array_equal(x, ref), f"{s.path} is not bit-identical"  # what we actually get


def _plain_resize_crop(img, cfg):
    w, h = img.size
    size = (cfg.resize, int(cfg.resize * h / w)) if w <= h else (int(cfg.resize * w / h), cfg.resize)
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "nearest": Image.Resampling.NEAREST}[cfg.interpolation]
    img = img.resize(size, resample)
    top, left = int(round((size[1] - cfg.crop) / 2.0)), int(round((size[0] - cfg.crop) / 2.0))
    return img.crop((left, top, left + cfg.crop, top + cfg.crop))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_cropped_resize_equals_full_resize_then_crop(interpolation):
    """resize_and_crop skips the pixels the crop drops; the rest must be untouched, for shapes
    that take either of Pillow's pass orders, upsampling and downsampling, odd margins."""
    assert _split_resize_is_exact()  # this Pillow is one whose resize we mirror
    rng = np.random.default_rng(7)
    cfg = PreprocessCfg(resize=40, crop=32, interpolation=interpolation)
    orders = set()
    for _ in range(120):
        w, h = (int(v) for v in rng.integers(12, 400, size=2))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        got = resize_and_crop(img, cfg)
        assert got.tobytes() == _plain_resize_crop(img, cfg).tobytes(), (w, h)
        nh = 40 if h <= w else int(40 * h / w)
        orders.add((h - nh) > 0 and (h - nh) > 2 * (w - (40 if w <= h else int(40 * w / h))))
    assert orders == {True, False}  # both pass orders were exercised


def test_grayscale_jpeg_from_the_demo_set(demo):
    gray = [s for s in demo if Image.open(s.path).mode == "L"]
    assert gray
    for s in gray:
        x = preprocess_image(s.path, IMAGENET)
        assert np.array_equal(x, reference(Image.open(s.path).convert("RGB"), IMAGENET))
        # all three channels carry the same grey values (before normalization)
        raw = x * np.float32(0.229) + np.float32(0.485)
        assert np.abs(raw[0] - (x[1] * np.float32(0.224) + np.float32(0.456))).max() < 1e-5


def _saved(img: Image.Image, fmt: str, **kw) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    buf.seek(0)
    return buf


def _photo(demo) -> Image.Image:
    return Image.open(demo[0].path).convert("RGB")


def test_cmyk_jpeg(demo, tmp_path):
    path = tmp_path / "cmyk.jpg"
    _photo(demo).convert("CMYK").save(path, quality=95)
    with Image.open(path) as im:
        assert im.mode == "CMYK"
        ref = reference(im.convert("RGB"), IMAGENET)
    assert np.array_equal(preprocess_image(path, IMAGENET), ref)
    # and the colours survive the CMYK round trip (not inverted, as Adobe CMYK can be)
    rgb = np.asarray(load_image(path), dtype=np.float32)
    assert np.abs(rgb - np.asarray(_photo(demo), dtype=np.float32)).mean() < 12


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Alpha compositing over white, the textbook formula in float."""
    a = rgba[..., 3:4].astype(np.float64) / 255
    return np.round(rgba[..., :3] * a + 255 * (1 - a)).astype(np.int16)


def test_rgba_is_composited_over_white(demo, tmp_path):
    rgb = np.asarray(_photo(demo).resize((64, 48)))
    alpha = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))[..., None]
    path = tmp_path / "rgba.png"
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(path)
    got = np.asarray(load_image(path), dtype=np.int16)
    want = _over_white(np.asarray(Image.open(path)))
    assert np.abs(got - want).max() <= 1  # PIL's fixed-point rounding vs float rounding
    assert (got[:, 0] == 255).all()  # fully transparent column is white, not black
    x = preprocess_image(path, IMAGENET)
    assert np.array_equal(x, reference(load_image(path), IMAGENET))


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (40, 30), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    img.paste(1, (20, 0, 40, 30))
    path = tmp_path / "pal.png"
    img.save(path, transparency=0)
    got = np.asarray(load_image(path))
    assert (got[:, :20] == 255).all()  # transparent black -> white
    assert (got[:, 20:] == [255, 0, 0]).all()
    assert preprocess_image(path, BGR_SMALL).shape == (3, 128, 128)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 50).astype(np.uint16), (40, 1))
    path = tmp_path / "g16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    got = np.asarray(load_image(path), dtype=np.int32)
    want = np.round(ramp / 257.0).astype(np.int32)
    assert np.abs(got[..., 0] - want).max() <= 1 and got[..., 0].max() == 255
    assert (got[..., 0] == got[..., 2]).all()


@pytest.mark.parametrize("mode", ["1", "LA", "P", "I", "F", "YCbCr", "HSV", "LAB", "RGBX",
                                  "I;16B"])
def test_other_modes_become_rgb(mode):
    img = Image.new("RGB", (33, 21), (120, 60, 30)).convert(mode) if mode in (
        "1", "LA", "P", "F", "YCbCr", "HSV", "LAB", "RGBX") else Image.new(mode, (33, 21), 1000)
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (33, 21)


def test_unconvertible_mode_is_a_data_error():
    with pytest.raises(DataError, match="cannot convert a 'La' image to RGB"):
        to_rgb(Image.new("La", (4, 4)))


def test_pil_image_input_equals_file_input(demo):
    with Image.open(demo[1].path) as im:
        from_pil = preprocess_image(im, IMAGENET)
    assert np.array_equal(from_pil, preprocess_image(demo[1].path, IMAGENET))


def test_out_buffer_is_filled_in_place(demo):
    buf = np.zeros((2, 3, 224, 224), np.float32)
    preprocess_image(demo[0].path, IMAGENET, out=buf[1])
    assert np.array_equal(buf[1], preprocess_image(demo[0].path, IMAGENET))
    assert not buf[0].any()


@pytest.mark.parametrize("content, match", [
    (b"", "cannot decode"),
    (b"plain text, not a JPEG\n", "cannot decode"),
])
def test_undecodable_files(tmp_path, content, match):
    path = tmp_path / "bad.JPEG"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        preprocess_image(path, IMAGENET)


def test_truncated_jpeg_and_missing_file(demo, tmp_path):
    data = demo[0].path.read_bytes()
    (tmp_path / "t.JPEG").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot decode image .*t.JPEG"):
        load_image(tmp_path / "t.JPEG")
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "missing.JPEG")


def test_absurdly_thin_image_is_a_data_error(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (2, 2000), (9, 9, 9)).save(path)
    with pytest.raises(DataError, match="2x2000, more than 64 times longer than wide"):
        preprocess_image(path, IMAGENET)
    Image.new("RGB", (40, 2000), (9, 9, 9)).save(path)  # 50:1 still works
    assert preprocess_image(path, IMAGENET).shape == (3, 224, 224)
