"""Bad and odd images through ``mnv3 infer`` (and the one preprocessing function).

Policy: an image Pillow can decode is predicted whatever its container or mode (the content is
sniffed, not the extension; CMYK, 16-bit, palette+alpha are converted to RGB); an image it cannot
decode is skipped and listed in skipped.txt, or with --strict stops the run with exit 3 and no
output folder left behind. Images over Pillow's decompression-bomb limit (MAX_IMAGE_PIXELS,
89.5 M pixels) are refused the same way without being decoded: ImageNet photos are under 1 M
pixels, and a 20000x20000 PNG of 50 KB would otherwise allocate 1.2 GB as RGB.
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from PIL import Image, ImageOps

from .badfiles import IMAGE_CASES, make_bomb_png, make_exif_rotated
from .helpers import CFG, assert_user_error, tree
from mnv3.data.preprocess import load_image, preprocess_image
from mnv3.errors import DataError


def _one_image_dir(tmp_path, name):
    folder = tmp_path / "imgs"
    folder.mkdir()
    maker, _ = IMAGE_CASES[name]
    maker(folder / name)
    return folder


@pytest.mark.parametrize("name", sorted(IMAGE_CASES))
def test_each_image_strict(cli, tiny, tmp_path, name):
    """--strict: a decodable image is predicted; an undecodable one stops with exit 3, naming
    the file and the remedy, and the output folder it would have made is not left behind."""
    folder = _one_image_dir(tmp_path, name)
    out = tmp_path / "out"
    res = cli("infer", "--model", tiny["model"], "--image-dir", folder, "--output-dir", out,
              "--strict", "--no-progress", "--workers", "1")
    if IMAGE_CASES[name][1]:
        assert res.code == 0, res.err
        rows = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
        assert [r["file"] for r in rows] == [name]
        assert np.isfinite(rows[0]["probs"]).all() and 0 < sum(rows[0]["probs"]) <= 1.0001
    else:
        assert_user_error(res, 3, rf"cannot decode image \S*{re.escape(name)}",
                          r"(remove|replace|drop --strict)")
        assert not out.exists(), tree(out)


def test_all_bad_images_skipped_not_fatal(cli, tiny, tmp_path):
    """Without --strict, undecodable images are skipped and listed; the others are predicted."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, (maker, _) in IMAGE_CASES.items():
        maker(folder / name)
    out = tmp_path / "out"
    res = cli("infer", "--model", tiny["model"], "--image-dir", folder, "--output-dir", out,
              "--no-progress")
    assert res.code == 0 and "Traceback" not in res.err, res.err
    skipped = dict(ln.split("\t", 1) for ln in (out / "skipped.txt").read_text().splitlines())
    bad = {n for n, (_, ok) in IMAGE_CASES.items() if not ok}
    assert set(skipped) == bad
    assert all("\n" not in r and r for r in skipped.values())
    predicted = [json.loads(ln)["file"] for ln in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(predicted) == sorted(set(IMAGE_CASES) - bad)


def test_bomb_refused_fast_without_decoding(tmp_path):
    """The 20000x20000 PNG is refused from its header: fast, no 400 M pixel allocation."""
    bomb = make_bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"bomb.png.*pixels"):
        load_image(bomb)
    assert time.perf_counter() - t0 < 2.0


def test_exif_orientation_is_not_applied(tmp_path):
    """Documented policy: like the reference ImageNet pipeline (PIL open + convert), EXIF
    orientation is ignored: the stored pixels are used as they are."""
    path = make_exif_rotated(tmp_path / "rot.JPEG")
    with Image.open(path) as im:
        assert im.getexif().get(0x0112) == 6
        stored = im.convert("RGB")
        shown = ImageOps.exif_transpose(im).convert("RGB")
    x = preprocess_image(path, CFG)
    np.testing.assert_array_equal(x, preprocess_image(stored, CFG))
    assert not np.array_equal(x, preprocess_image(shown, CFG))


def test_no_images_at_all(cli, tiny, tmp_path):
    """A folder with no image files: exit 3, says which extensions were looked for."""
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    res = cli("infer", "--model", tiny["model"], "--image-dir", folder, "--output-dir", out)
    assert_user_error(res, 3, r"no images found in .*empty", r"\.jpe?g")
    assert not out.exists()


def test_every_image_undecodable_is_an_error(cli, tiny, tmp_path):
    """Skipping is for a few bad files; if none can be decoded, exit 3 rather than a
    'successful' run with no predictions, and leave no output folder behind."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, (maker, ok) in IMAGE_CASES.items():
        if not ok:
            maker(folder / name)
    out = tmp_path / "out"
    res = cli("infer", "--model", tiny["model"], "--image-dir", folder, "--output-dir", out,
              "--no-progress")
    assert_user_error(res, 3, r"none of the \d+ images could be decoded", r"(check|replace|remove)")
    assert not out.exists(), tree(out)


# ----------------------------------------------------------- issue 13: calibration images
@pytest.mark.parametrize("mode", ["qint8_mixed_float32", "force_float32"])
def test_calibration_skips_undecodable_images_like_infer(cli, tiny, tmp_path, mode):
    """One broken file in --calib-dir stopped the build, while infer skips it: now build skips
    and counts it (int8: in meta.json's calibration, a note and the summary) and --strict
    makes it an error that leaves nothing behind."""
    from .helpers import build_argv

    folder = tmp_path / "calib"
    folder.mkdir()
    for p in tiny["images"].iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    bad = [n for n, (_, ok) in IMAGE_CASES.items() if not ok][:2]
    for name in bad:
        IMAGE_CASES[name][0](folder / name)
    argv = build_argv(tiny, tmp_path / "m", mode)
    argv[argv.index(tiny["images"])] = folder
    res = cli(*argv)
    assert res.code == 0, res.err
    warned = [ln for ln in res.err.splitlines() if ln.startswith("mnv3 build: warning: skipped 2")]
    assert len(warned) == 1, res.err
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    if mode.startswith("qint8"):
        c = meta["calibration"]
        assert c["count"] == 6 and sorted(s.split(":")[0] for s in c["skipped"]) == sorted(bad)
        assert "skipped 2 (could not decode)" in res.out
        assert any("2 calibration image(s) could not be decoded" in n for n in meta["notes"])
    else:
        assert meta["fidelity"]["count"] == 6  # the fidelity check ran on the good ones
    res = cli(*argv[:-2], "--output", tmp_path / "strict", "--strict")
    assert_user_error(res, 3, r"cannot decode image \S+", r"drop --strict")
    assert not (tmp_path / "strict").exists() and ".strict" not in " ".join(
        p.name for p in tmp_path.iterdir())
