"""Issue 17: ``mnv3 tune`` on tiny models with a small time budget.

Structure and behaviour only, never timing thresholds: a refused candidate is listed with its
reason, the winner is the fastest measured pair within budget, the time budget is respected
and what was skipped is said, and ``mnv3 bench`` runs a tuned model with its settings.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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
                   ["force_float32", "qint8_mixed_float32", "force_bfloat16"], ("fixed",))
    names = [(c.backend, c.quant_mode, c.batch) for c in cands]
    assert ("onnxruntime", "force_bfloat16", 1) not in names  # an OpenVINO-only mode
    assert ("openvino", "force_bfloat16", 8) in names
    assert len(names) == 2 * (3 + 2)
    for b in (1, 8):
        modes = [c.quant_mode for c in cands if c.batch == b]
        assert modes[:2] == ["force_float32", "force_float32"]


def test_plan_adds_one_mutable_candidate_per_batch_after_the_fixed_ones():
    cands = t.plan(["onnxruntime"], [1, 8], ["force_float32", "qint8_mixed_float32"])
    fixed = [c for c in cands if not c.mutable]
    mutable = [c for c in cands if c.mutable]
    assert len(fixed) == len(mutable) == 4 and cands[:4] == fixed  # fixed first
    assert {(c.quant_mode, c.batch) for c in mutable} == {(c.quant_mode, c.batch) for c in fixed}
    assert mutable[0].quant_mode == "force_float32" and mutable[0].batch == 1
    assert mutable[0].name == "onnxruntime/force_float32_true_1" and mutable[0].shape == "mutable"
    assert all(not c.mutable for c in t.plan(["onnxruntime"], [1], shapes=("fixed",)))


def test_bf16_only_where_the_cpu_has_it():
    assert "force_bfloat16" not in t.default_modes("openvino", bf16=False)
    assert "force_bfloat16" in t.default_modes("openvino", bf16=True)
    assert "force_bfloat16" not in t.default_modes("onnxruntime", bf16=True)


def test_runtime_settings_per_objective():
    lat = [(s.threads, s.streams) for s in t.runtime_settings("latency", 2)]
    thr = [(s.threads, s.streams) for s in t.runtime_settings("throughput", 2)]
    assert lat == [(1, 1), (2, 1)] and thr == [(1, 1), (2, 1), (1, 2)]
    assert [(s.threads, s.streams) for s in t.runtime_settings("throughput", 1)] == [(1, 1)]


def test_latency_splits_the_batch_where_the_engine_and_the_cores_allow():
    from mnv3.quant_mode import QuantMode
    from mnv3.tune_types import Candidate

    def splits(*args):
        return [(s.threads, s.streams, s.split) for s in t.runtime_settings(*args) if s.split > 1]

    assert splits("latency", 2, 8, True) == [(1, 1, 2)]
    assert t.runtime_settings("latency", 2, 8, True)[-1].label == "batch split in 2 x 1 thr"
    # not: an engine that runs one request per call, batch 1, a batch the cores do not
    # divide, one core, the throughput objective (requests in flight do that there)
    for args in (("latency", 2, 8, False), ("latency", 2, 1, True), ("latency", 2, 3, True),
                 ("latency", 1, 8, True), ("throughput", 2, 8, True)):
        assert splits(*args) == [], args
    per_candidate = t._settings_for("latency", 2)
    assert any(s.split == 2 for s in per_candidate(Candidate("openvino", QuantMode.FLOAT32, 8)))
    assert all(s.split == 1 for s in per_candidate(Candidate("onnxruntime", QuantMode.FLOAT32,
                                                             8)))


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino")
def test_a_split_winner_is_recorded_and_used_by_load(tiny, tmp_path, monkeypatch):
    """Only the split setting offered (so it wins whatever this machine's speed): tune.md,
    the tuned meta.json and mnv3.load all carry it."""
    import mnv3.sysinfo as sysinfo
    from mnv3.backends import load

    real_info, real_settings = sysinfo.system_info, t.runtime_settings

    def two_cores():
        info = real_info()
        return {**info, "cores": {**info.get("cores", {}), "usable": 2}}

    monkeypatch.setattr(sysinfo, "system_info", two_cores)
    monkeypatch.setattr(t, "runtime_settings",
                        lambda *a: [s for s in real_settings(*a) if s.split > 1])
    report = t.tune(tiny.onnx, batch_sizes=(2,), quant_modes=["force_float32"],
                    objective="latency", calib_dir=tiny.images, preprocess=CFG, shapes=("fixed",),
                    out=tmp_path / "o", time_budget_s=120, decode_check=False,
                    **{**FAST, "backends": ["openvino"], "rounds": 1})
    w = report.winners["latency_b2"]
    assert (w["threads"], w["streams"], w["split"]) == (1, 1, 2)
    assert read_meta(w["model_dir"]).tuned["split"] == 2
    with load(w["model_dir"]) as session:
        assert session.split == 2
    md = (tmp_path / "o" / "tune.md").read_text()
    assert "| latency_b2 | openvino/force_float32_false_2 | 1 | 1 | 2 |" in md
    assert "batch split in 2 x 1 thr" in md
    from mnv3.tune_report import format_summary

    assert "each batch split in 2 at once" in format_summary(report)


@pytest.mark.parametrize("kwargs", [{"objective": "fastest"}, {"batch_sizes": ()},
                                    {"time_budget_s": 0}, {"min_agreement": 150},
                                    {"shapes": ("dynamic",)}, {"shapes": ()}])
def test_bad_arguments_fail_before_any_work(tiny, tmp_path, kwargs):
    with pytest.raises(UsageError):
        t.tune(tiny.onnx, out=tmp_path / "o", **{**FAST, **kwargs})
    assert not (tmp_path / "o" / "models").exists()


def test_one_source_is_required(tmp_path):
    with pytest.raises(UsageError, match="onnx=FILE"):
        t.tune(out=tmp_path, **FAST)


def test_an_engine_that_compiles_the_network_is_tuned_only_when_asked(tiny, tmp_path,
                                                                       monkeypatch):
    """torch compiles the PyTorch network (minutes a build on a small CPU), which an ONNX
    file cannot give back: not a default candidate (and said), refused up front for --onnx,
    and given the checkpoint as its source when asked for with --weights."""
    from mnv3 import backends as be
    from mnv3 import tune_build

    if "torch" not in be.list_backends(available_only=True):
        pytest.skip("the torch backend is not available here")
    chosen, why = t._backends(None, have_network=True)
    assert "torch" not in chosen and "onnxruntime" in chosen
    assert why == ["torch: not tuned by default (it compiles the PyTorch network, minutes per "
                   "build); ask for it with --backends and --weights"]
    with pytest.raises(UsageError, match="--backends torch compiles the PyTorch network"):
        t.tune(tiny.onnx, out=tmp_path / "o", **{**FAST, "backends": ["onnxruntime", "torch"]})
    assert not (tmp_path / "o" / "models").exists()

    from ckpt_factory import write_checkpoint

    ckpt = tmp_path / "small.pth"
    write_checkpoint(ckpt, num_classes=10)
    sources = []

    def fake_build(c, *args):
        sources.append((c.backend, args[-1]))
        c.status, c.why = "failed", "not built here"

    monkeypatch.setattr(tune_build, "build_candidate", fake_build)
    t.tune(weights=ckpt, batch_sizes=(1,), quant_modes=["force_float32"], out=tmp_path / "w",
           **{**FAST, "backends": ["torch"], "decode_check": False})
    assert sources and all(b == "torch" and s["weights_path"] == str(ckpt.resolve())
                           for b, s in sources)


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
    assert meta.batch_size == 1 and meta.default_batch == 1
    assert meta.shape_mutable is (tuned["shape"] == "mutable")
    assert w["candidate"].endswith(f"_{str(meta.shape_mutable).lower()}_1")


def test_a_malformed_tuned_record_is_ignored_and_an_older_one_read(loose):
    """meta.json's tuned settings drive every load: a hand-edited count that is not a whole
    number >= 1 leaves the model untuned; a record from before split was measured still counts."""
    meta = read_meta(loose.winners["throughput_b1"]["model_dir"])
    good = dict(meta.extra["tuned"])
    assert good["split"] == 1
    for bad in ({"split": 0}, {"split": "2"}, {"split": True}, {"threads": 1.5}):
        meta.extra["tuned"] = {**good, **bad}
        assert meta.tuned is None, bad
    meta.extra["tuned"] = {k: v for k, v in good.items() if k != "split"}
    assert meta.tuned is not None


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
    int8s = [c for c in strict.candidates if c.quant_mode == "qint8_mixed_float32"]
    assert [c.shape for c in int8s] == ["fixed", "mutable"]
    for int8 in int8s:
        assert int8.status == "refused" and "accuracy budget" in int8.why
        assert int8.model_dir is None and not int8.settings
    w = strict.winners["latency_b1"]
    assert "/force_float32_" in w["candidate"] and w["streams"] == 1
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
    # another batch list: its shape-mutable candidates run the builds made for batch 1
    other = t.tune(tiny.onnx, batch_sizes=(2,), objective="latency", min_agreement=50,
                   min_cosine=0.5, calib_dir=tiny.images, preprocess=CFG,
                   out=work / "loose", time_budget_s=120, **FAST)
    mutable = [c for c in other.candidates if c.mutable]
    assert mutable and all(c.reused and c.model_dir.endswith("_true_1") for c in mutable)
    assert all(c.reused for c in other.candidates)


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


# ----------------------------------------------------------------------------- mutable batch
def test_one_mutable_build_serves_every_batch(loose):
    """The shape-mutable candidates of one (backend, mode) run one build, made once."""
    for mode in ("force_float32", "qint8_mixed_float32"):
        mut = [c for c in loose.candidates if c.mutable and c.quant_mode == mode]
        assert [c.batch for c in mut] == [1, 2] and all(c.status == "built" for c in mut)
        first, second = mut
        assert first.shares is None and second.shares == first.name
        assert second.model_dir == first.model_dir and second.build_s == 0.0
        assert read_meta(first.model_dir).shape_mutable is True
        assert all(s.rounds_ips for c in mut for s in c.settings)  # measured at each batch
    models = Path(loose.candidates[0].model_dir).parent
    built = sorted(p.name for p in models.iterdir() if "_true_" in p.name)
    assert built == ["force_float32_true_1", "qint8_mixed_float32_true_1"]


def test_mutable_candidates_are_measured_at_their_batch(tiny, tmp_path, monkeypatch):
    import mnv3.bench as bench

    seen, real = [], bench.benchmark

    def spy(session, **kw):
        seen.append((session.meta.shape_mutable, kw.get("batch")))
        return real(session, **kw)

    monkeypatch.setattr(bench, "benchmark", spy)
    report = t.tune(tiny.onnx, batch_sizes=(1, 3), quant_modes=["force_float32"],
                    objective="latency", calib_dir=tiny.images, preprocess=CFG,
                    out=tmp_path / "o", time_budget_s=120, decode_check=False,
                    **{**FAST, "rounds": 1})
    assert {(True, 1), (True, 3), (False, 1), (False, 3)} <= set(seen)
    assert {k for k in report.winners} == {"latency_b1", "latency_b3"}
    md = (tmp_path / "o" / "tune.md").read_text()
    assert "| 3 | onnxruntime | force_float32 | mutable |" in md
    assert "force_float32_true_3 runs the build of onnxruntime/force_float32_true_1" in md


def test_a_faster_mutable_candidate_is_chosen_and_runs_at_its_batch(loose, tmp_path):
    """choose() on measured figures where the mutable build is faster at batch 2: its copy
    serves batch 2 by default (meta batch_size), and mnv3 bench runs it so."""
    from mnv3.tune_choose import choose

    def cand(mutable, ips):
        (src,) = [c for c in loose.candidates if c.batch == 2 and c.mutable is mutable
                  and c.quant_mode == "force_float32"]
        return t.Candidate(src.backend, src.quant_mode, 2, mutable=mutable,
                           model_dir=src.model_dir, status="built",
                           settings=[t.Setting(1, 1, ips, [1.0] * 3)])

    fixed, mutable = cand(False, [100.0, 101.0, 99.0]), cand(True, [120.0, 118.0, 125.0])
    report = t.TuneReport("throughput", [2], {}, 60.0, {}, loose.isa)
    report.candidates = [fixed, mutable]
    choose([fixed, mutable], "throughput", 2, tmp_path, report, False)
    w = report.winners["throughput_b2"]
    assert w["candidate"].endswith("force_float32_true_2") and w["shape"] == "mutable"
    assert fixed.why.startswith("slower than") and w["runner_up"]["ratio"] == 120 / 100
    meta = read_meta(w["model_dir"])
    assert meta.shape_mutable and meta.batch_size == meta.default_batch == 2
    assert read_meta(mutable.model_dir).batch_size == 1  # the shared build is left as built
    out = tmp_path / "b.json"
    assert cli(["bench", "--model", w["model_dir"], "--iterations", "3", "--warmup", "1",
                "--json", str(out)]) == 0
    assert json.loads(out.read_text())["batch"] == 2


# ----------------------------------------------------------------------------- the budget
@pytest.mark.slow
def test_tune_on_the_defaults_finishes_within_its_time_budget(tiny, tmp_path, capsys):
    """`mnv3 tune` with its default rounds, slices, batch sizes, shapes, backends and decode
    check, given a small budget: it returns within it and says what it skipped to fit."""
    import time

    budget, out = 30, tmp_path / "d"
    t0 = time.perf_counter()
    rc = cli(["tune", "--onnx", str(tiny.onnx), "--image-size", str(SIZE), "--calib-dir",
              str(tiny.images), "--time-budget", f"{budget}s", "--out", str(out),
              "--no-progress"])
    wall = time.perf_counter() - t0
    assert rc == 0
    data = t.load_report(out / "tune.json")
    assert wall <= budget and data["elapsed_s"] <= budget, (wall, data["elapsed_s"])
    assert data["skipped"]  # 7 rounds of 0.5 s slices of every pair cannot fit 30 s
    assert any("round" in s for s in data["skipped"])
    printed = capsys.readouterr().out
    assert all(s in (out / "tune.md").read_text() for s in data["skipped"])
    assert "skipped" in printed and data["winners"]


def test_a_build_like_a_slow_one_is_not_started_late():
    from mnv3.tune_build import _wont_fit

    class Clock:
        budget = 100.0

        def elapsed(self):
            return 40.0

    done = t.Candidate("onnxruntime", "qint8_mixed_float32", 1, status="built", build_s=30.0)
    nxt = t.Candidate("onnxruntime", "qint8_mixed_float32", 8)
    other = t.Candidate("onnxruntime", "force_float32", 8)
    report = t.TuneReport("latency", [1, 8], {}, 100.0, {}, "avx2", candidates=[done, nxt])
    assert "took 30 s" in _wont_fit(nxt, Clock(), report)  # 40 + 30 > 60% of 100
    assert _wont_fit(other, Clock(), report) is None  # nothing like it measured yet
    # an engine's first int8 build, guessed from its float32 build (4 x 6 s > 60 - 40 s left)
    f32 = t.Candidate("openvino", "force_float32", 1, status="built", build_s=6.0)
    ov8 = t.Candidate("openvino", "qint8_mixed_float32", 1)
    report.candidates = [f32, ov8]
    assert "estimated at 4x" in _wont_fit(ov8, Clock(), report)
    f32.build_s = 4.0  # 4 x 4 s fits
    assert _wont_fit(ov8, Clock(), report) is None
    ort32 = t.Candidate("onnxruntime", "force_float32", 1, status="built", build_s=11.0)
    report.candidates = [ort32, nxt]  # ONNX Runtime's int8 builds took ~1x: guessed at 2x
    assert "estimated at 2x" in _wont_fit(nxt, Clock(), report)
    ort32.build_s = 9.0  # 40 + 2 x 9 < 60
    assert _wont_fit(nxt, Clock(), report) is None


def test_an_engine_whose_float32_build_failed_is_not_tried_again(tmp_path, monkeypatch):
    from mnv3 import tune_build
    from mnv3.tune_build import build_all

    tried = []

    def fake_build(c, *args):
        tried.append(c.name)
        c.status, c.why = ("failed", "build failed: no") if c.backend == "torch" else \
            ("built", "")

    monkeypatch.setattr(tune_build, "build_candidate", fake_build)
    cands = t.plan(["onnxruntime", "torch"], [1, 8], ["force_float32"])
    report = t.TuneReport("latency", [1, 8], {}, 100.0, {}, "avx2", candidates=cands)
    build_all(cands, None, tmp_path, None, None, 8, {}, False, None, report, False)
    assert [n for n in tried if n.startswith("torch")] == ["torch/force_float32_false_1"]
    torch = [c for c in cands if c.backend == "torch"]
    assert all(c.status == "failed" for c in torch)
    assert all(c.why == "not built: torch/force_float32_false_1 failed" for c in torch[1:]
               if not c.shares)


def test_an_int8_build_the_budget_refused_is_not_repeated_at_other_batches(tmp_path,
                                                                            monkeypatch):
    """The same engine and mode at another batch or shape quantizes the same way: tune does not
    spend its budget on a second refusal; an engine's refusal (not for accuracy) does not count."""
    from mnv3 import tune_build
    from mnv3.tune_build import build_all

    tried = []

    def fake_build(c, *args):
        tried.append(c.name)
        if c.quant_mode == "qint8_mixed_float32":
            c.status, c.why = "refused", "build refused: misses its accuracy budget"
            return c.backend == "onnxruntime"  # OpenVINO's: the engine refused, not the budget
        c.status, c.why = "built", ""
        return False

    monkeypatch.setattr(tune_build, "build_candidate", fake_build)
    cands = t.plan(["onnxruntime", "openvino"], [1, 8],
                   ["force_float32", "qint8_mixed_float32"])
    report = t.TuneReport("throughput", [1, 8], {}, 100.0, {}, "avx2", candidates=cands)
    build_all(cands, None, tmp_path, None, None, 8, {}, False, None, report, False)
    int8 = {c.name: c for c in cands if c.quant_mode == "qint8_mixed_float32"}
    assert [n for n in tried if n in int8 and n.startswith("onnxruntime")] == \
        ["onnxruntime/qint8_mixed_float32_false_1"]
    for name, c in int8.items():
        assert c.status == "refused"
        if name.startswith("onnxruntime") and name != "onnxruntime/qint8_mixed_float32_false_1":
            assert c.why.startswith("not built: onnxruntime/qint8_mixed_float32_false_1 missed "
                                    "the accuracy budget") and c.model_dir is None
    # OpenVINO's int8 refusals were the engine's: each of its builds is still tried
    assert {n for n in tried if n.startswith("openvino/qint8")} == {
        "openvino/qint8_mixed_float32_false_1", "openvino/qint8_mixed_float32_false_8",
        "openvino/qint8_mixed_float32_true_1"}
    assert all(c.status == "built" for c in cands if c.quant_mode == "force_float32")


# ----------------------------------------------------------------------------- decoding
def test_the_decode_rule_needs_agreement_and_speed():
    from mnv3.tune_decode import decide

    assert decide({"agreement": 1.0, "speed_ratio": 1.08}) == "fast"
    assert decide({"agreement": 0.995, "speed_ratio": 1.01}) == "fast"
    assert decide({"agreement": 0.994, "speed_ratio": 1.5}) == "exact"  # below the bar
    assert decide({"agreement": 1.0, "speed_ratio": 0.97}) == "exact"  # not faster
    assert decide({"checked": False}) == "exact"


def test_tune_records_the_measured_decode_choice(loose):
    from mnv3.tune_decode import decide
    from mnv3.tune_report import format_md

    md = format_md(loose)  # tune.md as written (a later test reruns tune into the same folder)

    for key, w in loose.winners.items():
        tuned = read_meta(w["model_dir"]).tuned
        check = tuned["decode_check"]
        assert check["checked"] and check["images"] == 16  # the 24 images less 8 calibration
        assert 0 <= check["agreement"] <= 1 and check["exact_ips"] > 0 and check["fast_ips"] > 0
        assert check["pairs"] >= 1 and (check["threads"], check["streams"]) == (
            tuned["threads"], tuned["streams"])
        assert tuned["decode"] == decide(check) == w["decode"]
        assert f"{key}: decode {tuned['decode']}: the fast path's top-1 agreement" in md


def test_infer_uses_the_tuned_decode_and_exact_overrides(loose, tiny, tmp_path, capsys):
    import shutil

    from mnv3 import infer, load
    from mnv3.data.datasets import load_dataset
    from mnv3.meta import write_meta

    model = tmp_path / "m"
    shutil.copytree(loose.winners["throughput_b1"]["model_dir"], model)
    meta = read_meta(model)
    check = {"checked": True, "images": 400, "agreement": 1.0, "images_of": "400 of 400 x",
             "speed_ratio": 1.1, "ratio_range": [1.0, 1.2], "pairs": 3, "exact_ips": 10.0,
             "fast_ips": 11.0}
    meta.extra["tuned"] = {**meta.extra["tuned"], "decode": "fast", "decode_check": check}
    write_meta(meta, model)
    args = ["infer", "--model", str(model), "--image-dir", str(tiny.images), "--no-progress"]
    assert cli([*args, "--output-dir", str(tmp_path / "a")]) == 0
    said = capsys.readouterr().out
    assert "using --decode fast, which 'mnv3 tune' chose" in said and "100.0%" in said
    assert "--decode fast: approximate pixels" in said  # the summary says it too
    assert json.loads((tmp_path / "a" / "infer.json").read_text())["decode"] == "fast"
    assert cli([*args, "--output-dir", str(tmp_path / "b"), "--decode", "exact"]) == 0
    assert "--decode fast" not in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "infer.json").read_text())["decode"] == "exact"
    with load(model) as session:  # the Python API follows the model too
        samples = load_dataset(tiny.images)
        assert infer(session, samples, tmp_path / "c", progress=False).decode == "fast"
        assert infer(session, samples, tmp_path / "d", progress=False,
                     decode="exact").decode == "exact"
