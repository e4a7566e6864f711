"""Runs that go wrong: signals during a build, two builds at once, read-only outputs, calibration
sets that are too small or undecodable. The output path always holds the previous model or
nothing, never a mixture; temporary debris never outlives the next build.

Signals go to a real ``mnv3 build`` process (``paused_build.py`` runs the CLI's ``main`` and
pauses it right after the compiled file is written, before meta.json: the worst moment), plus
one unpaused ``python -m mnv3.cli.main build`` interrupted as soon as its temp dir appears.
"""

from __future__ import annotations

import os
import re
import signal
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import mnv3
from .badfiles import IMAGE_CASES
from .helpers import HERE, assert_user_error, build_argv, leftovers, spawn, tree
from mnv3.meta import read_meta, sha256_file


def _valid_model(path: Path) -> None:
    """A whole model: meta.json readable and the compiled file's sha256 matches it."""
    meta = read_meta(path)
    assert sha256_file(path / meta.compiled_file) == meta.compiled_sha256
    with mnv3.load(path, threads=1) as s:
        assert s.predict(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 10)


def _start_paused(tiny, out: Path, tmp_path: Path, tag: str):
    ready, go = tmp_path / f"{tag}.ready", tmp_path / f"{tag}.go"
    proc = spawn([HERE / "paused_build.py", ready, go, *build_argv(tiny, out)])
    deadline = time.monotonic() + 90
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out_, err = proc.communicate()
            pytest.fail(f"paused build never reached the pause (rc {proc.returncode}): {err}")
        time.sleep(0.02)
    return proc, go


@pytest.fixture
def previous(tiny, tmp_path) -> Path:
    """An existing model at the output path (a copy of the session's build)."""
    out = tmp_path / "models" / "m"
    shutil.copytree(tiny["model"], out)
    return out


@pytest.mark.parametrize("with_previous", [True, False], ids=["over_previous", "first_build"])
def test_sigint_during_build(tiny, tmp_path, previous, with_previous):
    out = previous if with_previous else tmp_path / "models" / "fresh"
    before = tree(out)
    proc, _ = _start_paused(tiny, out, tmp_path, "int")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if "error" in ln] == [
        "mnv3: error: interrupted; nothing partial was left behind"]
    assert tree(out) == before  # the previous model, byte for byte, or still nothing
    assert leftovers(out.parent) == []


def test_sigkill_during_build_then_rebuild(cli, tiny, tmp_path, previous):
    """SIGKILL cannot be caught: the old model stays whole, the temp dir is hidden beside it,
    and the next build of that path removes it."""
    before = tree(previous)
    proc, _ = _start_paused(tiny, previous, tmp_path, "kill")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert tree(previous) == before
    _valid_model(previous)
    assert all(n.startswith(".m.tmp-") or n == ".m.lock"  # hidden debris only
               for n in leftovers(previous.parent))
    res = cli(*build_argv(tiny, previous))
    assert res.code == 0, res.err
    _valid_model(previous)
    assert leftovers(previous.parent) == []


def test_two_builds_same_output(cli, tiny, tmp_path, previous):
    """The second build refuses at once with a lock message; the first then wins cleanly."""
    proc, go = _start_paused(tiny, previous, tmp_path, "first")
    try:
        before = tree(previous)
        res = cli(*build_argv(tiny, previous))
        assert_user_error(res, 6, r"another build is writing \S+/m right now",
                          r"wait for it to finish or build to another --output")
        assert tree(previous) == before
    finally:
        go.write_text("go")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    _valid_model(previous)
    assert leftovers(previous.parent) == []


def test_sigint_real_cli_whenever_it_lands(tiny, tmp_path, previous):
    """Unpaused ``python -m mnv3.cli.main build``, SIGINT as soon as its temp dir appears: it
    either stops (130, old model intact) or had already finished (0, new model): both whole."""
    before = tree(previous)
    proc = spawn(["-m", "mnv3.cli.main", *build_argv(tiny, previous)])
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if any(n.startswith(".m.tmp-") for n in os.listdir(previous.parent)):
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.002)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and proc.returncode in (0, 130), err
    if proc.returncode == 130:
        assert tree(previous) == before
    _valid_model(previous)
    assert leftovers(previous.parent) == []


# ----------------------------------------------------------------------- read-only outputs
@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nobody may write in. chmod does not stop root, so as root use /sys (sysfs
    refuses new entries even to root); skip where neither works."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    probe = Path("/sys") / f"mnv3-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        yield Path("/sys")
        return
    probe.rmdir()
    pytest.skip("running as root and /sys is writable: no read-only place to test")


@pytest.fixture
def file_in_the_way(tmp_path) -> Path:
    """A regular file where the output's parent folder should be (works for root too)."""
    f = tmp_path / "results"
    f.write_text("a file, not a folder")
    return f


def test_build_output_under_a_file(cli, tiny, file_in_the_way):
    res = cli(*build_argv(tiny, file_in_the_way / "model"))
    assert_user_error(res, 2, r"cannot create \S+results for the model", r"choose a writable --output")
    assert file_in_the_way.read_text() == "a file, not a folder"


def test_build_output_read_only(cli, tiny, readonly_dir):
    out = readonly_dir / f"mnv3-rel-model-{os.getpid()}"
    res = cli(*build_argv(tiny, out))
    assert_user_error(res, 2, r"cannot (create|write beside) ", r"choose a writable --output")
    assert not out.exists()


def test_infer_output_under_a_file(cli, tiny, file_in_the_way):
    res = cli("infer", "--model", tiny["model"], "--image-dir", tiny["images"],
              "--output-dir", file_in_the_way / "out",
              "--no-progress")
    assert_user_error(res, 2, r"cannot create output folder \S+results/out",
                      r"choose a writable --output-dir")


def test_infer_output_read_only(cli, tiny, readonly_dir):
    out = readonly_dir / f"mnv3-rel-out-{os.getpid()}"
    res = cli("infer", "--model", tiny["model"], "--image-dir", tiny["images"],
              "--output-dir", out, "--no-progress")
    assert_user_error(res, 2, r"cannot create output folder", r"choose a writable --output-dir")
    assert not out.exists()


def test_export_output_under_a_file(cli, tmp_path, file_in_the_way):
    from ckpt_factory import write_checkpoint

    write_checkpoint(tmp_path / "w.pth", width_mult=0.35, num_classes=10)
    res = cli("export", "--weights", tmp_path / "w.pth", "--output", file_in_the_way / "m.onnx")
    assert_user_error(res, 2, r"cannot write \S*results/m.onnx", r"choose a writable --output")
    assert file_in_the_way.read_text() == "a file, not a folder"


def test_export_output_read_only(cli, tmp_path, readonly_dir):
    from ckpt_factory import write_checkpoint

    write_checkpoint(tmp_path / "w.pth", width_mult=0.35, num_classes=10)
    out = readonly_dir / f"mnv3-rel-{os.getpid()}.onnx"
    res = cli("export", "--weights", tmp_path / "w.pth", "--output", out)
    assert_user_error(res, 2, r"cannot write \S+\.onnx", r"choose a writable --output")
    assert not out.exists()



# ------------------------------------------------------------------------- failed infer runs
def _images_then_a_bad_one(tiny, tmp_path) -> Path:
    """The six good images and, sorted last, one that cannot be decoded: ``--strict`` stops
    after the earlier batches were predicted (and, with --save-images, saved)."""
    folder = tmp_path / "imgs"
    shutil.copytree(tiny["images"], folder)
    IMAGE_CASES["truncated.JPEG"][0](folder / "zz_truncated.JPEG")
    return folder


def _files(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` -> its bytes: to prove a folder is exactly as it was."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def _strict_infer(cli, tiny, images: Path, out: Path, *extra):
    res = cli("infer", "--model", tiny["model"], "--image-dir", images, "--output-dir", out,
              "--strict", "--no-progress", "--workers", "1", *extra)
    assert_user_error(res, 3, r"cannot decode image \S+zz_truncated\.JPEG", r"drop --strict")


@pytest.mark.parametrize("extra", [[], ["--save-images"]], ids=["results", "save_images"])
def test_failed_infer_leaves_no_new_output_folder(cli, tiny, tmp_path, extra):
    """A new --output-dir (and the parents made for it) is removed when the run fails, with the
    annotated copies already saved in it."""
    _strict_infer(cli, tiny, _images_then_a_bad_one(tiny, tmp_path),
                  tmp_path / "new" / "nested" / "out", *extra)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("earlier", ["empty", "earlier_results"])
def test_failed_infer_keeps_an_existing_output_folder(cli, tiny, tmp_path, earlier):
    """The user's folder stays, byte for byte: earlier result files are kept."""
    out = tmp_path / "out"
    out.mkdir()
    if earlier == "earlier_results":
        res = cli("infer", "--model", tiny["model"], "--image-dir", tiny["images"],
                  "--output-dir", out, "--no-progress")
        assert res.code == 0 and (out / "eval_result_1.txt").is_file(), res.err
    before = _files(out)
    _strict_infer(cli, tiny, _images_then_a_bad_one(tiny, tmp_path), out)
    assert out.is_dir() and _files(out) == before


def test_interrupted_infer_leaves_no_new_output_folder(cli, tiny, tmp_path, monkeypatch):
    """Ctrl-C in the middle of the predictions: exit 130 and no new output folder."""
    def interrupt(self, samples, logits):
        raise KeyboardInterrupt

    monkeypatch.setattr("mnv3.results.ResultWriter.add", interrupt)
    out = tmp_path / "out"
    res = cli("infer", "--model", tiny["model"], "--image-dir", tiny["images"], "--output-dir",
              out, "--no-progress")
    assert_user_error(res, 130, r"interrupted", r"nothing partial was left behind")
    assert not out.exists()

# ----------------------------------------------------------------------------- calibration
def test_calib_num_larger_than_available(cli, tiny, tmp_path):
    """Not an error: all images are used, and both the summary and meta.json say so."""
    out = tmp_path / "m"
    res = cli(*build_argv(tiny, out, "qint8_mixed_float32", "--calib-num", "1000"))
    assert res.code == 0, res.err
    assert re.search(r"note: --calib-num 1000 asked for more images than \S+ holds \(6\): all "
                     r"were used", res.out)
    meta = read_meta(out)
    assert meta.calibration["count"] == 6 and meta.calibration["requested"] == 1000
    _valid_model(out)


def test_calibration_folder_without_decodable_images(cli, tiny, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    for name, (maker, ok) in IMAGE_CASES.items():
        if not ok and name.endswith("JPEG"):
            maker(calib / name)
    out = tmp_path / "m"
    res = cli(*build_argv(tiny, out, "qint8_mixed_float32")[:-2], "--calib-dir", calib,
              "--output", out)
    assert_user_error(res, 3, r"cannot decode image \S+calib/\S+\.JPEG", r"replace|remove")
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("case", ["empty_folder", "missing_folder"])
def test_calibration_folder_without_images(cli, tiny, tmp_path, case):
    calib = tmp_path / "calib"
    if case == "empty_folder":
        calib.mkdir()
        (calib / "readme.txt").write_text("no images here")
    out = tmp_path / "m"
    res = cli(*build_argv(tiny, out, "qint8_mixed_float32")[:-2], "--calib-dir", calib,
              "--output", out)
    what = r"holds no images" if case == "empty_folder" else r"does not exist"
    assert_user_error(res, 2, rf"calibration folder \S+calib {what}", r"pass --calib-dir")
    assert not out.exists() and leftovers(tmp_path) == []

