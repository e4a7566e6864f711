"""Hostile folders and files (issue 19): no hang, no traceback, bounded messages.

Folders on real machines hold more than images: named pipes (FIFOs), sockets, links to devices,
broken links, files whose names are not UTF-8, label files with absurd lines. Every case runs
the real CLI in a subprocess with a timeout, so a regression that blocks on a FIFO fails the
test in bounded time instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .helpers import TESTS, CliResult, assert_user_error, build_argv, tree
from tiny_onnx import write_images

TIMEOUT = 60  # seconds; a run over a few 32x32 images takes ~5 s here, a hang takes forever


def run_cli(*argv, timeout: int = TIMEOUT) -> CliResult:
    """``python -m mnv3.cli.main ARGV`` in a subprocess; a hang fails the test, not the suite."""
    import mnv3

    src = Path(mnv3.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(TESTS)]),
               OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "mnv3.cli.main", *[os.fsdecode(a) if isinstance(a, bytes)
                                                       else str(a) for a in argv]]
    try:
        p = subprocess.run(args, capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"mnv3 {argv[0]} did not finish in {timeout} s (blocked on a file?)")
    return CliResult(p.returncode, p.stdout.decode("utf-8", "replace"),
                     p.stderr.decode("utf-8", "replace"))


@pytest.fixture
def short_dir():
    """A folder with a short path: a Unix socket's path must fit in 108 bytes."""
    d = Path(tempfile.mkdtemp(prefix="mnv3h", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _hostile_folder(folder: Path) -> dict[str, str]:
    """Two good images plus one entry of each hostile kind; returns name -> expected reason."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(write_images(folder / "tmpimgs", 2)):
        p.rename(folder / f"good_{i}{p.suffix}")
    (folder / "tmpimgs").rmdir()
    os.mkfifo(folder / "fifo.jpg")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(folder / "sock.png"))
    s.close()
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "broken.jpg").symlink_to(folder / "nowhere.jpg")
    (folder / "dir.JPEG").mkdir()
    return {"dir.JPEG": "is a folder, not a regular file",
            "fifo.jpg": "is a FIFO (named pipe), not a regular file",
            "sock.png": "is a socket, not a regular file",
            "zero.jpg": "is a character device, not a regular file",
            "broken.jpg": "does not exist (a broken symbolic link)"}


def test_fifo_socket_device_are_skipped_and_listed(tiny, short_dir):
    """infer over a folder holding a FIFO, a socket, a link to /dev/zero and a broken link:
    the good images are predicted; each of the others is listed in skipped.txt with why."""
    folder = short_dir / "imgs"
    expected = _hostile_folder(folder)
    out = short_dir / "out"
    t0 = time.monotonic()
    res = run_cli("infer", "--model", tiny["model"], "--image-dir", folder, "--output-dir", out,
                  "--no-progress", "--workers", "2")
    assert res.code == 0, res.err
    assert "Traceback" not in res.err
    assert time.monotonic() - t0 < TIMEOUT
    rows = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["file"] for r in rows) == ["good_0.png", "good_1.png"]
    skipped = dict(ln.split("\t", 1) for ln in (out / "skipped.txt").read_text().splitlines())
    assert sorted(skipped) == sorted(expected)
    for name, why in expected.items():
        assert why in skipped[name], skipped[name]


def test_fifo_with_strict_is_refused(tiny, short_dir):
    folder = short_dir / "imgs"
    folder.mkdir()
    write_images(folder, 2)
    os.mkfifo(folder / "fifo.jpg")
    out = short_dir / "out"
    res = run_cli("infer", "--model", tiny["model"], "--image-dir", folder, "--output-dir", out,
                  "--strict", "--no-progress")
    assert_user_error(res, 3, r"fifo\.jpg is a FIFO \(named pipe\), not a regular file",
                      r"replace or remove the file.*drop --strict")
    assert not out.exists(), tree(out)


def test_fifo_with_a_label_file_needs_no_label(tiny, short_dir):
    """A label file cannot be expected to list a FIFO: it is skipped, not 'has no label'."""
    folder = short_dir / "imgs"
    folder.mkdir()
    files = write_images(folder, 2)
    os.mkfifo(folder / "fifo.jpg")
    labels = short_dir / "labels.txt"
    labels.write_text("".join(f"{p.name} {i}\n" for i, p in enumerate(files)))
    out = short_dir / "out"
    res = run_cli("infer", "--model", tiny["model"], "--image-dir", folder, "--label-file",
                  labels, "--output-dir", out, "--no-progress")
    assert res.code == 0, res.err
    assert (out / "eval_result.txt").is_file()
    assert (out / "skipped.txt").read_text().startswith("fifo.jpg\t")
    assert len((out / "eval_labels.txt").read_text().splitlines()) == 2


def test_fifo_in_calibration_folder_is_skipped(tiny, short_dir):
    """build --calib-dir with a FIFO among the images: skipped and counted, the build ends."""
    calib = short_dir / "calib"
    shutil.copytree(tiny["images"], calib)
    os.mkfifo(calib / "fifo.jpg")
    out = short_dir / "model"
    argv = build_argv(tiny, out, "qint8_mixed_float32")
    argv[argv.index("--calib-dir") + 1] = calib
    res = run_cli(*argv)
    assert res.code == 0, res.err
    meta = json.loads((out / "meta.json").read_text())
    assert any("fifo.jpg: " in s and "FIFO" in s for s in meta["calibration"]["skipped"]), meta


def test_fifo_in_verify_images_is_skipped(short_dir):
    folder = short_dir / "imgs"
    folder.mkdir()
    write_images(folder, 2)
    os.mkfifo(folder / "fifo.jpg")
    res = run_cli("export", "--demo-weights", "--output", short_dir / "m.onnx",
                  "--verify-images", folder, timeout=180)
    assert res.code == 0, res.err
    assert "skipped 1 image(s)" in res.err and "FIFO" in res.err
    assert (short_dir / "m.onnx").is_file()


@pytest.mark.parametrize("what", ["label", "synsets"])
def test_fifo_as_label_or_synsets_file(tiny, short_dir, what):
    folder = short_dir / "imgs"
    folder.mkdir()
    write_images(folder, 2)
    os.mkfifo(short_dir / "fifo.txt")
    flag = {"label": "--label-file", "synsets": "--synsets"}[what]
    extra = ["--label-file", short_dir / "fifo.txt"] if what == "label" else [
        flag, short_dir / "fifo.txt"]
    res = run_cli("infer", "--model", tiny["model"], "--image-dir", folder, *extra,
                  "--output-dir", short_dir / "out", "--no-progress")
    assert_user_error(res, 3, rf"{what}s? file \S+fifo\.txt is a FIFO", r"pass the")


def test_fifo_as_checkpoint_meta_and_compiled_model(tiny, short_dir, model_copy):
    """A FIFO where a checkpoint, meta.json or the compiled model should be: refused at once."""
    os.mkfifo(short_dir / "w.pth")
    res = run_cli("export", "--weights", short_dir / "w.pth", "--output", short_dir / "m.onnx")
    assert_user_error(res, 4, r"checkpoint \S+w\.pth is a FIFO", r"pass the checkpoint")
    os.mkfifo(short_dir / "m.onnx")
    res = run_cli("build", "--onnx", short_dir / "m.onnx", "--quant-mode", "force_float32",
                  "--shape-mutable", "false", "--batch-size", "1", "--output", short_dir / "b")
    assert_user_error(res, 2, r"ONNX model \S+m\.onnx is a FIFO", r"pass the ONNX model")
    compiled = next(p for p in model_copy.iterdir() if p.name != "meta.json")
    compiled.unlink()
    os.mkfifo(compiled)
    res = run_cli("bench", "--model", model_copy, "--duration", "1")
    assert_user_error(res, 7, rf"{compiled.name} is a FIFO", r"rebuild the model")
    (model_copy / "meta.json").unlink()
    os.mkfifo(model_copy / "meta.json")
    res = run_cli("bench", "--model", model_copy, "--duration", "1")
    assert_user_error(res, 7, r"meta\.json \S+ is a FIFO", r"rebuild the model")


# ----------------------------------------------------------------- bounded messages (item 3)
HUGE = 50_000_000  # the 50 MB line
MAX_LINE = 1500  # an error line quoting user content stays this short whatever the content


def _labelled_folder(tmp_path, n=2):
    folder = tmp_path / "imgs"
    folder.mkdir()
    return folder, write_images(folder, n)


@pytest.mark.parametrize("case", ["one_field", "huge_label", "huge_name"])
def test_huge_label_line_is_quoted_bounded(cli, tiny, tmp_path, case):
    """A label file with a 50 MB line: one short error line, quoting a prefix and saying how
    much was left out, never the whole line."""
    folder, files = _labelled_folder(tmp_path)
    line = {"one_field": "x" * HUGE, "huge_label": f"{files[1].name} " + "7" * HUGE,
            "huge_name": "n" * HUGE + ".png 1"}[case]
    labels = tmp_path / "labels.txt"
    labels.write_text(f"{files[0].name} 0\n{line}\n")
    res = cli("infer", "--model", tiny["model"], "--image-dir", folder, "--label-file", labels,
              "--output-dir", tmp_path / "out", "--no-progress")
    what = {"one_field": r"labels\.txt:2: cannot parse 'x{120}'\.\.\. \(49,999,880 more characters\)",
            "huge_label": r"labels\.txt:2: label '7{120}'\.\.\. \(49,999,880 more characters\)",
            "huge_name": r"labels\.txt:2: label for n{120}\.\.\. \(49,999,884 more characters\)"}
    line = assert_user_error(res, 3, what[case], r"expected|remove the line|write a class index")
    assert len(res.err) < MAX_LINE, len(res.err)


@pytest.mark.parametrize("field,value,what", [
    ("backend", "b" * 1_000_000, r"built for backend 'b{120}'\.\.\. \(999,880 more characters\)"),
    ("compiled_file", "../" * 300_000, r"names compiled file '(\.\./){40}'\.\.\. \(899,880 more"),
    ("format_version", "9" * 1_000_000, r"format_version '9{119}\.\.\. \(999,882 more characters\)"),
])
def test_huge_meta_json_value_is_quoted_bounded(cli, model_copy, field, value, what):
    meta = json.loads((model_copy / "meta.json").read_text())
    meta[field] = value
    (model_copy / "meta.json").write_text(json.dumps(meta))
    res = cli("bench", "--model", model_copy, "--duration", "1")
    assert_user_error(res, 7, what, r"rebuild|upgrade")
    assert len(res.err) < MAX_LINE, len(res.err)


def test_huge_checkpoint_key_is_quoted_bounded(cli, tmp_path):
    import torch

    torch.save({"k" * 1_000_000: torch.zeros(1), "features.0.weight": torch.zeros(1)},
               tmp_path / "w.pth")
    res = cli("export", "--weights", tmp_path / "w.pth", "--output", tmp_path / "m.onnx")
    assert_user_error(res, 4, r"'k{120}'\.\.\. \(999,880 more characters\)", r"pass --arch")
    assert len(res.err) < 3 * MAX_LINE, len(res.err)
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------ names that are not UTF-8 (item 2)
LATIN1 = b"caf\xe9.png"  # Latin-1 "café.png": not valid UTF-8
ESCAPED = "caf\\xe9.png"  # how mnv3 writes it (mnv3.data.files.escape_name)


def _latin1_folder(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    files = write_images(folder, 2)
    os.rename(files[0], os.path.join(os.fsencode(folder), LATIN1))
    return folder


def _utf8_lines(path: Path) -> list[str]:
    return path.read_bytes().decode("utf-8").splitlines()  # strict: every file stays UTF-8


def test_non_utf8_name_is_predicted_and_written_escaped(tiny, tmp_path):
    """No labels: the image is predicted and named caf\\xe9.png in every result file (UTF-8)."""
    folder = _latin1_folder(tmp_path)
    out = tmp_path / "out"
    res = run_cli("infer", "--model", tiny["model"], "--image-dir", folder, "--output-dir", out,
                  "--no-progress", "--save-images")
    assert res.code == 0, res.err
    assert "Traceback" not in res.err
    assert [ln.split()[0] for ln in _utf8_lines(out / "eval_result_1.txt")] == [
        ESCAPED, "img_001.png"]
    assert {json.loads(ln)["file"] for ln in _utf8_lines(out / "results.jsonl")} == {
        ESCAPED, "img_001.png"}
    assert len(_utf8_lines(out / "eval_result_5.txt")) == 10
    assert (out / "images" / ESCAPED).is_file()  # the annotated copy, under the escaped name


def test_non_utf8_name_matches_its_escaped_name_in_a_label_file(tiny, tmp_path):
    folder = _latin1_folder(tmp_path)
    labels = tmp_path / "labels.txt"
    labels.write_text(f"{ESCAPED} 3\nimg_001.png 1\n", encoding="utf-8")
    out = tmp_path / "out"
    res = run_cli("infer", "--model", tiny["model"], "--image-dir", folder, "--label-file",
                  labels, "--output-dir", out, "--no-progress")
    assert res.code == 0, res.err
    assert _utf8_lines(out / "eval_labels.txt") == [f"{ESCAPED} 3", "img_001.png 1"]
    res = run_cli("eval", "--result-label-file", out / "eval_labels.txt", "--result-1-file",
                  out / "eval_result_1.txt", "--result-5-file", out / "eval_result_5.txt")
    assert res.code == 0, res.err


def test_non_utf8_name_missing_from_label_file_names_the_line_to_add(cli, tiny, tmp_path):
    folder = _latin1_folder(tmp_path)
    labels = tmp_path / "labels.txt"
    labels.write_text("img_001.png 1\n", encoding="utf-8")
    res = cli("infer", "--model", tiny["model"], "--image-dir", folder, "--label-file", labels,
              "--output-dir", tmp_path / "out", "--no-progress")
    assert_user_error(res, 3, r"image \S+/caf\\xe9\.png has no label",
                      r"add a line 'caf\\xe9\.png class_index'")


def test_non_utf8_undecodable_image_is_listed_escaped(tiny, tmp_path):
    folder = _latin1_folder(tmp_path)
    with open(os.path.join(os.fsencode(folder), b"bad\xff.png"), "wb") as f:
        f.write(b"not an image")
    out = tmp_path / "out"
    res = run_cli("infer", "--model", tiny["model"], "--image-dir", folder, "--output-dir", out,
                  "--no-progress")
    assert res.code == 0, res.err
    [line] = _utf8_lines(out / "skipped.txt")
    name, reason = line.split("\t")
    assert name == "bad\\xff.png" and "bad\\xff.png" in reason and "cannot decode" in reason
    assert "bad\\xff.png" in res.out + res.err


def test_non_utf8_names_in_calibration(tiny, tmp_path):
    """An int8 build calibrating on a folder with non-UTF-8 names (one of them corrupt)."""
    calib = tmp_path / "calib"
    shutil.copytree(tiny["images"], calib)
    first = sorted(calib.iterdir())[0]
    os.rename(first, os.path.join(os.fsencode(calib), LATIN1))
    with open(os.path.join(os.fsencode(calib), b"bad\xff.png"), "wb") as f:
        f.write(b"not an image")
    out = tmp_path / "model"
    argv = build_argv(tiny, out, "qint8_mixed_float32")
    argv[argv.index("--calib-dir") + 1] = calib
    res = run_cli(*argv)
    assert res.code == 0, res.err
    meta = json.loads((out / "meta.json").read_bytes().decode("utf-8"))
    assert [s.split(":")[0] for s in meta["calibration"]["skipped"]] == ["bad\\xff.png"]


def test_size_caps_say_what_they_are(cli, tiny, tmp_path):
    """An image or label file over its cap (sparse files: no disk used) is refused by its size,
    before any byte is read, and the message names the cap and what it is for."""
    from mnv3.data.files import MAX_BYTES

    folder, files = _labelled_folder(tmp_path)
    with open(folder / "huge.png", "wb") as f:
        f.truncate(MAX_BYTES["image"] + 1)
    out = tmp_path / "out"
    res = cli("infer", "--model", tiny["model"], "--image-dir", folder, "--output-dir", out,
              "--no-progress")
    assert res.code == 0, res.err
    [line] = (out / "skipped.txt").read_text().splitlines()
    assert line.startswith("huge.png\t") and "more than the 256.0 MiB an image may be" in line
    labels = tmp_path / "labels.txt"
    with open(labels, "wb") as f:
        f.truncate(MAX_BYTES["label file"] + 1)
    res = cli("infer", "--model", tiny["model"], "--image-dir", folder, "--label-file", labels,
              "--output-dir", tmp_path / "out2", "--no-progress")
    assert_user_error(res, 3, r"label file \S+ is 256\.0 MiB, more than the 256\.0 MiB a label "
                      r"file may be", r"pass the label file itself")


def test_eval_with_a_fifo_named_infer_json(short_dir):
    """eval reads the untrained note from infer.json beside the result files: a FIFO there is
    ignored, not waited on."""
    for name, text in (("eval_labels.txt", "a.png 1\n"), ("eval_result_1.txt", "a.png 1\n"),
                       ("eval_result_5.txt", "a.png 1\n" * 5)):
        (short_dir / name).write_text(text)
    os.mkfifo(short_dir / "infer.json")
    res = run_cli("eval", "--result-label-file", short_dir / "eval_labels.txt",
                  "--result-1-file", short_dir / "eval_result_1.txt",
                  "--result-5-file", short_dir / "eval_result_5.txt")
    assert res.code == 0, res.err
    assert "top1 accuracy: 1.0" in res.out + res.err
