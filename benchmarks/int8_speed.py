"""Issue 3's speed target: our qint8 build vs our force_float32 build of MobileNetV3-Large.

Builds MobileNetV3-Large (random seeded weights: speed does not depend on their values) with a
fixed batch of 1 and of 8 in each mode, then measures them with ``mnv3.bench.benchmark``
interleaved (A B A B ..., same process, same threads) because 2-thread speed on these shared
2-vCPU machines drifts for minutes at a time (DESIGN.md). Prints per batch and thread count the
median images/s of each mode over the rounds and the ratio to force_float32 (>1 = faster).
Target: qint8 not slower than force_float32 at batch 1 and 8 (ratio >= 1.0); aim 1.3.

    python benchmarks/int8_speed.py                         # fp32 vs qint8_mixed_float32
    python benchmarks/int8_speed.py --modes force_float32,qint8_mixed_float32,force_float16
    python benchmarks/int8_speed.py --arch mobilenetv3-small --rounds 9 --json speed.json
    python benchmarks/int8_speed.py --variant 'first3={"float_first": 3}'   # an int8 recipe
    python benchmarks/int8_speed.py --backend openvino --arch mobilenetv3-small --layout seed \
        --variant 'matmul8={"ignored_types": []}'    # OpenVINO's MatMuls (SE, classifier) int8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import mnv3
import mnv3.meta
from mnv3.bench import benchmark
from mnv3.sysinfo import isa_label

DEFAULT_MODES = "force_float32,qint8_mixed_float32"


def build_all(arch: str, out: Path, modes, batches, variants: dict,
              backend: str = "onnxruntime", layout: str = "torchvision") -> dict[tuple, Path]:
    """Builds per (label, batch); a label is a mode, or a variant name = qint8_mixed_float32
    built with that variant's options."""
    from mnv3.export import export_onnx
    from mnv3.models import create_model

    model = create_model(arch, layout, seed=0)
    onnx_path = out / f"{arch}.onnx"
    export_onnx(model, onnx_path, dynamic_batch=True)
    dirs = {}
    for label in modes:
        mode, options = ("qint8_mixed_float32", variants[label]) if label in variants \
            else (label, {})
        for b in batches:
            d = out / f"{label}_false_{b}".replace(" ", "_")
            # calibration: the bundled demo images (ranges only; accuracy is not measured here)
            mnv3.build(onnx_path, d, quant_mode=mode, shape_mutable=False, batch_size=b,
                       preprocess=model.preprocess, backend=backend,
                       # speed of the int8 recipe itself: no accuracy budget (seeded random
                       # weights), no float shipped in its place
                       options={"progress": False, "allow_below_budget": True,
                                "speed_check": False, **options})
            dirs[(label, b)] = d
    return dirs


def measure(dirs, modes, batch: int, threads: int, rounds: int, seconds: float) -> dict:
    """Interleaved rounds; returns mode -> list of images/s, one per round."""
    sessions = {m: mnv3.load(dirs[(m, batch)], threads=threads) for m in modes}
    for s in sessions.values():  # warm every session before the first timed round
        benchmark(s, iterations=20, warmup=5, first_run=False)
    ips = {m: [] for m in modes}
    for _ in range(rounds):
        for m in modes:
            r = benchmark(sessions[m], duration=seconds, iterations=10**9, warmup=3,
                          first_run=False)
            ips[m].append(r.throughput_ips)
    return ips


def profile(model_dir: Path, runs: int = 30, top: int = 8) -> None:
    """Print where one-thread time goes, per op type, from ORT's profiler (the graph ORT runs)."""
    import collections

    import numpy as np
    import onnxruntime as ort

    meta = mnv3.meta.read_meta(model_dir)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.enable_profiling = 1, True
    so.profile_file_prefix = str(model_dir / "profile")
    sess = ort.InferenceSession(str(model_dir / meta.compiled_file), so)
    x = np.random.default_rng(0).random(
        [meta.batch_size, *meta.input_shape[1:]], dtype=np.float32)
    for _ in range(runs):
        sess.run(None, {meta.input_name: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    time_of, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            time_of[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    total = sum(time_of.values())
    print(f"\n{model_dir.name}: {total / runs / 1e3:.1f} ms per batch of {meta.batch_size} "
          "(ORT profiler, 1 thread), share per op type:")
    for op, t in time_of.most_common(top):
        print(f"  {op:22s} {100 * t / total:5.1f}%  ({count[op] // runs} nodes)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="mobilenetv3-large")
    ap.add_argument("--modes", default=DEFAULT_MODES)
    ap.add_argument("--backend", default="onnxruntime", help="the engine every mode is built for")
    ap.add_argument("--layout", default="torchvision",
                    help="the network's layout: torchvision (SE blocks as 1x1 convolutions) or "
                    "seed (kuan-wang's, SE blocks as Linear layers, i.e. MatMul)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.5, help="per mode per round")
    ap.add_argument("--out", type=Path, default=Path("data/bench/int8_speed"))
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help='extra int8 build with options, e.g. first3=\'{"float_first": 3}\'')
    ap.add_argument("--profile", action="store_true", help="also print per-op time shares")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    variants = {v.split("=", 1)[0]: json.loads(v.split("=", 1)[1]) for v in args.variant}
    modes = [m for m in args.modes.split(",") if m] + list(variants)
    base = modes[0]
    batches = [int(b) for b in args.batches.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    dirs = build_all(args.arch, args.out, modes, batches, variants, args.backend, args.layout)
    print(f"built {len(dirs)} models in {time.perf_counter() - t:.0f} s")
    rows = []
    meta = mnv3.meta.read_meta(next(iter(dirs.values())))
    print(f"\n{args.arch} ({args.layout} layout), {meta.backend} {meta.backend_version} CPU ({isa_label()}), fixed batch, {args.rounds} interleaved rounds of {args.seconds} s per mode; "
          f"median images/s (ratio to {base})")
    for threads in [int(t) for t in args.threads.split(",")]:
        for b in batches:
            ips = measure(dirs, modes, b, threads, args.rounds, args.seconds)
            med = {m: statistics.median(v) for m, v in ips.items()}
            cells = "  ".join(f"{m} {med[m]:8.1f} ({med[m] / med[base]:.2f}x)" for m in modes)
            print(f"threads {threads} batch {b}: {cells}", flush=True)
            rows.append({"threads": threads, "batch": b, "images_per_s": ips, "median": med,
                         "ratio_to_" + base: {m: med[m] / med[base] for m in modes}})
    if args.profile:
        for label in modes:
            profile(dirs[(label, batches[-1])])
    if args.json:
        args.json.write_text(json.dumps({"arch": args.arch, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
