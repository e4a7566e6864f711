"""How should `mnv3 bench --streams S` serve S concurrent requests on ONNX Runtime?

Measured with mnv3's own benchmark on an mnv3 force_float32 build, interleaved (A B C A B C):
  shared   : S threads calling run() on ONE session opened with 1 intra-op thread
  separate : S sessions (S mnv3.load calls, 1 intra-op thread each), one thread each
  single   : 1 session with S intra-op threads, 1 request at a time (for reference)
and prints median images/s over the rounds and median per-round ratios.

    python benchmarks/streams.py [--arch mobilenetv3-small] [--batch 1] [--streams 2]
                                 [--seconds 2] [--rounds 6] [--work /tmp/mnv3-bench]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import build_model, export_fp32, interleave, median, median_ratio


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="mobilenetv3-small")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--work", default="/tmp/mnv3-bench")
    a = ap.parse_args()

    import mnv3
    from mnv3.bench import benchmark

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    _, onnx_path = export_fp32(a.arch, out_dir=work)
    model = build_model(onnx_path, "force_float32", a.batch, work / a.arch)
    one = [mnv3.load(model, threads=1) for _ in range(a.streams)]
    wide = mnv3.load(model, threads=a.streams)
    configs = {
        "shared": dict(session=one[0], streams=a.streams),
        "separate": dict(session=one[0], streams=a.streams, stream_sessions=one),
        "single": dict(session=wide, streams=1),
    }
    loads: list[float] = []

    def measure(name, cfg):
        r = benchmark(cfg["session"], batch=a.batch, streams=cfg["streams"], duration=a.seconds,
                      warmup=5, first_run=False, stream_sessions=cfg.get("stream_sessions"))
        loads.append(r.other_cpu_load or 0.0)
        return r.throughput_ips

    res = interleave(configs, a.rounds, measure)
    print(f"{a.arch} force_float32 batch {a.batch}: {a.streams} streams x 1 thread vs 1 stream x "
          f"{a.streams} threads; {a.rounds} interleaved rounds of {a.seconds:g} s; other "
          f"processes took a median {median(loads):.2f} cores meanwhile")
    for name, v in res.items():
        print(f"  {name:<9}{median(v):9.1f} images/s   rounds: "
              + ", ".join(f"{r:.0f}" for r in v))
    print(f"  shared / separate = {median_ratio(res['shared'], res['separate']):.3f}x "
          "(median of per-round ratios)")
    print(f"  shared / single   = {median_ratio(res['shared'], res['single']):.3f}x")


if __name__ == "__main__":
    main()
