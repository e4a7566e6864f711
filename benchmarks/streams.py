"""How should `mnv3 bench --streams S` run S concurrent requests on ONNX Runtime?

Compares, interleaved (A B C A B C ...), on MobileNetV3 fp32 with 1 intra-op thread per request:
  shared   : S Python threads calling run() on ONE InferenceSession (what mnv3.bench does)
  separate : S InferenceSessions, one thread each
  single   : 1 session with S intra-op threads, 1 request at a time (for reference)
and prints median images/s over the rounds and the median per-round ratio shared/separate.

    python benchmarks/streams.py [--arch mobilenetv3-small] [--batch 1] [--streams 2]
                                 [--seconds 3] [--rounds 5]
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import onnxruntime as ort

from _common import export_fp32, interleave, median, median_ratio


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def throughput(sessions, x, seconds, warmup=10) -> float:
    """images/s with one thread per entry of ``sessions`` (entries may repeat a session)."""
    name = sessions[0].get_inputs()[0].name
    counts = [0] * len(sessions)
    barrier = threading.Barrier(len(sessions) + 1)
    stop = [0.0]

    def work(i, s):
        xi = x.copy()
        for _ in range(warmup):
            s.run(None, {name: xi})
        barrier.wait()
        n = 0
        while time.perf_counter() < stop[0]:
            s.run(None, {name: xi})
            n += 1
        counts[i] = n

    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(sessions)]
    for t in threads:
        t.start()
    stop[0] = time.perf_counter() + 1e9
    barrier.wait()
    t0 = time.perf_counter()
    stop[0] = t0 + seconds
    for t in threads:
        t.join()
    return sum(counts) * x.shape[0] / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="mobilenetv3-small")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    _, onnx_path = export_fp32(a.arch)
    x = np.random.default_rng(0).standard_normal((a.batch, 3, 224, 224), dtype=np.float32)
    one = session(onnx_path, 1)
    configs = {
        "shared": [one] * a.streams,
        "separate": [one] + [session(onnx_path, 1) for _ in range(a.streams - 1)],
        "single": [session(onnx_path, a.streams)],
    }
    res = interleave(configs, a.rounds, lambda name, s: throughput(s, x, a.seconds))
    print(f"{a.arch} fp32 batch {a.batch}, {a.streams} streams x 1 thread, ORT {ort.__version__}, "
          f"{a.rounds} interleaved rounds of {a.seconds:g} s (median images/s)")
    for name, v in res.items():
        print(f"  {name:<9} {median(v):8.1f} images/s   rounds: {', '.join(f'{r:.0f}' for r in v)}")
    print(f"  shared / separate = {median_ratio(res['shared'], res['separate']):.3f}x (median of per-round ratios)")
    print(f"  shared / single   = {median_ratio(res['shared'], res['single']):.3f}x")


if __name__ == "__main__":
    main()
