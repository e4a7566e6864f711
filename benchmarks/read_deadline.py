"""What the read deadline (issue 19, ``mnv3.data.deadline``) costs ``mnv3 infer``: images/s.

Every image is read on a reader thread that the decode thread waits for with a deadline, instead
of by the decode thread itself. Measured interleaved, round after round in one process
(DESIGN.md: 2-vCPU speed is bimodal), switching ``MNV3_READ_TIMEOUT`` between rounds:

* ``deadline``   : the default (60 s): reads hand off to the reader threads (read ahead);
* ``no deadline``: ``MNV3_READ_TIMEOUT=0``: reads on the decode threads, as before issue 19.

for ``decode only`` (the threaded loader alone, where the hand-off weighs most) and
``end to end`` (``mnv3.infer`` over the images with a seeded random MobileNetV3-Small,
force_float32, batch 8; ``--arch`` and ``--decode`` change the model and the decoder). Printed:
medians and the median of per-round ratios, with the CPU's ISA and the load average.

``--baseline-src DIR`` adds decode-only rounds of another source tree (e.g. ``../main/src``,
the code before the deadline, which let Pillow read the open file itself) in child processes,
alternated with this tree's.

    python benchmarks/read_deadline.py [--images 500] [--rounds 5] [--workers 2] \
        [--arch mobilenetv3-small] [--decode exact|native|fast]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import export_fp32, interleave, median, median_ratio  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/datasets/imagenet-sample-500"
CONFIGS = {"deadline": "", "no deadline": "0"}
CHILD = """
import sys, time
from pathlib import Path
from mnv3.data.datasets import Sample
from mnv3.data.loader import iter_batches
from mnv3.meta import PreprocessCfg
files = sorted(Path(sys.argv[1]).iterdir())[:int(sys.argv[2])]
t, cpu = time.perf_counter(), time.process_time()
n = sum(len(b.samples) for b in iter_batches([Sample(f) for f in files],
        PreprocessCfg(resize=256, crop=224), 8, workers=int(sys.argv[3])))
print(n / (time.perf_counter() - t), 1e3 * (time.process_time() - cpu) / n)
"""


def samples(n: int):
    from mnv3.data.datasets import demo_dataset, load_dataset

    if (SAMPLE / "labels.txt").is_file():
        return load_dataset(SAMPLE / "images", SAMPLE / "labels.txt")[:n]
    print(f"{SAMPLE} not found: using the bundled demo set", file=sys.stderr)
    return demo_dataset()


CPU_MS: dict[str, list[float]] = {}  # CPU ms per image (all threads) of each in-process run


def timed(label: str, n: int, fn) -> float:
    """images/s of ``fn()``; also records its CPU ms per image, which other jobs on the machine
    disturb much less than wall time."""
    t, cpu = time.perf_counter(), time.process_time()
    fn()
    CPU_MS.setdefault(label, []).append(1e3 * (time.process_time() - cpu) / n)
    return n / (time.perf_counter() - t)


def decode_only(data, cfg, workers: int, decode: str) -> int:
    from mnv3.data.loader import iter_batches

    return sum(len(b.samples) for b in iter_batches(data, cfg, 8, workers=workers,
                                                    decode=decode))


def child_decode(label: str, src: str, images: Path, n: int, workers: int) -> float:
    env = dict(os.environ, PYTHONPATH=src)
    out = subprocess.run([sys.executable, "-c", CHILD, str(images), str(n), str(workers)],
                         env=env, capture_output=True, text=True, check=True)
    ips, cpu_ms = map(float, out.stdout.strip().splitlines()[-1].split())
    CPU_MS.setdefault(label, []).append(cpu_ms)
    return ips


def report(title: str, res: dict[str, list[float]], base: str) -> None:
    print(title)
    for name, vals in res.items():
        print(f"  {name:>12}: {median(vals):7.2f} (median of {len(vals)}), "
              f"{median_ratio(vals, res[base]):.3f}x {base} (per-round ratios "
              f"{min(a / b for a, b in zip(vals, res[base])):.3f}-"
              f"{max(a / b for a, b in zip(vals, res[base])):.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-src", default=None)
    ap.add_argument("--arch", default="mobilenetv3-small")
    ap.add_argument("--decode", default="exact",
                    help="exact, native (mnv3 build-cpp first) or fast")
    args = ap.parse_args()
    import mnv3
    from mnv3.inference import infer
    from mnv3.sysinfo import cpu_model, int8_isa

    print(f"CPU {cpu_model()}, ISA {int8_isa()}, {args.arch} force_float32 batch 8, "
          f"--decode {args.decode}, {args.workers} decode threads, "
          f"load average at start {os.getloadavg()[0]:.1f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    data = samples(args.images)

    def with_timeout(value: str, fn):
        os.environ["MNV3_READ_TIMEOUT"] = value
        try:
            return fn()
        finally:
            os.environ.pop("MNV3_READ_TIMEOUT", None)

    with tempfile.TemporaryDirectory(prefix="mnv3-deadline-") as tmp:
        _, onnx_path = export_fp32(args.arch, out_dir=tmp)
        model = Path(tmp) / "model"
        mnv3.build(onnx_path, model, quant_mode="force_float32", shape_mutable=False,
                   batch_size=8, options={"progress": False})
        session = mnv3.load(model, spin=False)
        cfg = session.meta.preprocess
        dec = interleave(CONFIGS, args.rounds, lambda k, v: with_timeout(v, lambda: timed(
            f"decode {k}", len(data), lambda: decode_only(data, cfg, args.workers, args.decode))))
        e2e = interleave(CONFIGS, args.rounds, lambda k, v: with_timeout(v, lambda: timed(
            f"infer {k}", len(data), lambda: infer(session, data, Path(tmp) / "out",
                                                   workers=args.workers, progress=False,
                                                   decode=args.decode))))
        session.close()
        report("decode only (loader):", dec, "no deadline")
        report("  CPU ms per image:", {k: CPU_MS[f"decode {k}"] for k in CONFIGS}, "no deadline")
        report("end to end (mnv3.infer):", e2e, "no deadline")
        report("  CPU ms per image:", {k: CPU_MS[f"infer {k}"] for k in CONFIGS}, "no deadline")
        if args.baseline_src:
            srcs = {"this tree": str(Path(mnv3.__file__).resolve().parents[1]),
                    "baseline": str(Path(args.baseline_src).resolve())}
            images = data[0].path.parent
            res = interleave(srcs, args.rounds, lambda k, src: child_decode(
                f"child {k}", src, images, args.images, args.workers))
            report(f"decode only, fresh processes, this tree vs {args.baseline_src}:", res,
                   "baseline")
            report("  CPU ms per image:", {k: CPU_MS[f"child {k}"] for k in srcs}, "baseline")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
