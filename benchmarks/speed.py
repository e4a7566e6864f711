"""The report's speed table for MobileNetV3-Large and -Small at batch 1 and 8, 1 and 2 threads.

Runs ``mnv3.run_all`` (the code behind ``mnv3 run``) per network and thread count, so the
figures are exactly the report's: every mnv3 build is measured interleaved with the two
baselines of the same batch (PyTorch eager fp32 channels_last + inference_mode, and a plain ONNX
Runtime session on the exported fp32 ONNX), in ``--rounds`` rounds of ``--duration`` seconds,
all on the same pre-filled input and threads; the ratios compare figures from the same rounds.
Builds are reused between thread counts and reruns (``--work``). Accuracy is not the point
here (random weights: speed does not depend on their values; 4 demo images for the eval step).

A second table puts each build's 1-thread, 2-thread and ``--streams`` x 1-thread figures side
by side (2-thread synchronous speed on these 2-vCPU VMs is bimodal; the other two are stable).

    python benchmarks/speed.py [--archs mobilenetv3-large,mobilenetv3-small] [--batches 1,8]
        [--threads 1,2] [--modes force_float32,force_float16,qint8_mixed_float16]
        [--rounds 3] [--duration 1.0] [--streams 2] [--work /tmp/mnv3-speed]
"""

from __future__ import annotations

import argparse
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="mobilenetv3-large,mobilenetv3-small")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--modes", default="force_float32,force_float16,qint8_mixed_float16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--streams", type=int, default=2, help="0: skip the streams figures")
    ap.add_argument("--work", default="/tmp/mnv3-speed")
    a = ap.parse_args()

    from mnv3.pipeline import run_all
    from mnv3.report import BASELINE_ORT, BASELINE_TORCH
    from mnv3.sysinfo import system_info

    info = system_info()
    v = info["versions"]
    print(f"machine: {info['cpu_model']}, {info['cores']['usable']} usable cores "
          f"({' '.join(info['cpu_features'])}); onnxruntime {v.get('onnxruntime')}, "
          f"torch {v.get('torch')}")
    print(f"each figure: {a.rounds} interleaved rounds x {a.duration:g} s, 1 stream; "
          "ratios = mnv3 images/s / baseline images/s in the same rounds; other load = cores "
          "other processes took while mnv3 was measured\n")
    print("| model | batch | threads | QuantMode_ShapeMutable_BatchSize | mnv3 images/s | "
          "p95 ms | PyTorch eager fp32 | x PyTorch | ORT plain fp32 | x ORT plain | other load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    summary: dict = {}
    for arch in a.archs.split(","):
        for threads in (int(t) for t in a.threads.split(",")):
            rep = run_all(arch=arch, threads=threads, quant_modes=a.modes.split(","),
                          batch_sizes=[int(b) for b in a.batches.split(",")], image_num=4,
                          bench_rounds=a.rounds, bench_duration=a.duration,
                          out=f"{a.work}/{arch}", progress=False)
            for row in rep.rows:
                torch_b = rep.baseline(BASELINE_TORCH, row.batch)
                ort_b = rep.baseline(BASELINE_ORT, row.batch)
                ips = row.bench.throughput_ips
                print(f"| {arch} | {row.batch} | {threads} | {row.name} | {ips:.1f} | "
                      f"{row.bench.latency_ms.p95:.2f} | {torch_b.throughput_ips:.1f} | "
                      f"{ips / torch_b.throughput_ips:.2f}x | {ort_b.throughput_ips:.1f} | "
                      f"{ips / ort_b.throughput_ips:.2f}x | {_load(row.bench)} |", flush=True)
                summary.setdefault((arch, row.name, row.model_dir, row.batch), {})[threads] = ips
    if a.streams:
        _streams(summary, a)
    _summary(summary, a)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


def _load(bench) -> str:
    """Cores other processes took while this was measured (see benchmarks/README.md)."""
    v = bench.other_cpu_load
    return "?" if v is None else f"{v:.2f}"


def _streams(summary: dict, a) -> None:
    """``--streams`` concurrent requests x 1 thread on one session, rounds interleaved."""
    import mnv3
    from mnv3.bench import benchmark, merge_results

    sessions = {k: mnv3.load(k[2], threads=1) for k in summary}
    runs: dict = {k: [] for k in summary}
    for _ in range(a.rounds):
        for k, sess in sessions.items():
            runs[k].append(benchmark(sess, batch=k[3], threads=1, streams=a.streams,
                                     duration=a.duration, warmup=5))
    for k, results in runs.items():
        summary[k]["streams"] = merge_results(results).throughput_ips
        sessions[k].close()


def _summary(summary: dict, a) -> None:
    threads = [int(t) for t in a.threads.split(",")]
    cols = [f"{t} thread{'s' if t > 1 else ''}" for t in threads]
    if a.streams:
        cols.append(f"{a.streams} streams x 1 thread")
    print("\nimages/s per build, side by side\n")
    print("| model | QuantMode_ShapeMutable_BatchSize | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for (arch, name, _, _), v in summary.items():
        cells = [f"{v[t]:.1f}" if t in v else "n/a" for t in threads]
        if a.streams:
            cells.append(f"{v['streams']:.1f}")
        print(f"| {arch} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
