"""Is a batch answered sooner whole, or split into sub-batches run at once? (`--split S`)

One query in flight (the latency objective): a batch of B images either runs as one request
with all the cores' threads (what benchmark_app's latency hint does), or as S sub-batches of
B/S, one request per stream of one thread each, started together and waited for together
(``mnv3.load(model, split=S)``). Measured with mnv3's own benchmark on mnv3 OpenVINO builds
(seeded random weights: speed does not depend on them), interleaved rounds, printing median
images/s, the median per-round ratio and the CPU's int8 ISA class.

    python benchmarks/split_batch.py [--archs mobilenetv3-large,mobilenetv3-small]
        [--modes qint8_mixed_float32,force_float32] [--batch 8] [--split 2] [--seconds 2]
        [--rounds 6] [--work /tmp/mnv3-bench] [--calib-dir DIR]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from _common import build_model, export_fp32, interleave, median, median_ratio


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="mobilenetv3-large,mobilenetv3-small")
    ap.add_argument("--modes", default="qint8_mixed_float32,force_float32")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--split", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--work", default="/tmp/mnv3-bench")
    ap.add_argument("--calib-dir", default=None, help="int8 calibration images (default: the "
                    "bundled demo images)")
    a = ap.parse_args(argv)

    import mnv3
    from mnv3.bench import benchmark
    from mnv3.sysinfo import cpu_model, isa_label

    work = Path(a.work)
    configs = {}
    for arch in a.archs.split(","):
        _, onnx_path = export_fp32(arch, out_dir=work)
        for mode in a.modes.split(","):
            model = build_model(onnx_path, mode, a.batch, work / f"{arch}-openvino",
                                calib_dir=a.calib_dir, backend="openvino")
            threads = a.split  # the same cores either way
            configs[f"{arch} {mode} whole"] = mnv3.load(model, threads=threads, streams=1)
            configs[f"{arch} {mode} split"] = mnv3.load(model, threads=1, split=a.split)

    def measure(name, session):
        return benchmark(session, batch=a.batch, duration=a.seconds, warmup=3,
                         first_run=False).throughput_ips

    res = interleave(configs, a.rounds, measure)
    print(f"{cpu_model()}, {os.cpu_count()} vCPU, int8 ISA: {isa_label()}; OpenVINO, batch "
          f"{a.batch}, one query in flight: whole = 1 request x {a.split} threads, split = "
          f"{a.split} sub-batches of {a.batch // a.split}, 1 thread each; {a.rounds} "
          f"interleaved rounds of {a.seconds:g} s")
    for name in configs:
        if name.endswith(" whole"):
            key = name[:-len(" whole")]
            whole, split = res[name], res[f"{key} split"]
            print(f"  {key}: whole {median(whole):.1f}, split {median(split):.1f} images/s; "
                  f"split / whole {median_ratio(split, whole):.3f}x (per-round "
                  f"{min(s / w for s, w in zip(split, whole)):.2f}-"
                  f"{max(s / w for s, w in zip(split, whole)):.2f})")
    for session in configs.values():
        session.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
