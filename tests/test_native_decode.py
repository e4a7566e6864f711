"""``--decode native`` (mnv3.data.native_decode): the C++ decoder of mnv3-infer-cpp, called from
Python. Its promise is the exact path's tensors, bit for bit, on every decoding path, and the
exact path's verdict and words on every image it does not decode itself; and a clear error, not
other pixels, where it is not built or would not match this machine's Pillow.

The tests that call the library need it built (the ``cpp_build`` fixture: a skip with the reason
where it cannot be, a failure in CI).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import IMAGENET_SAMPLE, FakeSession, fake_meta, needs_imagenet_sample
from image_corpus import decode_corpus
from PIL import Image

import mnv3
from mnv3.data import native_decode
from mnv3.data.datasets import demo_dataset, load_dataset
from mnv3.data.loader import iter_batches
from mnv3.data.preprocess import preprocess_image
from mnv3.errors import BackendUnavailable, DataError, UsageError
from mnv3.inference import infer
from mnv3.meta import PreprocessCfg

SMALL = PreprocessCfg(resize=36, crop=32)
VARIANTS = [SMALL, PreprocessCfg(resize=45, crop=32, interpolation="bicubic",
                                 mean=(0.498,) * 3, std=(0.502,) * 3, channel_order="BGR"),
            PreprocessCfg()]


@pytest.fixture(scope="module")
def built(cpp_build):
    return cpp_build


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return sorted(decode_corpus(tmp_path_factory.mktemp("corpus")), key=str)


def _bad_images(folder):
    """Files the library does not decode: the exact path decodes some (BMP, WebP) and refuses
    the rest, each in its own words."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(np.random.default_rng(3).integers(0, 256, (50, 70, 3), np.uint8))
    rgb.save(folder / "photo.bmp")
    rgb.save(folder / "photo.webp")
    rgb.save(folder / "whole.jpg", quality=90)
    (folder / "cut.jpg").write_bytes((folder / "whole.jpg").read_bytes()[:400])
    (folder / "empty.png").write_bytes(b"")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "text.jpg").write_text("hello")
    Image.new("RGB", (700, 10)).save(folder / "strip.png")  # 70:1, thinner than MAX_ASPECT
    return sorted(folder.iterdir())


@pytest.mark.parametrize("cfg", VARIANTS, ids=["small", "bicubic_bgr", "imagenet"])
def test_native_tensors_are_the_exact_paths_bit_for_bit(built, corpus, cfg):
    dec = native_decode.decoder(cfg)
    for path in corpus:
        exact = preprocess_image(path, cfg)
        assert np.array_equal(dec.file(path), exact), path.name
        assert np.array_equal(dec.bytes(path.read_bytes()), exact), path.name


@pytest.mark.slow  # about 10 s: both paths over 1,000 tensors
@needs_imagenet_sample
def test_every_real_imagenet_photo_of_the_sample_is_bit_identical(built):
    """The 500 real photos (every size, subsampling and quirk the sample has), at the
    preprocessing of torchvision's ImageNet models and at Lite0's (another mean, std)."""
    paths = sorted((IMAGENET_SAMPLE / "images").iterdir())
    assert len(paths) == 500
    for cfg in (PreprocessCfg(), PreprocessCfg(mean=(0.498,) * 3, std=(0.502,) * 3)):
        dec = native_decode.decoder(cfg)
        differ = [p.name for p in paths if not np.array_equal(dec.file(p),
                                                              preprocess_image(p, cfg))]
        assert not differ, f"{len(differ)} of 500 differ, e.g. {differ[:3]}"


def test_images_it_does_not_decode_get_the_exact_paths_verdict_and_words(built, tmp_path):
    dec = native_decode.decoder(SMALL)
    for path in _bad_images(tmp_path / "bad"):
        try:
            exact = preprocess_image(path, SMALL)
        except DataError as e:
            with pytest.raises(DataError) as got:
                dec.file(path)
            assert str(got.value) == str(e), path.name
        else:
            assert np.array_equal(dec.file(path), exact), path.name


def test_loader_native_batches_and_skips_are_the_exact_ones(built, corpus, tmp_path):
    from mnv3.data.datasets import Sample

    samples = [Sample(str(p), None) for p in corpus + _bad_images(tmp_path / "bad")]
    runs = {}
    for decode in ("exact", "native"):
        loader = iter_batches(samples, SMALL, batch_size=4, workers=2, decode=decode)
        runs[decode] = (np.concatenate([b.images for b in loader]), loader.skipped)
    assert runs["native"][0].tobytes() == runs["exact"][0].tobytes()
    assert runs["native"][1] == runs["exact"][1] and len(runs["exact"][1]) >= 4


def test_infer_native_writes_the_exact_result_files(built, tmp_path):
    demo = demo_dataset()[:7]
    results = {}
    for decode in ("exact", "native"):
        r = infer(FakeSession(fake_meta(batch=3, cfg=SMALL)), demo, tmp_path / decode,
                  progress=False, decode=decode)
        assert r.decode == decode
        results[decode] = r
    for name in ("eval_result_1.txt", "eval_result_5.txt", "results.jsonl"):
        assert (tmp_path / "native" / name).read_bytes() == (tmp_path / "exact" / name).read_bytes()
    assert json.loads((tmp_path / "native" / "infer.json").read_text())["decode"] == "native"
    with pytest.raises(UsageError, match="is for --engine python or ray; the cpp engine"):
        infer(str(tmp_path), demo, tmp_path / "x", engine="cpp", decode="native")


def test_cli_infer_and_serve_decode_native(built, tiny_model, tmp_path, capsys):
    """The CLI says the pixels are exact; the service answers what infer writes."""
    import http.client
    import urllib.parse

    from mnv3.cli.main import main

    src = tiny_model(dynamic=True, images=6)
    model = tmp_path / "model"
    mnv3.build(src.onnx, model, quant_mode="force_float32", shape_mutable=False, batch_size=2,
               preprocess=SMALL, calib_dir=src.images, options={"progress": False})
    assert main(["infer", "--model", str(model), "--image-dir", str(src.images), "--decode",
                 "native", "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "--decode native: the exact pixels" in capsys.readouterr().out
    mnv3.infer(model, load_dataset(src.images), tmp_path / "exact", progress=False)
    for name in ("eval_result_5.txt", "results.jsonl"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "exact" / name).read_bytes()
    expected = {x["file"]: x["probs"] for x in map(
        json.loads, (tmp_path / "exact" / "results.jsonl").read_text().splitlines())}
    s = mnv3.serve(model, port=0, decode="native")
    try:
        assert s.metadata["decode"] == "native"
        u = urllib.parse.urlsplit(s.url)
        for path in src.files:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
            conn.request("POST", "/predict", body=path.read_bytes(),
                         headers={"Content-Type": "image/png"})
            resp = conn.getresponse()
            assert resp.status == 200
            assert json.loads(resp.read())["probs"] == expected[path.name]
            conn.close()
    finally:
        s.stop()


def test_it_refuses_where_its_pixels_would_differ(built, monkeypatch):
    """The self-check compares the demo images with the exact path before any run: where this
    Pillow resized otherwise, the decoder is refused, never used with other pixels."""
    with pytest.raises(UsageError, match="use --decode exact"):
        native_decode.NativeDecoder(PreprocessCfg(interpolation="nearest"))
    monkeypatch.setattr(native_decode, "preprocess_image",
                        lambda path, cfg: np.zeros((3, cfg.crop, cfg.crop), np.float32))
    with pytest.raises(BackendUnavailable, match="pixels differ .* use --decode exact"):
        native_decode.NativeDecoder(SMALL)
    dec = native_decode.decoder(SMALL)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        dec.file(demo_dataset()[0].path, out=np.empty((3, 32, 31), np.float32))


def test_not_built_is_a_clear_error_before_any_image(monkeypatch, tmp_path):
    native_decode.decoder.cache_clear()  # as in a fresh process
    monkeypatch.setattr(native_decode, "find_library", lambda: None)
    with pytest.raises(BackendUnavailable, match="mnv3 build-cpp"):
        iter_batches(demo_dataset()[:2], SMALL, 2, decode="native")
    monkeypatch.undo()
    fake = tmp_path / "libmnv3-preprocess.so"
    shutil.copy(demo_dataset()[0].path, fake)  # not a library
    monkeypatch.setenv("MNV3_PREPROCESS_LIB", str(fake))
    with pytest.raises(BackendUnavailable, match="build-cpp --force"):
        native_decode.library()


def test_merge_accepts_exact_and_native_shards_alike():
    from mnv3.shards import _pixels

    assert _pixels({"decode": "native"}) == _pixels({"decode": "exact"}) == _pixels({})
    assert _pixels({"decode": "fast"}) != _pixels({"decode": "exact"})


def test_tune_chooses_the_fastest_path_that_keeps_its_bar():
    from mnv3.tune_decode import decide

    fast = {"agreement": 1.0, "speed_ratio": 1.08}
    assert decide({**fast, "native": {"agreement": 1.0, "speed_ratio": 1.3}}) == "native"
    assert decide({**fast, "native": {"agreement": 1.0, "speed_ratio": 1.05}}) == "fast"
    # one top-1 off would mean other pixels: never chosen, however fast
    assert decide({**fast, "native": {"agreement": 0.999, "speed_ratio": 2.0}}) == "fast"
    assert decide({"agreement": 0.9, "speed_ratio": 1.5,
                   "native": {"agreement": 1.0, "speed_ratio": 1.2}}) == "native"
    assert decide({"agreement": 1.0, "speed_ratio": 0.9,
                   "native": {"agreement": 1.0, "speed_ratio": 0.95}}) == "exact"
    assert decide({**fast, "native": {"checked": False, "why": "not checked: not built"}}) == "fast"


def test_a_tuned_native_model_decodes_exactly_where_the_library_is_missing(monkeypatch):
    from mnv3.data.fast_decode import tuned_decode

    meta = fake_meta(batch=2, cfg=SMALL)
    meta.extra["tuned"] = {"threads": 1, "streams": 1, "decode": "native"}
    native_decode.decoder.cache_clear()
    monkeypatch.setattr(native_decode, "find_library", lambda: None)
    assert tuned_decode(meta) == "exact"  # the same pixels, without the library
    said = []
    from mnv3.cli.infer_cmd import _tuned_decode

    assert _tuned_decode(meta, said.append) == "exact"
    assert "cannot run here" in said[0] and "mnv3 build-cpp" in said[0]
    native_decode.decoder.cache_clear()


def test_a_tuned_native_model_decodes_natively_where_built(built):
    from mnv3.cli.infer_cmd import _tuned_decode

    meta = fake_meta(batch=2, cfg=SMALL)
    check = {"checked": True, "images": 40, "agreement": 1.0, "images_of": "40 of 40 x",
             "speed_ratio": 1.02, "ratio_range": [1.0, 1.1], "pairs": 3, "exact_ips": 10.0,
             "fast_ips": 10.2, "native": {"checked": True, "images": 40, "agreement": 1.0,
                                          "ips": 13.0, "speed_ratio": 1.3,
                                          "ratio_range": [1.2, 1.4], "pairs": 3}}
    meta.extra["tuned"] = {"threads": 1, "streams": 1, "decode": "native", "decode_check": check}
    said = []
    assert _tuned_decode(meta, said.append) == "native"
    assert "using --decode native" in said[0] and "1.30x its speed" in said[0]


def test_a_service_replica_without_the_library_decodes_the_exact_way(monkeypatch):
    """A Ray Serve replica on another machine may lack the library: it serves the same pixels
    the exact way, and its /metadata says so."""
    from mnv3.serve_protocol import Classifier

    native_decode.decoder.cache_clear()
    monkeypatch.setattr(native_decode, "find_library", lambda: None)
    c = Classifier(FakeSession(fake_meta(batch=2, cfg=SMALL)), decode="native")
    assert c.decode == c.metadata["decode"] == "exact"
    path = demo_dataset()[0].path
    with open(path, "rb") as f:
        assert np.array_equal(c.preprocess(f.read()), preprocess_image(path, SMALL))
    native_decode.decoder.cache_clear()
