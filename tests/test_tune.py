"""Issue 17: ``mnv3 tune`` on tiny models with a small time budget.

Structure and behaviour only, never timing thresholds: a refused candidate is listed with its
reason, the winner is the fastest measured pair within budget, the time budget is respected
and what was skipped is said, and ``mnv3 bench`` runs a tuned model with its settings.
"""

from __future__ import annotations

import json

import pytest

from mnv3 import tune as t
from mnv3.cli.main import main as cli
from mnv3.errors import UsageError
from mnv3.meta import PreprocessCfg, read_meta
from tiny_onnx import SIZE

CFG = PreprocessCfg(resize=36, crop=SIZE)
FAST = {"rounds": 3, "slice_s": 0.05, "progress": False, "calib_num": 8,
        "backends": ["onnxruntime"]}


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return tiny_model(dynamic=True, images=24)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Where this module's tune runs write (the tiny model's folder is shared: read-only)."""
    return tmp_path_factory.mktemp("tune")


@pytest.fixture(scope="module")
def loose(tiny, work):
    """A budget every build meets: float32 and int8 are both measured."""
    return t.tune(tiny.onnx, batch_sizes=(1, 2), objective="throughput", min_agreement=50,
                  min_cosine=0.5, calib_dir=tiny.images, preprocess=CFG,
                  out=work / "loose", time_budget_s=120, **FAST)


@pytest.fixture(scope="module")
def strict(tiny, work):
    """A budget no reduced precision can meet (cosine 1.0): int8 is refused."""
    return t.tune(tiny.onnx, batch_sizes=(1,), objective="latency", min_cosine=1.0,
                  calib_dir=tiny.images, preprocess=CFG, out=work / "strict",
                  time_budget_s=120, **FAST)


# ----------------------------------------------------------------------------- the plan
def test_plan_covers_backends_modes_and_batches_float32_first():
    cands = t.plan(["onnxruntime", "openvino"], [1, 8],
                   ["force_float32", "qint8_mixed_float32", "force_bfloat16"])
    names = [(c.backend, c.quant_mode, c.batch) for c in cands]
    assert ("onnxruntime", "force_bfloat16", 1) not in names  # an OpenVINO-only mode
    assert ("openvino", "force_bfloat16", 8) in names
    assert len(names) == 2 * (3 + 2)
    for b in (1, 8):
        modes = [c.quant_mode for c in cands if c.batch == b]
        assert modes[:2] == ["force_float32", "force_float32"]


def test_bf16_only_where_the_cpu_has_it():
    assert "force_bfloat16" not in t.default_modes("openvino", bf16=False)
    assert "force_bfloat16" in t.default_modes("openvino", bf16=True)
    assert "force_bfloat16" not in t.default_modes("onnxruntime", bf16=True)


def test_runtime_settings_per_objective():
    lat = [(s.threads, s.streams) for s in t.runtime_settings("latency", 2)]
    thr = [(s.threads, s.streams) for s in t.runtime_settings("throughput", 2)]
    assert lat == [(1, 1), (2, 1)] and thr == [(1, 1), (2, 1), (1, 2)]
    assert [(s.threads, s.streams) for s in t.runtime_settings("throughput", 1)] == [(1, 1)]


@pytest.mark.parametrize("kwargs", [{"objective": "fastest"}, {"batch_sizes": ()},
                                    {"time_budget_s": 0}, {"min_agreement": 150}])
def test_bad_arguments_fail_before_any_work(tiny, tmp_path, kwargs):
    with pytest.raises(UsageError):
        t.tune(tiny.onnx, out=tmp_path / "o", **{**FAST, **kwargs})
    assert not (tmp_path / "o" / "models").exists()


def test_one_source_is_required(tmp_path):
    with pytest.raises(UsageError, match="onnx=FILE"):
        t.tune(out=tmp_path, **FAST)


# ----------------------------------------------------------------------------- the run
def _measured(report, batch, objective):
    return [(c, s) for c in report.candidates if c.batch == batch for s in c.settings
            if s.rounds_ips and (objective == "throughput" or s.streams == 1)]


def test_winner_is_the_fastest_measured_within_budget(loose):
    assert set(loose.winners) == {"throughput_b1", "throughput_b2"}
    for b in (1, 2):
        pairs = _measured(loose, b, "throughput")
        assert {c.quant_mode for c, _ in pairs} == {"force_float32", "qint8_mixed_float32"}
        best = max(s.median() for _, s in pairs)
        w = loose.winners[f"throughput_b{b}"]
        assert w["images_per_s"] == best and w["min_ips"] <= best <= w["max_ips"]
        assert w["runner_up"]["ratio"] >= 1.0  # the margin over the second-fastest, said
        winners = [s for _, s in pairs if s.status == "winner"]
        assert len(winners) == 1 and winners[0].median() == best
        assert all(s.why for _, s in pairs if s.status != "winner")  # each loser says why
        assert all(c.fidelity["within_budget"] for c, _ in pairs
                   if c.quant_mode != "force_float32")


def test_tuned_model_records_its_runtime_settings(loose):
    w = loose.winners["throughput_b1"]
    meta = read_meta(w["model_dir"])
    tuned = meta.tuned
    assert tuned["objective"] == "throughput" and tuned["batch"] == 1
    assert (tuned["threads"], tuned["streams"]) == (w["threads"], w["streams"])
    assert tuned["isa"] == loose.isa and tuned["images_per_s"] == w["images_per_s"]
    assert meta.batch_size == 1 and meta.shape_mutable is False


def test_reports_list_every_candidate_with_the_isa(loose, work):
    from mnv3.sysinfo import isa_label

    out = work / "loose"
    data = t.load_report(out / "tune.json")
    assert data["isa"] == loose.isa and len(data["candidates"]) == len(loose.candidates)
    assert all(s["median_ips"] is not None and s["min_ips"] <= s["median_ips"] <= s["max_ips"]
               for c in data["candidates"] for s in c["settings"])
    md = (out / "tune.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| 1 |") or
            line.startswith("| 2 |")]
    n_settings = sum(len(c.settings) for c in loose.candidates)
    assert len(rows) == n_settings and all(isa_label(loose.isa) in r for r in rows)
    assert (out / "tune.png").stat().st_size > 0


def test_pareto_front_keeps_what_nothing_beats_on_both_axes():
    from mnv3.tune_plot import pareto

    pts = [{"x": 100, "y": 10}, {"x": 99, "y": 20}, {"x": 98, "y": 15}, {"x": 99.5, "y": 12}]
    assert [(p["x"], p["y"]) for p in pareto(pts)] == [(99, 20), (99.5, 12), (100, 10)]


def test_a_refused_candidate_is_listed_with_its_reason(strict, work):
    (int8,) = [c for c in strict.candidates if c.quant_mode == "qint8_mixed_float32"]
    assert int8.status == "refused" and "accuracy budget" in int8.why
    assert int8.model_dir is None and not int8.settings
    w = strict.winners["latency_b1"]
    assert w["candidate"].endswith("force_float32_false_1") and w["streams"] == 1
    md = (work / "strict" / "tune.md").read_text()
    assert "refused" in md and "accuracy budget" in md


def test_the_time_budget_is_respected_and_skips_are_said(tiny, tmp_path):
    report = t.tune(tiny.onnx, batch_sizes=(1, 2), calib_dir=tiny.images,
                    preprocess=CFG, out=tmp_path / "o", time_budget_s=0.001, **FAST)
    assert report.skipped  # something had to give
    skipped = [c for c in report.candidates if c.status == "skipped"]
    assert skipped and all("time budget" in c.why for c in skipped)
    assert "Skipped to fit the time budget" in (tmp_path / "o" / "tune.md").read_text()


def test_prune_drops_what_cannot_win():
    fast, slow, close = t.Setting(1, 1, [100, 110, 105]), t.Setting(2, 1, [50, 60, 55]), \
        t.Setting(1, 2, [95, 104, 99])
    from mnv3.tune_measure import prune

    prune([fast, slow, close], "throughput")
    assert slow.status == "pruned" and "slower than the leader" in slow.why
    assert fast.status == close.status == "pending"  # overlapping ranges: still in the race


# ----------------------------------------------------------------------------- bench + CLI
def test_bench_uses_the_tuned_settings_unless_overridden(loose, tmp_path, capsys):
    w = loose.winners["throughput_b1"]
    out = tmp_path / "b.json"
    assert cli(["bench", "--model", w["model_dir"], "--iterations", "5", "--warmup", "1",
                "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert (r["threads"], r["streams"]) == (w["threads"], w["streams"])
    assert "using the settings 'mnv3 tune' chose" in capsys.readouterr().out
    assert (f"ran with the settings 'mnv3 tune' chose (throughput): {w['threads']} thread(s) x "
            f"{w['streams']} request(s) in flight") in r["notes"]  # the JSON says which ran
    assert cli(["bench", "--model", w["model_dir"], "--iterations", "5", "--warmup", "1",
                "--streams", "1", "--threads", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert (r["threads"], r["streams"]) == (1, 1)
    assert "not the settings 'mnv3 tune' chose" in " ".join(r["notes"])


def test_cli_tune_runs_and_writes_its_reports(tiny, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli(["tune", "--onnx", str(tiny.onnx), "--image-size", str(SIZE), "--batch-sizes",
              "1", "--backends", "onnxruntime", "--objective", "latency", "--calib-dir",
              str(tiny.images), "--calib-num", "8", "--min-agreement", "50", "--min-cosine",
              "0.5", "--time-budget", "1m", "--rounds", "2", "--slice", "0.05", "--out",
              str(out), "--no-progress", "--json", "-"])
    assert rc == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["schema"] == t.SCHEMA  # stdout is the JSON alone
    assert "latency_b1:" in captured.err and "images/s" in captured.err
    assert (out / "tune.md").is_file() and (out / "tuned" / "latency_b1" / "meta.json").is_file()


def test_cli_time_budget_parses_units():
    from mnv3.cli.tune_cmd import duration

    assert duration("600") == 600 and duration("90s") == 90 and duration("10m") == 600
    with pytest.raises(Exception):
        duration("ten minutes")


def test_a_rerun_reuses_the_builds(loose, tiny, work):
    again = t.tune(tiny.onnx, batch_sizes=(1,), objective="latency", min_agreement=50,
                   min_cosine=0.5, calib_dir=tiny.images, preprocess=CFG,
                   out=work / "loose", time_budget_s=120, **FAST)
    assert all(c.reused for c in again.candidates)
    assert "latency_b1" in again.winners


def test_weights_are_exported_on_the_way(tmp_path):
    from ckpt_factory import write_checkpoint

    ckpt = tmp_path / "small.pth"
    write_checkpoint(ckpt, num_classes=10)
    report = t.tune(weights=ckpt, batch_sizes=(1,), quant_modes=["force_float32"],
                    objective="latency", out=tmp_path / "o", time_budget_s=120,
                    **{**FAST, "rounds": 2})
    assert report.source.endswith(".onnx") and (tmp_path / "o" / "onnx").is_dir()
    assert "latency_b1" in report.winners


def test_load_and_infer_use_the_tuned_settings(loose, tiny, tmp_path):
    """mnv3.load runs a tuned model with tune's threads and requests in flight unless told
    otherwise; mnv3 infer keeps that many batches in the engine and writes the same files."""
    import shutil

    from mnv3 import infer, load
    from mnv3.data.datasets import load_dataset
    from mnv3.meta import write_meta

    model = tmp_path / "m"
    shutil.copytree(loose.winners["throughput_b1"]["model_dir"], model)
    meta = read_meta(model)
    meta.extra["tuned"] = {**meta.extra["tuned"], "threads": 1, "streams": 3}
    write_meta(meta, model)
    with load(model) as session:
        assert session.in_flight == 3
    with load(model, threads=2) as session:  # the caller's settings win
        assert session.in_flight == 1
    samples = load_dataset(tiny.images)
    with load(model) as tuned, load(model, threads=1) as plain:
        a = infer(tuned, samples, tmp_path / "a", batch_size=2, progress=False)
        b = infer(plain, samples, tmp_path / "b", batch_size=2, progress=False)
    assert a.processed == b.processed == len(samples) and a.engine_images_per_s > 0
    files = sorted(p.name for p in (tmp_path / "a").iterdir() if p.name != "infer.json")
    assert "eval_result_1.txt" in files  # infer.json differs in its timings only
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
