"""Fixtures of the reliability suite: a tiny built model, and a CLI runner that checks errors.

Every case goes through ``cli(...)`` (the real ``mnv3`` entry point, in-process) and
``assert_user_error``: the exit code of the error class, exactly one ``mnv3 <cmd>: error:``
line, no traceback, a message naming what was wrong and saying what to do.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mnv3.meta import PreprocessCfg

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
for p in (str(TESTS), str(HERE)):  # tiny_onnx, ckpt_factory, badfiles
    if p not in sys.path:
        sys.path.insert(0, p)

from tiny_onnx import SIZE, export_tiny, write_images  # noqa: E402

CFG = PreprocessCfg(resize=36, crop=SIZE)
PRE_FLAGS = ["--resize", "36", "--crop", str(SIZE)]


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if re.match(r"^mnv3( \w+)?: error:", ln)]


@pytest.fixture
def cli(capsys):
    """``cli("build", "--onnx", ...)`` -> CliResult; argparse's SystemExit becomes a code."""
    from mnv3.cli.main import main

    def run(*argv) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse usage errors
            code = e.code if isinstance(e.code, int) else 2
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run


def assert_user_error(res: CliResult, code: int, what: str, do: str) -> str:
    """The error contract: exit ``code``; one error line matching ``what`` (the problem) and
    ``do`` (the remedy), both regexes, case-insensitive; never a traceback. Returns the line."""
    assert "Traceback" not in res.err, res.err
    assert res.code == code, f"exit {res.code}, expected {code}; stderr: {res.err}"
    lines = res.error_lines
    assert len(lines) == 1, f"expected one error line, got: {res.err!r}"
    line = lines[0]
    assert re.search(what, line, re.I), f"message does not say what was wrong ({what}): {line}"
    assert re.search(do, line, re.I), f"message does not say what to do ({do}): {line}"
    return line


def tree(path: Path) -> dict[str, int]:
    """Every file under ``path`` (hidden ones too) -> size: to prove nothing was added/changed."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))}


def leftovers(parent: Path) -> list[str]:
    """Temporary build/write debris beside outputs (the lock file is kept on purpose)."""
    return sorted(p.name for p in parent.iterdir()
                  if ".tmp" in p.name or p.name.endswith(".old") or ".old-" in p.name)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    """A tiny ONNX classifier (32x32, 10 classes), a few calibration images, a built model."""
    import mnv3

    d = tmp_path_factory.mktemp("rel_tiny")
    export_tiny(d / "tiny.onnx", dynamic=True)
    write_images(d / "images", 6)
    mnv3.build(d / "tiny.onnx", d / "model", quant_mode="force_float32", shape_mutable=False,
               batch_size=2, preprocess=CFG, calib_dir=d / "images",
               options={"progress": False})
    return {"onnx": d / "tiny.onnx", "images": d / "images", "model": d / "model"}


@pytest.fixture
def model_copy(tiny, tmp_path) -> Path:
    """A private copy of the built model, free to damage."""
    dst = tmp_path / "model"
    shutil.copytree(tiny["model"], dst)
    return dst


def build_argv(tiny, output, mode="force_float32", *extra) -> list:
    return ["build", "--onnx", tiny["onnx"], "--quant-mode", mode, "--shape-mutable", "false",
            "--batch-size", "2", *PRE_FLAGS, "--calib-dir", tiny["images"], "--no-progress",
            "--output", output, *extra]


def subprocess_env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(TESTS)]),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def spawn(args: list, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *map(str, args)], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
