"""Does `mnv3 bench` measure what an independent loop measures? (target: within 5%)

For each configuration, in one process, interleaved (bench, loop, bench, loop, ...):
  bench : mnv3.bench.benchmark(session, iterations=N)  -> avg latency, 1 / queries-per-second
  loop  : t0 = perf_counter(); N x session.run(x); (perf_counter() - t0) / N
and prints the median of each and the median per-round ratio bench/loop. Same session, same
threads, same pre-filled input shape.

    python benchmarks/bench_vs_loop.py [--rounds 7] [--seconds 1.5] [--threads 1,2]
                                       [--work /tmp/mnv3-bench]

Each round runs N queries, N chosen from a short probe so that a round lasts about --seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from _common import build_model, export_fp32, median, median_ratio


def independent_loop(session, batch: int, n: int) -> float:
    """Seconds per query of a plain perf_counter loop around session.run (after 10 warm-ups)."""
    x = np.random.default_rng(1).standard_normal(
        (batch, *session.meta.input_shape[1:]), dtype=np.float32)
    for _ in range(10):
        session.run(x)
    t0 = time.perf_counter()
    for _ in range(n):
        session.run(x)
    return (time.perf_counter() - t0) / n


def probe_iterations(session, batch: int, seconds: float) -> int:
    """Queries that take about ``seconds`` (at least 20)."""
    per_query = independent_loop(session, batch, 5)
    return max(20, int(seconds / per_query))


def compare(model_dir, batch, threads, rounds, seconds):
    import mnv3
    from mnv3.bench import benchmark

    session = mnv3.load(model_dir, threads=threads)
    n = probe_iterations(session, batch, seconds)
    avg, per_q, loop = [], [], []
    for _ in range(rounds):
        r = benchmark(session, batch=batch, iterations=n, warmup=10, first_run=False)
        avg.append(r.latency_ms.avg / 1e3)
        per_q.append(1 / r.throughput_qps)
        loop.append(independent_loop(session, batch, n))
    return avg, per_q, loop, n


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--work", default="/tmp/mnv3-bench")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"bench vs independent loop: {a.rounds} interleaved rounds of ~{a.seconds:g} s each, "
          "force_float32, medians in ms per query")
    print(f"{'model':<18}{'batch':>6}{'thr':>4}{'N':>6}{'bench avg':>11}{'bench 1/qps':>12}"
          f"{'loop':>9}{'avg/loop':>10}{'1/qps/loop':>11}  within 5%")
    worst = 0.0
    for arch, batch in (("mobilenetv3-small", 1), ("mobilenetv3-large", 8)):
        _, onnx_path = export_fp32(arch, out_dir=work)
        model_dir = build_model(onnx_path, "force_float32", batch, work / arch)
        for threads in (int(t) for t in a.threads.split(",")):
            avg, per_q, loop, n = compare(model_dir, batch, threads, a.rounds, a.seconds)
            r1, r2 = median_ratio(avg, loop), median_ratio(per_q, loop)
            worst = max(worst, abs(r1 - 1), abs(r2 - 1))
            ok = "yes" if max(abs(r1 - 1), abs(r2 - 1)) <= 0.05 else "NO"
            print(f"{arch:<18}{batch:>6}{threads:>4}{n:>6}{1e3 * median(avg):>11.3f}"
                  f"{1e3 * median(per_q):>12.3f}{1e3 * median(loop):>9.3f}{r1:>10.3f}"
                  f"{r2:>11.3f}  {ok}")
    print(f"largest deviation from the independent loop: {100 * worst:.2f}%")


if __name__ == "__main__":
    main()
