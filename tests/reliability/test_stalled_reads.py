"""No read can block forever (issue 19): a file whose read never returns, as on a network mount
(NFS, SMB, FUSE) whose server stopped answering.

Python cannot interrupt a read blocked in the kernel, so ``mnv3.data.files.read_bytes`` reads on
a reader thread with a deadline (``mnv3.data.deadline``, ``MNV3_READ_TIMEOUT``). These tests
inject a read that blocks for ever on an Event that is never set (the reader thread's function,
``mnv3.data.files._read_file``) with a deadline of a fraction of a second: the image is skipped
and listed with a reason that names the stall, ``--strict`` is a clear error, and the process
exits normally although the stuck thread never returns.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .helpers import TESTS, assert_user_error
from tiny_onnx import write_images

STALL = r"did not finish in 0\.3 s: its file system stopped answering"
REMEDY = r"check the mount.*MNV3_READ_TIMEOUT"


@pytest.fixture
def stall(monkeypatch):
    """Reads of files named ``stuck*`` block until the test ends (the Event is set only then,
    to free the thread); every other read is the real one. Deadline: 0.3 s."""
    from mnv3.data import files

    never, real = threading.Event(), files._read_file

    def read(path, *args):
        if Path(path).name.startswith("stuck"):
            never.wait()
            raise OSError("released at the end of the test")
        return real(path, *args)

    monkeypatch.setattr(files, "_read_file", read)
    monkeypatch.setenv("MNV3_READ_TIMEOUT", "0.3")
    yield
    never.set()


def _folder(tmp_path: Path, stuck: int = 1) -> Path:
    folder = tmp_path / "imgs"
    write_images(folder, 3)
    for i in range(stuck):
        write_images(tmp_path / "tmp", 1)[0].rename(folder / f"stuck_{i}.png")
    return folder


def test_stalled_image_is_skipped_and_listed(cli, tiny, tmp_path, stall):
    folder = _folder(tmp_path, stuck=2)
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = cli("infer", "--model", tiny["model"], "--image-dir", folder, "--output-dir", out,
              "--no-progress", "--workers", "2")
    assert res.code == 0, res.err
    assert time.monotonic() - t0 < 30
    skipped = dict(ln.split("\t", 1) for ln in (out / "skipped.txt").read_text().splitlines())
    assert sorted(skipped) == ["stuck_0.png", "stuck_1.png"]
    for reason in skipped.values():
        assert "reading image" in reason and "stuck_" in reason
        assert __import__("re").search(f"{STALL}.*{REMEDY}", reason), reason
    assert len((out / "eval_result_1.txt").read_text().splitlines()) == 3
    assert "2 skipped" in res.out


def test_stalled_image_with_strict_is_an_error(cli, tiny, tmp_path, stall):
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    res = cli("infer", "--model", tiny["model"], "--image-dir", folder, "--output-dir", out,
              "--no-progress", "--strict")
    assert_user_error(res, 3, rf"reading image \S+stuck_0\.png {STALL}",
                      rf"{REMEDY}.*drop --strict")
    assert not out.exists()


def test_stalled_label_file_is_an_error(cli, tiny, tmp_path, stall):
    folder = _folder(tmp_path, stuck=0)
    labels = tmp_path / "stuck_labels.txt"
    labels.write_text("img_000.png 1\n")
    res = cli("infer", "--model", tiny["model"], "--image-dir", folder, "--label-file", labels,
              "--output-dir", tmp_path / "out", "--no-progress")
    assert_user_error(res, 3, rf"reading label file \S+stuck_labels\.txt {STALL}", REMEDY)


def test_stalled_calibration_image_is_skipped(tiny, tmp_path, stall):
    from mnv3.calibration import decodable
    from .helpers import CFG

    folder = _folder(tmp_path)
    files = sorted(folder.iterdir())
    good, bad = decodable(files, CFG)
    assert [p.name for p in good] == ["img_000.png", "img_001.png", "img_002.png"]
    assert [p.name for p, _ in bad] == ["stuck_0.png"]
    assert "stopped answering" in bad[0][1]


# The process must end although a reader thread is stuck for good: nothing joins it.
EXITS = r"""
import sys, threading
from pathlib import Path
from mnv3.data import files
from mnv3.cli.main import main

real = files._read_file
def read(path, *args):
    if Path(path).name.startswith("stuck"):
        threading.Event().wait()  # never returns
    return real(path, *args)
files._read_file = read
code = main(sys.argv[1:])
stuck = [t.name for t in threading.enumerate() if t.name.startswith("mnv3-read")]
print("reader threads:", len(stuck), file=sys.stderr)
sys.exit(code)
"""


def test_process_exits_with_a_read_stuck_for_ever(tiny, tmp_path):
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    src = Path(__import__("mnv3").__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(TESTS)]),
               OMP_NUM_THREADS="1", MNV3_READ_TIMEOUT="0.3")
    try:
        p = subprocess.run([sys.executable, "-c", EXITS, "infer", "--model", str(tiny["model"]),
                            "--image-dir", str(folder), "--output-dir", str(out),
                            "--no-progress"], capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: something waits for the stuck read")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert (out / "skipped.txt").read_text().startswith("stuck_0.png\t")


def test_reader_threads_are_reused_and_a_stuck_one_is_not(monkeypatch):
    from mnv3.data import deadline

    monkeypatch.setattr(deadline, "_pool", None)
    assert [deadline.call(len, "abc", timeout=5) for _ in range(20)] == [3] * 20
    assert deadline._readers().started == 1  # one thread, reused
    never = threading.Event()
    with pytest.raises(deadline.ReadStalled, match="did not finish in 0.1 s"):
        deadline.call(never.wait, timeout=0.1)
    assert deadline.call(len, "ab", timeout=5) == 2  # served by a new thread
    assert deadline._readers().started == 2
    never.set()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_reads_work_in_a_forked_child():
    """A child forked while the parent has idle reader threads has none of them: it must start
    its own rather than wait for a reader that does not exist (each read would time out)."""
    from mnv3.data import deadline

    assert deadline.call(len, "x", timeout=5) == 1  # the parent now has an idle reader
    pid = os.fork()
    if pid == 0:  # the child: report by exit code only
        try:
            ok = deadline.call(len, "ab", timeout=5) == 2
        except BaseException:  # noqa: BLE001
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_errors_of_the_read_reach_the_caller():
    from mnv3.data import deadline

    with pytest.raises(ZeroDivisionError):
        deadline.call(lambda: 1 / 0, timeout=5)


@pytest.mark.parametrize("value,expected", [("", 60.0), ("2.5", 2.5), ("0", None)])
def test_read_timeout_setting(monkeypatch, value, expected):
    from mnv3.data import deadline

    monkeypatch.setenv("MNV3_READ_TIMEOUT", value)
    assert deadline.read_timeout() == expected


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
def test_bad_read_timeout_is_a_usage_error(cli, tiny, tmp_path, monkeypatch, value):
    monkeypatch.setenv("MNV3_READ_TIMEOUT", value)
    folder = _folder(tmp_path, stuck=0)
    res = cli("infer", "--model", tiny["model"], "--image-dir", folder, "--output-dir",
              tmp_path / "out", "--no-progress")
    assert_user_error(res, 2, r"MNV3_READ_TIMEOUT=\S+ is not a number of seconds",
                      r"set it to e\.g\. 60")


def test_no_deadline_reads_on_the_callers_thread(monkeypatch):
    from mnv3.data import deadline

    monkeypatch.setenv("MNV3_READ_TIMEOUT", "0")
    assert deadline.call(threading.current_thread) is threading.current_thread()


# ------------------------------------------------- a real stalled file (FUSE over /dev/fuse)
@pytest.fixture
def stalled_mount(tmp_path):
    """(mount point, abort): a mount whose every file stats as regular but whose reads never
    return (``stalled_fs.py``); ``abort()`` kills its server, which fails the blocked reads.
    Skipped where /dev/fuse or mount(2) is not available to us."""
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("needs /dev/fuse (and root, to mount)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "stalled_fs.py"),
                               str(mnt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    line = server.stdout.readline()
    if line.strip() != "ready":
        server.wait(10)
        pytest.skip(f"cannot mount a FUSE file system here: {server.stderr.read().strip()}")

    def abort():
        server.kill()  # closes /dev/fuse: the connection aborts, blocked reads fail
        server.wait(10)

    try:
        yield mnt, abort
    finally:
        abort()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _state(pid: int) -> str:
    """A process's state letter (Z: its main thread has exited, another is still held)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def test_real_stalled_file_is_skipped_and_the_run_ends(tiny, tmp_path, stalled_mount):
    """An image folder holding a link to a file on a mount that stopped answering: infer lists
    it in skipped.txt with the stall, predicts the rest, writes every result file and its main
    thread exits with the reader thread still blocked in the kernel.

    What the kernel then does is the file system's: an NFS or SMB wait can be killed, so the
    process is gone at once; a FUSE request its server has already taken is waited for without
    interruption, so the process stays a zombie until the mount is aborted (here: its server
    killed), and then exits 0. Python waits for nothing either way."""
    mnt, abort = stalled_mount
    assert (mnt / "x.png").stat().st_size == 4096  # stat answers; a read would not
    folder = _folder(tmp_path, stuck=0)
    (folder / "stuck.png").symlink_to(mnt / "photo.png")
    out, log = tmp_path / "out", tmp_path / "log.txt"
    src = Path(__import__("mnv3").__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(TESTS)]),
               OMP_NUM_THREADS="1", MNV3_READ_TIMEOUT="1")
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-m", "mnv3.cli.main", "infer", "--model",
                              str(tiny["model"]), "--image-dir", str(folder), "--output-dir",
                              str(out), "--no-progress"], stdout=f, stderr=f, env=env)
    try:
        limit = time.monotonic() + 60
        while p.poll() is None and _state(p.pid) != "Z" and time.monotonic() < limit:
            time.sleep(0.1)
        assert p.returncode is not None or _state(p.pid) == "Z", "infer's main thread is stuck"
        name, reason = (out / "skipped.txt").read_text().splitlines()[0].split("\t")
        assert name == "stuck.png"
        assert "did not finish in 1 s: its file system stopped answering" in reason, reason
        assert len((out / "eval_result_1.txt").read_text().splitlines()) == 3
        abort()
        assert p.wait(10) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if p.poll() is None:
            p.kill()


def test_stalled_checkpoint_is_an_error_not_a_hang(tmp_path, stall):
    """A checkpoint is read once, whole, with the deadline; torch parses those bytes."""
    from mnv3.errors import CheckpointError
    from mnv3.models.checkpoints import load_checkpoint

    ckpt = tmp_path / "stuck.pth"
    ckpt.write_bytes(b"PK\x03\x04 never read")
    with pytest.raises(CheckpointError, match=rf"reading checkpoint \S+stuck\.pth {STALL}"):
        load_checkpoint(ckpt)


def test_stalled_folder_listing_is_an_error_not_a_hang(tmp_path, monkeypatch):
    """Listing a folder on a stalled mount blocks in the kernel too: each folder of the walk is
    listed with the deadline."""
    from mnv3.data import datasets
    from mnv3.errors import DataError

    never, real = threading.Event(), datasets._scan_folder

    def scan(folder):
        if folder.name.startswith("stuck"):
            never.wait()
        return real(folder)

    monkeypatch.setattr(datasets, "_scan_folder", scan)
    monkeypatch.setenv("MNV3_READ_TIMEOUT", "0.3")
    root = tmp_path / "imgs"
    write_images(root / "ok", 2)
    write_images(root / "stuck_class", 2)
    try:
        with pytest.raises(DataError, match=rf"listing folder \S+stuck_class {STALL}.*{REMEDY}"):
            datasets.walk_images(root)
    finally:
        never.set()
    assert [str(p) for p in datasets.walk_images(root)] == [
        "ok/img_000.png", "ok/img_001.png", "stuck_class/img_000.png",
        "stuck_class/img_001.png"]


def test_stalled_hash_of_a_model_file_is_an_error_not_a_hang(tmp_path, monkeypatch):
    """sha256 of a compiled model (checked at every load) opens and reads with the deadline."""
    from mnv3 import meta
    from mnv3.errors import ModelError

    never, real = threading.Event(), meta.open_regular

    def open_regular(path, *args):
        if Path(path).name.startswith("stuck"):
            never.wait()
        return real(path, *args)

    monkeypatch.setattr(meta, "open_regular", open_regular)
    monkeypatch.setenv("MNV3_READ_TIMEOUT", "0.3")
    (tmp_path / "stuck.onnx").write_bytes(b"x" * 10)
    (tmp_path / "fine.onnx").write_bytes(b"x" * 10)
    try:
        with pytest.raises(ModelError, match=rf"reading compiled model \S+stuck\.onnx {STALL}"):
            meta.sha256_file(tmp_path / "stuck.onnx")
    finally:
        never.set()
    assert meta.sha256_file(tmp_path / "fine.onnx") == __import__("hashlib").sha256(
        b"x" * 10).hexdigest()
