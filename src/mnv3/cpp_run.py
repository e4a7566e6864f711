"""``mnv3 run --cpp``: the "openvino C++" rows, and mnv3-infer-cpp's engine-only figures.

``cpp_rows`` runs each openvino build through the native program (accuracy, end-to-end speed)
and ``mnv3-infer-cpp --bench`` (the performance table's cells), as a ``BenchResult``.

The program measures itself the way ``mnv3 bench`` does (one pre-filled input, the cold first
run apart, warm-up runs, S threads each looping on its own infer request: ``cpp/src/bench.cpp``)
and reports every query's latency; the statistics are computed here with ``mnv3.bench``'s own
code, so the C++ row of ``mnv3 run --cpp``'s performance table reads like the others. It runs
the engine at the program's own settings (its threads split into streams), which is what its
end-to-end figure ran at.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from mnv3.bench import BenchResult, LatencyStats
from mnv3.cpp_engine import CppModel, _run, infer_cpp, runs_in_cpp
from mnv3.sysinfo import cpu_busy_seconds, others_cores, system_info


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def bench_cpp(model: CppModel, *, duration: float, warmup: int = 10,
              label: str | None = None) -> BenchResult:
    """One ``--bench`` run of ``model`` (its threads and streams) for ``duration`` seconds."""
    with tempfile.TemporaryDirectory(prefix="mnv3-cpp-bench-") as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [str(model.binary), "--model", str(model.model_dir), "--bench", f"{duration:g}",
               "--warmup", str(warmup), "--json", str(out), "--quiet", "--device", model.device]
        for flag, value in (("--threads", model.threads), ("--streams", model.streams)):
            if value is not None:
                cmd += [flag, str(value)]
        before, t0 = (cpu_busy_seconds(), _children_cpu()), time.perf_counter()
        _run(cmd)
        wall = time.perf_counter() - t0
        after = (cpu_busy_seconds(), _children_cpu())
        d = json.loads(out.read_text())
    return _result(model, d, label, others_cores(before, after, wall)
                   if None not in (before[0], after[0]) else None)


def _result(model: CppModel, d: dict, label, others) -> BenchResult:
    meta, samples = model.meta, [float(s) for s in d["latencies_s"]]
    batch, streams = int(d["batch_size"]), int(d["streams"])
    info = system_info()
    return BenchResult(
        model=label or meta.name, backend=meta.backend,
        backend_version=info["versions"].get(meta.backend) or meta.backend_version,
        quant_mode=meta.quant_mode, shape_mutable=bool(meta.shape_mutable), batch=batch,
        threads=max(1, int(d["threads"]) // streams), streams=streams,
        warmup=int(d["warmup"]), iterations=len(samples), duration_s=float(d["wall_s"]),
        stop=f"duration={float(d['duration']):g}s", throughput_ips=len(samples) * batch /
        float(d["wall_s"]), throughput_qps=len(samples) / float(d["wall_s"]),
        latency_ms=LatencyStats.from_seconds(samples), load_time_ms=float(d["load_ms"]),
        first_run_ms=float(d["first_run_ms"]), other_cpu_load=others, system=info,
        notes=["measured by mnv3-infer-cpp --bench (the C++ API, no Python between calls)"],
        samples=samples)


CPP_ROW_BACKEND = "openvino C++"


def cpp_rows(rows, samples, results_dir: Path, ref: dict[str, int], threads: int, bar, timings):
    """One "openvino C++" row per openvino build, from mnv3-infer-cpp, each with its program.

    Accuracy and end-to-end / engine-only images/s come from the program's own run over the
    same samples (results in ``results/cpp/<name>``). Returns (row, CppModel) pairs: the
    performance table's cells come later, from ``--bench`` runs that ``bench_batch`` takes
    in turn with the Python rows' and the baselines' rounds (``bench_round``).
    """
    from mnv3.pipeline_steps import accuracy_of
    from mnv3.report import ModelRow

    out = []
    for row in (r for r in rows if runs_in_cpp(r.backend)):
        where = results_dir / "cpp" / row.name
        model = CppModel(row.model_dir, threads=threads)
        with bar.step(f"infer + eval {row.name} with mnv3-infer-cpp", timings, "infer"):
            res = infer_cpp(model, samples, where, batch_size=row.batch)
        new = ModelRow(name=row.name, quant_mode=row.quant_mode,
                       shape_mutable=row.shape_mutable, batch=row.batch,
                       model_dir=row.model_dir, reused=True,
                       accuracy=accuracy_of(res, where, ref), backend=CPP_ROW_BACKEND)
        out.append((new, model))
    return out


def bench_round(model: CppModel, python_rounds: list[BenchResult], *, duration: float | None,
                warmup: int, label: str) -> BenchResult:
    """One interleaved round of the C++ row: as long as ``duration``, or else as long as the
    latest round of the Python row that runs the same build (its rounds stop after a number of
    queries, which the program's ``--bench`` does not take)."""
    if duration is None:
        last = python_rounds[-1] if python_rounds else None
        duration = max(0.05, last.duration_s) if last else 1.0
    return bench_cpp(model, duration=duration, warmup=warmup, label=label)


def cpp_notes(bench: BenchResult) -> list[str]:
    return [f"speed cells by mnv3-infer-cpp --bench: {bench.threads * bench.streams} engine "
            f"thread(s) in {bench.streams} stream(s) (the program's own split), one run per "
            "round, interleaved with the Python rows' and the baselines' rounds"]
