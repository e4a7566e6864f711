"""Issue 13, items 8 and 9: with ``--json -`` stdout holds the JSON and nothing else.

Each command runs as a real subprocess (``python -m mnv3.cli.main``), as a user's pipe would:
libraries that print on stdout (NNCF's progress bars and its logger) are caught only this way.
The human lines still appear, on stderr.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_onnx import SIZE

PRE = ["--resize", "36", "--crop", str(SIZE)]
HAVE_OPENVINO = all(importlib.util.find_spec(m) for m in ("openvino", "nncf"))


def mnv3(*argv, cwd: Path) -> subprocess.CompletedProcess:
    import mnv3 as pkg

    src = str(Path(pkg.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (src, os.environ.get("PYTHONPATH", "")) if p), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "mnv3.cli.main", *map(str, argv)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def json_only(res: subprocess.CompletedProcess) -> dict:
    assert res.returncode == 0, res.stderr
    try:
        return json.loads(res.stdout)
    except json.JSONDecodeError as e:
        pytest.fail(f"stdout is not JSON alone ({e}):\n{res.stdout[:2000]}")


@pytest.fixture(scope="module")
def work(tiny_model, tmp_path_factory) -> Path:
    """A folder of its own (the commands write into it) holding tiny.onnx and images/."""
    tiny = tiny_model(dynamic=True, images=6)
    d = tmp_path_factory.mktemp("cli_json")
    shutil.copy(tiny.onnx, d / "tiny.onnx")
    shutil.copytree(tiny.images, d / "images")
    return d


def test_export_json_stdout_is_json_only(tmp_path):
    import torch

    from mnv3.models import create_model

    torch.save(create_model("mobilenetv3-small", width_mult=0.35, seed=0).state_dict(),
               tmp_path / "w.pth")
    res = mnv3("export", "--weights", "w.pth", "--image-size", "64", "--output", "m.onnx",
               "--json", "-", cwd=tmp_path)
    assert json_only(res)["output"] == "m.onnx"
    assert "parity" in res.stderr  # the human summary went to stderr


def test_build_infer_eval_bench_json_stdout_is_json_only(work):
    res = mnv3("build", "--onnx", "tiny.onnx", "--quant-mode", "qint8_mixed_float32",
               "--shape-mutable", "false", "--batch-size", "2", *PRE, "--calib-dir", "images",
               "--output", "m", "--json", "-", cwd=work)
    assert json_only(res)["quant_mode"] == "qint8_mixed_float32"
    assert "built m" in res.stderr
    res = mnv3("infer", "--model", "m", "--image-dir", "images", "--output-dir", "out",
               "--json", "-", cwd=work)
    assert json_only(res)["processed"] == 6 and "results in out" in res.stderr
    (work / "labels.txt").write_text("".join(f"img_{i:03d}.png {i % 3}\n" for i in range(6)))
    res = mnv3("infer", "--model", "m", "--image-dir", "images", "--label-file", "labels.txt",
               "--output-dir", "out", "--json", "-", cwd=work)
    assert json_only(res)["labeled"] == 6
    res = mnv3("eval", "--result-label-file", "out/eval_labels.txt", "--result-1-file",
               "out/eval_result_1.txt", "--result-5-file", "out/eval_result_5.txt",
               "--json", "-", cwd=work)
    assert json_only(res)["total"] == 6 and "top1 accuracy" in res.stderr
    res = mnv3("bench", "--model", "m", "--iterations", "5", "--warmup", "1", "--json", "-",
               cwd=work)
    assert json_only(res)["iterations"] == 5 and "throughput" in res.stderr


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino/nncf not installed (mnv3[openvino])")
@pytest.mark.parametrize("progress", [True, False], ids=["progress", "no_progress"])
def test_openvino_int8_build_keeps_nncf_off_stdout(work, progress):
    """NNCF draws progress bars on stdout and logs through a stdout handler."""
    res = mnv3("build", "--onnx", "tiny.onnx", "--backend", "openvino", "--quant-mode",
               "qint8_mixed_float32", "--shape-mutable", "false", "--batch-size", "1", *PRE,
               "--calib-dir", "images", "--output", f"ov_{progress}", "--json", "-",
               *([] if progress else ["--no-progress"]), cwd=work)
    assert json_only(res)["backend"] == "openvino"
    if not progress:  # --no-progress: no bar at all, anywhere
        assert "Statistics collection" not in res.stderr and "█" not in res.stderr


@pytest.mark.slow
def test_run_json_stdout_is_json_only(tmp_path):
    res = mnv3("run", "--width-mult", "0.35", "--image-num", "4", "--quant-modes",
               "force_float32", "--batch-sizes", "2", "--threads", "1", "--bench-duration",
               "0.05", "--bench-rounds", "2", "--bench-warmup", "1", "--out", "o", "--json", "-",
               cwd=tmp_path)
    rep = json_only(res)
    assert rep["schema"] == "mnv3.run/1" and len(rep["rows"][0]["bench"]["rounds_ips"]) == 2
    assert "## Performance" in res.stderr and "report: o/report.md, o/report.json" in res.stderr
