"""bench: the JSON schema, the percentile definition, stop rules, streams, fixed-batch refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FakeSession, fake_meta
from mnv3.bench import (
    PERCENTILES,
    BenchResult,
    LatencyStats,
    benchmark,
    merge_results,
    percentile,
)
from mnv3.errors import ModelError, UsageError

# every engine call sleeps this long, so latencies are measurable
DELAY = 0.0005


def test_percentile_matches_numpy_linear_on_synthetic_latencies():
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 7, 100, 1001):
        lat = rng.lognormal(mean=0.0, sigma=0.5, size=n)
        s = sorted(lat)
        for p in (0, 1, 25, 50, 90, 95, 99, 99.9, 100):
            assert percentile(s, p) == pytest.approx(np.percentile(lat, p, method="linear"),
                                                     rel=1e-12)


def test_latency_stats_match_numpy():
    rng = np.random.default_rng(2)
    secs = list(rng.uniform(0.001, 0.004, size=257))
    st = LatencyStats.from_seconds(secs)
    ms = np.array(secs) * 1e3
    assert st.min == pytest.approx(ms.min())
    assert st.max == pytest.approx(ms.max())
    assert st.avg == pytest.approx(ms.mean())
    for p in PERCENTILES:
        assert getattr(st, f"p{p}") == pytest.approx(np.percentile(ms, p))


def test_iterations_stop_and_counts():
    sess = FakeSession(fake_meta(batch=4), delay=DELAY)
    r = benchmark(sess, iterations=20, warmup=3, load_time_s=0.25)
    assert r.iterations == 20 and r.batch == 4
    assert len(sess.calls) == 1 + 3 + 20  # first (cold) run, warm-up, measured
    assert r.first_run_ms is not None and r.load_time_ms == pytest.approx(250.0)
    assert r.throughput_ips == pytest.approx(4 * r.throughput_qps)
    assert r.throughput_qps == pytest.approx(20 / r.duration_s)
    st = r.latency_ms
    assert 0.5 <= st.min <= st.p50 <= st.p90 <= st.p95 <= st.p99 <= st.max
    assert st.avg * 20 / 1e3 <= r.duration_s  # the loop adds only time, never removes it
    assert r.system["cpu_model"] and r.system["cores"]["logical"] >= 1
    assert "linear" in r.percentile_definition


def test_duration_stop():
    sess = FakeSession(fake_meta(batch=1, mutable=True), delay=0.001)
    r = benchmark(sess, duration=0.1, warmup=0)
    assert 0.1 <= r.duration_s < 0.5
    assert 10 <= r.iterations <= 110


def test_iterations_and_duration_whichever_first():
    sess = FakeSession(fake_meta(batch=1, mutable=True), delay=0.001)
    assert benchmark(sess, iterations=5, duration=10, warmup=0).iterations == 5
    assert benchmark(sess, iterations=100000, duration=0.05, warmup=0).iterations < 100000


def test_streams_share_the_work():
    sess = FakeSession(fake_meta(batch=2), delay=0.002)
    r = benchmark(sess, streams=3, iterations=31, warmup=2, first_run=False)
    assert r.streams == 3 and r.iterations == 31 and r.sessions == 1
    assert len(sess.calls) == 3 * 2 + 31
    # the streams run at once (sleep releases the GIL): asserted by what the engine saw, not
    # by wall time, which a loaded machine stretches (speed belongs to benchmarks/)
    assert sess.most_in_engine == 3


def test_streams_on_separate_sessions():
    sessions = [FakeSession(fake_meta(batch=2), delay=0.002) for _ in range(2)]
    r = benchmark(sessions[0], streams=2, iterations=20, warmup=1, stream_sessions=sessions)
    assert r.sessions == 2 and r.streams == 2 and r.iterations == 20
    assert len(sessions[1].calls) == 1 + 10  # warm-up + its share; the cold run used the first
    with pytest.raises(UsageError, match="2 stream sessions given for 3 streams"):
        benchmark(sessions[0], streams=3, iterations=3, stream_sessions=sessions)


def test_mutable_model_takes_any_batch():
    sess = FakeSession(fake_meta(mutable=True), delay=DELAY)
    assert benchmark(sess, batch=6, iterations=2, warmup=0).batch == 6
    assert set(sess.calls) == {6}
    # default: the batch it was built for, the rule infer uses too (issue 14: one rule)
    assert benchmark(sess, iterations=2, warmup=0).batch == sess.meta.batch_size == 4


def test_fixed_batch_model_refuses_another_batch():
    sess = FakeSession(fake_meta(batch=4), delay=DELAY)
    with pytest.raises(ModelError, match="fixed batch of 4"):
        benchmark(sess, batch=8, iterations=2)
    assert sess.calls == []  # refused before any engine call


@pytest.mark.parametrize("kwargs", [dict(iterations=0), dict(duration=0), dict(streams=0),
                                    dict(warmup=-1), dict(batch=0),
                                    dict(iterations=2, streams=3)])
def test_bad_arguments_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        benchmark(FakeSession(fake_meta(mutable=True), delay=DELAY), **kwargs)


def test_json_round_trip_schema():
    r = benchmark(FakeSession(fake_meta(batch=2), delay=DELAY), iterations=5, warmup=1,
                  threads=1, load_time_s=0.01)
    d = json.loads(json.dumps(r.to_dict()))
    expected = {"model", "backend", "backend_version", "quant_mode", "shape_mutable", "batch",
                "threads", "streams", "warmup", "iterations", "duration_s", "stop",
                "throughput_ips", "throughput_qps", "latency_ms", "load_time_ms",
                "first_run_ms", "other_cpu_load", "sessions", "split", "percentile_definition",
                "system", "notes", "schema", "rounds_ips"}
    assert set(d) == expected
    assert set(d["latency_ms"]) == {"min", "avg", "p50", "p90", "p95", "p99", "max"}
    assert d["schema"] == "mnv3.bench/1" and d["threads"] == 1
    back = BenchResult.from_dict(d)
    assert back == r
    assert back.to_dict() == d
    with pytest.raises(ValueError, match="schema"):
        BenchResult.from_dict({**d, "schema": "other"})


def test_merge_rounds_pools_latencies():
    sess = FakeSession(fake_meta(batch=2), delay=DELAY)
    a = benchmark(sess, iterations=4, warmup=0)
    b = benchmark(sess, iterations=6, warmup=0, first_run=False)
    m = merge_results([a, b])
    assert m.iterations == 10 and m.duration_s == pytest.approx(a.duration_s + b.duration_s)
    assert m.throughput_ips == pytest.approx(20 / m.duration_s)
    assert m.latency_ms.max == max(a.latency_ms.max, b.latency_ms.max)
    assert m.first_run_ms == a.first_run_ms


def test_other_processes_cpu_share(tmp_path, monkeypatch):
    from mnv3.sysinfo import cpu_busy_seconds, others_cores

    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice, in ticks
    stat.write_text("cpu  100 0 50 1000 30 5 5 10 0 0\ncpu0 1 2 3\n")
    import os

    assert cpu_busy_seconds(str(stat)) == pytest.approx(170 / os.sysconf("SC_CLK_TCK"))
    assert cpu_busy_seconds(str(tmp_path / "missing")) is None
    # 3 CPU-seconds busy in total over 2 s, of which 1 was ours: others took 1 core
    assert others_cores((10.0, 5.0), (13.0, 6.0), 2.0) == pytest.approx(1.0)
    assert others_cores(None, (13.0, 6.0), 2.0) is None
    # our own CPU time can exceed the busy ticks counted (tick rounding): 0, never negative
    assert others_cores((10.0, 5.0), (10.0, 5.5), 2.0) == 0.0
    # where /proc/stat exists (Linux: every CI machine) a benchmark measures the figure and its
    # JSON carries it; without /proc/stat it is unknown (None, the report's "unknown"), no guess
    r = benchmark(FakeSession(fake_meta(batch=1), delay=DELAY), iterations=3, warmup=0)
    if cpu_busy_seconds() is None:
        assert r.other_cpu_load is None
    else:
        assert isinstance(r.other_cpu_load, float) and 0.0 <= r.other_cpu_load < float("inf")
        assert json.loads(json.dumps(r.to_dict()))["other_cpu_load"] == r.other_cpu_load
    import mnv3.bench_loop as bench_loop

    monkeypatch.setattr(bench_loop, "cpu_clocks", lambda: None)  # no /proc/stat
    r = benchmark(FakeSession(fake_meta(batch=1), delay=DELAY), iterations=3, warmup=0)
    assert r.other_cpu_load is None and not any("other processes" in n for n in r.notes)


def test_other_load_brackets_the_measured_phase_only(monkeypatch):
    """CPU snapshots are taken after the cold run and warm-up, and right after the last query."""
    import mnv3.bench_loop as bench_loop

    for streams in (1, 2):
        sess = FakeSession(fake_meta(batch=1), delay=DELAY)
        seen = []
        monkeypatch.setattr(bench_loop, "cpu_clocks",
                            lambda: seen.append(len(sess.calls)) or (float(len(seen)), 0.0))
        r = benchmark(sess, iterations=6, warmup=3, streams=streams)
        assert seen == [1 + 3 * streams, 1 + 3 * streams + 6]
        assert r.other_cpu_load == pytest.approx(1.0 / r.duration_s)
