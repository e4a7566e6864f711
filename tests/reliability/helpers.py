"""Helpers of the reliability suite: run the CLI and check the error contract; file trees.

``assert_user_error`` is the contract every case checks: the exit code of the error class,
exactly one ``mnv3 <cmd>: error:`` line, no traceback, a message naming what was wrong and
saying what to do.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mnv3.meta import PreprocessCfg
from tiny_onnx import SIZE

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
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


def assert_user_error(res: CliResult, code: int, what: str, do: str) -> str:
    """The error contract: exit ``code``; one error line matching ``what`` (the problem) and
    ``do`` (the remedy), both regexes, case-insensitive; never a traceback. Returns the line."""
    assert "Traceback" not in res.err, res.err
    assert res.code == code, f"exit {res.code}, expected {code}; stderr: {res.err}"
    lines = res.error_lines
    assert len(lines) == 1, f"expected one error line, got: {res.err!r}"
    line = lines[0]
    assert res.err.rstrip("\n").endswith(line), f"the message runs over several lines: {res.err!r}"
    assert re.search(what, line, re.I), f"message does not say what was wrong ({what}): {line}"
    assert re.search(do, line, re.I), f"message does not say what to do ({do}): {line}"
    if os.environ.get("MNV3_RELIABILITY_LOG"):  # collect every message, to read them as a user
        with open(os.environ["MNV3_RELIABILITY_LOG"], "a", encoding="utf-8") as f:
            f.write(f"[exit {res.code}] {line}\n")
    return line


def tree(path: Path) -> dict[str, int]:
    """Every file under ``path`` (hidden ones too) -> size: to prove nothing was added/changed."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))}


def leftovers(parent: Path) -> list[str]:
    """Temporary build/write debris beside outputs, lock files included (issue 13)."""
    return sorted(p.name for p in parent.iterdir()
                  if ".tmp" in p.name or p.name.endswith((".old", ".lock")) or ".old-" in p.name)


def build_argv(tiny, output, mode="force_float32", *extra) -> list:
    return ["build", "--onnx", tiny["onnx"], "--quant-mode", mode, "--shape-mutable", "false",
            "--batch-size", "2", *PRE_FLAGS, "--calib-dir", tiny["images"], "--no-progress",
            "--output", output, *extra]


def spawn(args: list) -> subprocess.Popen:
    """A Python subprocess (for signals) that finds mnv3 and these test modules."""
    import mnv3

    src = Path(mnv3.__file__).resolve().parents[1]  # the same mnv3 this test process uses
    paths = [str(src), str(HERE), str(TESTS), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # SIGINT as a terminal's Ctrl-C, even when the suite runs as a background job (a shell
    # starts those with SIGINT ignored, and a child would keep it ignored)
    return subprocess.Popen([sys.executable, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
