"""mnv3 run end to end on a tiny model and 4 demo images: tables, report files, reuse."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from mnv3.cli.main import main
from mnv3.errors import UsageError
from mnv3.meta import read_meta
from mnv3.pipeline import run_all

# Tiny and quick: MobileNetV3-Small x0.35, 4 demo images, two modes, one batch, short benches.
ARGS = ["--width-mult", "0.35", "--image-num", "4", "--quant-modes",
        "force_float32,qint8_mixed_float32", "--batch-sizes", "2", "--threads", "1",
        "--calib-num", "4", "--bench-duration", "0.05", "--bench-rounds", "1", "--bench-warmup", "2",
        "--no-progress"]
KWARGS = dict(width_mult=0.35, image_num=4, quant_modes=("force_float32", "qint8_mixed_float32"),
              batch_sizes=(2,), threads=1, calib_num=4, bench_duration=0.05, bench_rounds=1,
              bench_warmup=2, progress=False)
NAMES = ("force_float32_false_2", "qint8_mixed_float32_false_2")


@dataclass
class FirstRun:
    out: Path
    rc: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> FirstRun:
    """`mnv3 run ARGS` once into a fresh folder, what it printed captured. The later tests start
    from a copy of its folder (a run is resumable: what they ask for that it built is reused)."""
    out = tmp_path_factory.mktemp("run") / "data"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["run", *ARGS, "--out", str(out)])
    return FirstRun(out, rc, stdout.getvalue(), stderr.getvalue())


def _copy_of(first_run: FirstRun, dest: Path) -> Path:
    assert first_run.rc == 0
    shutil.copytree(first_run.out, dest)  # copy2: mtimes and contents kept, so reuse applies
    return dest


@pytest.mark.slow  # first_run: a whole pipeline run; the first test to use it pays
def test_run_end_to_end_then_reuse(first_run, tmp_path, capsys):
    out = first_run.out
    assert first_run.rc == 0
    assert "WARNING" in first_run.stderr and "UNTRAINED" in first_run.stderr  # said at the start
    stdout = first_run.stdout
    assert "| Model | QuantMode_ShapeMutable_BatchSize | Throughput (images/s) |" in stdout
    assert "| Model | QuantMode_ShapeMutable_BatchSize | top1 | top5 | agreement with fp32 |" \
        in stdout
    for name in NAMES:
        assert stdout.count(f"| {name} |") == 3  # performance, accuracy, baselines
    assert {"report.md", "report.json", "report.png"} <= {p.name for p in out.iterdir()}
    # every file named with its folder, not the first one only (issue 13)
    assert f"report: {out / 'report.md'}, {out / 'report.json'}, {out / 'report.png'} (" \
        in stdout
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "UNTRAINED" in md and "(untrained)" in md and "## Against baselines" in md
    assert re.search(r"takes \d+ distinct class(es)? over 4 images", md)  # weak check on random nets

    rep = json.loads((out / "report.json").read_text())
    assert rep["untrained"] is True and rep["dataset"]["images"] == 4 and rep["dataset"]["demo"]
    assert rep["config"]["bench_warmup"] == 2
    rows = {r["name"]: r for r in rep["rows"]}
    assert set(rows) == set(NAMES) and not any(r["reused"] for r in rows.values())
    # fp32 ORT must pick the same top-1 as PyTorch eager fp32 on every image
    assert rows["force_float32_false_2"]["accuracy"]["agreement"] == 1.0
    for r in rows.values():
        b = r["bench"]
        assert b["batch"] == 2 and b["threads"] == 1 and b["throughput_ips"] > 0
        assert (out / "results" / r["name"] / "eval_result_1.txt").is_file()
    assert {(b["name"], b["batch"]) for b in rep["baselines"]} == {
        ("pytorch-eager-fp32", 2), ("onnxruntime-plain-fp32", 2)}

    # A second run reuses the export and both builds: nothing is rewritten.
    metas = {n: read_meta(out / "models" / n) for n in NAMES}
    mtimes = {n: (out / "models" / n / "meta.json").stat().st_mtime_ns for n in NAMES}
    onnx = next((out / "onnx").glob("*.onnx"))
    onnx_mtime = onnx.stat().st_mtime_ns
    rep2 = run_all(**KWARGS, out=out)
    assert all(r.reused and r.build_s is None for r in rep2.rows)
    assert onnx.stat().st_mtime_ns == onnx_mtime
    for n in NAMES:
        assert (out / "models" / n / "meta.json").stat().st_mtime_ns == mtimes[n]
        assert read_meta(out / "models" / n).created == metas[n].created
    assert "reused" not in capsys.readouterr().out  # progress=False: quiet

    # mnv3 bench on a model the run built: human block + JSON; a wrong batch is refused.
    model = str(out / "models" / NAMES[0])
    js = tmp_path / "bench.json"
    assert main(["bench", "--model", model, "--iterations", "5", "--warmup", "1",
                 "--threads", "1", "--json", str(js)]) == 0
    text = capsys.readouterr().out
    assert "images/s" in text and "queries/s" in text and "p99" in text and "first run" in text
    d = json.loads(js.read_text())
    assert d["iterations"] == 5 and d["batch"] == 2 and d["load_time_ms"] > 0
    assert main(["bench", "--model", model, "--batch", "3", "--iterations", "5"]) == 7
    assert "fixed batch of 2" in capsys.readouterr().err


@pytest.mark.slow
def test_changed_request_rebuilds(first_run, tmp_path):
    """A model whose meta.json does not match (here: another calibration count) is rebuilt."""
    kw = {**KWARGS, "quant_modes": ("qint8_mixed_float32",), "bench_iterations": 2,
          "bench_duration": None}
    out = _copy_of(first_run, tmp_path / "data")  # its int8 model: calibrated on 4 images
    rep = run_all(**{**kw, "calib_num": 3}, out=out)
    assert not rep.rows[0].reused
    assert read_meta(out / "models" / NAMES[1]).calibration["requested"] == 3
    # ...and never silently (issue 13): the report says what the rebuild replaced
    assert len(rep.rows[0].replaced) == 1 and "calibration 4 images of" in rep.rows[0].replaced[0]
    assert any(n.startswith(f"models/{NAMES[1]} replaced a model built with other settings: "
                            "calibration 4 images") for n in rep.notes)


@pytest.mark.parametrize("bad", [dict(quant_modes=("bogus",)), dict(batch_sizes=(0,)),
                                 dict(threads=0), dict(label_file="labels.txt"),
                                 dict(calib_dir="/nonexistent/calib"), dict(calib_num=0),
                                 dict(bench_duration=0)])
def test_bad_request_fails_before_writing_anything(tmp_path, bad):
    with pytest.raises(UsageError):
        run_all(**{**KWARGS, **bad}, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_source_from_weights_is_trained_and_keyed_by_sha(tmp_path):
    import torch

    from mnv3.models import create_model
    from mnv3.pipeline_steps import open_source

    ckpt = tmp_path / "tiny.pth"
    torch.save(create_model("mobilenetv3-small", width_mult=0.35, seed=3).state_dict(), ckpt)
    src = open_source(ckpt, "auto", "auto", None)
    assert not src.untrained and src.key["arch"] == "mobilenetv3-small"
    assert src.key["width_mult"] == 0.35 and len(src.key["weights_sha256"]) == 64
    assert src.tag.endswith(src.key["weights_sha256"][:12]) and src.label.endswith("(x0.35)")
    rnd = open_source(None, "auto", "auto", None)
    assert rnd.untrained and rnd.tag == "mobilenetv3-small_seed_1_seed0"


@pytest.mark.parametrize("bad", [dict(backends=()), dict(backends=("tensorrt",)),
                                 dict(quant_modes=("force_bfloat16",), backends="onnxruntime")])
def test_bad_backends_fail_before_writing_anything(tmp_path, bad):
    with pytest.raises(UsageError):
        run_all(**{**KWARGS, **bad}, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_plan_builds_each_mode_for_each_backend_that_can(monkeypatch):
    """force_bfloat16 is OpenVINO's: skipped (and reported) for ONNX Runtime, not an error."""
    import mnv3.backends
    from mnv3.pipeline import _plan

    monkeypatch.setattr(mnv3.backends, "get_backend", lambda name: object())  # no OpenVINO needed
    plan = _plan(("force_float32", "force_bfloat16"), (1, 8), False, 1, 1,
                 ("onnxruntime", "openvino"))
    models = [(r.backend, r.quant_mode, r.batch_size) for r in plan["models"]]
    assert models == [("onnxruntime", "force_float32", 1), ("onnxruntime", "force_float32", 8),
                              ("openvino", "force_float32", 1), ("openvino", "force_float32", 8),
                              ("openvino", "force_bfloat16", 1), ("openvino", "force_bfloat16", 8)]
    assert plan["skipped"] == [("onnxruntime", "force_bfloat16")]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                    reason="openvino is not installed (pip install -e '.[openvino]')")
def test_run_with_two_backends_one_report(first_run, tmp_path, capsys):
    """`mnv3 run --backends onnxruntime,openvino`: both in one report, with a backend column.
    (From first_run's folder: its ONNX Runtime models are reused, the OpenVINO ones built.)"""
    out = _copy_of(first_run, tmp_path / "data")
    assert main(["run", *ARGS, "--backends", "onnxruntime,openvino", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "| Model | Backend | QuantMode_ShapeMutable_BatchSize | Throughput (images/s) |" \
        in stdout
    for backend in ("onnxruntime", "openvino"):
        for name in NAMES:
            assert stdout.count(f"| {backend} | {name} |") == 3  # perf, accuracy, baselines
    rep = json.loads((out / "report.json").read_text())
    rows = {(r["backend"], r["name"]): r for r in rep["rows"]}
    assert set(rows) == {(b, n) for b in ("onnxruntime", "openvino") for n in NAMES}
    for (backend, name), r in rows.items():
        sub = name if backend == "onnxruntime" else f"openvino/{name}"  # ORT: the seed's layout
        assert r["model_dir"] == str(out / "models" / sub)
        assert read_meta(out / "models" / sub).backend == backend
        assert r["bench"]["backend"] == backend and r["bench"]["throughput_ips"] > 0
        assert (out / "results" / sub / "eval_result_1.txt").is_file()
    # both fp32 engines pick PyTorch's top-1 on every image
    assert rows["openvino", NAMES[0]]["accuracy"]["agreement"] == 1.0
    assert rows["onnxruntime", NAMES[0]]["accuracy"]["agreement"] == 1.0
    assert rep["config"]["backends"] == ["onnxruntime", "openvino"]
    assert "onnxruntime 1." in (out / "report.md").read_text()


@pytest.mark.slow  # a run plus a 40 s tune budget
def test_run_tune_adds_the_tuned_row_run_as_tuned(tmp_path):
    """mnv3 run --tune: tune's winner per batch is a row of both tables, benchmarked with the
    threads and requests in flight tune chose, and the report says how the rows differ."""
    kwargs = {**KWARGS, "quant_modes": ("force_float32",)}
    rep = run_all(**kwargs, out=tmp_path / "data", tune_budget_s=40)
    tuned = [r for r in rep.rows if r.tuned]
    assert len(tuned) == 1 and tuned[0].batch == 2 and "tuned" in tuned[0].backend
    row = tuned[0]
    meta = read_meta(row.model_dir)
    assert meta.extra["tuned"]["streams"] == row.tuned["streams"] == row.bench.streams
    assert row.bench.threads == row.tuned["threads"] and row.accuracy["images"] == 4
    md = (tmp_path / "data" / "report.md").read_text()
    assert "tuned" in md and "tune/tune.md" in md
    assert (tmp_path / "data" / "tune" / "tune.json").is_file()
    with pytest.raises(UsageError, match="positive time budget"):
        run_all(**kwargs, out=tmp_path / "other", tune_budget_s=0)
