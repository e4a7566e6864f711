"""Soak (issue 19): does resident memory or latency drift over a long run?

1. ``mnv3 infer`` (the real CLI, in a subprocess) over N images: hard links of the shared
   ImageNet sample, cycled (no extra disk). Its resident memory (VmRSS from /proc) is sampled
   every 0.5 s; printed: at 10%, 50% and 90% of the run, the peak, and the growth per image
   (least-squares slopes over 20-95% and 50-95% of the run). Flat means memory does not grow
   with the number of images (the loader streams and the result lines go to disk as they are made).
2. A steady engine loop for D seconds (what ``mnv3 bench`` measures), one batch per call:
   per-minute p50 / p90 / p99 latency and resident memory at the end of each minute.

    python benchmarks/soak.py [--images 20000] [--duration 600] [--window 60] [--batch 8]
                              [--no-trim]   # infer also without the loader's malloc_trim

The model is a seeded random MobileNetV3-Small (speed does not depend on the weights), built
force_float32 with a fixed batch. Percentiles: numpy's linear interpolation over the calls of
the window. Interpret drift against the machine's noise (DESIGN.md: 2-vCPU speed is bimodal
for minutes at a time): compare the windows' p50 spread with a short repeated run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import export_fp32  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "imagenet-sample-500"


def rss_mb(pid: int | str = "self") -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def link_images(dest: Path, n: int) -> None:
    """``n`` hard links (or copies across filesystems) of the sample's images, cycled."""
    src = sorted((SAMPLE / "images").iterdir()) if SAMPLE.is_dir() else sorted(
        (Path(__file__).resolve().parents[1] / "src/mnv3/data/demo/images").iterdir())
    dest.mkdir(parents=True)
    for i in range(n):
        s = src[i % len(src)]
        target = dest / f"{i:06d}{s.suffix}"
        try:
            os.link(s, target)
        except OSError:
            target.write_bytes(s.read_bytes())


# --no-trim: the CLI with the loader's periodic malloc_trim switched off (mnv3.data.heap), to
# compare resident memory with and without it under the same conditions.
NO_TRIM = ("import sys; import mnv3.data.loader as l; l.TRIM_EVERY = 0; "
           "from mnv3.cli.main import main; sys.exit(main(sys.argv[1:]))")


def soak_infer(model: Path, images: Path, out: Path, trim: bool = True) -> None:
    cmd = [sys.executable, *(["-m", "mnv3.cli.main"] if trim else ["-c", NO_TRIM]), "infer",
           "--model", str(model), "--image-dir", str(images), "--output-dir", str(out),
           "--no-progress"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples = []
    while proc.poll() is None:
        r = rss_mb(proc.pid)
        if r is not None:
            samples.append((time.monotonic() - t0, r))
        time.sleep(0.5)
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        sys.exit(f"mnv3 infer failed ({proc.returncode}): {err[-2000:]}")
    total = time.monotonic() - t0
    at = lambda frac: next((r for t, r in samples if t >= frac * total), samples[-1][1])  # noqa: E731
    n = len(list(images.iterdir()))
    print(f"infer{'' if trim else ' (--no-trim)'}: {n} images in {total:.0f} s "
          f"({n / total:.0f} img/s); resident memory "
          f"{at(0.1):.0f} MB at 10%, {at(0.5):.0f} MB at 50%, {at(0.9):.0f} MB at 90%, "
          f"peak {max(r for _, r in samples):.0f} MB")
    # Growth per image: least-squares slope of resident memory over the second half of the
    # run (the first holds one-off allocations and the allocator's arenas filling up), time
    # turned into images at the run's mean rate.
    for lo in (0.2, 0.5):
        mid = [(t, r) for t, r in samples if lo * total <= t <= 0.95 * total]
        if len(mid) >= 3:
            slope_mb_s = np.polyfit([t for t, _ in mid], [r for _, r in mid], 1)[0]
            print(f"  growth over {lo:.0%}-95% of the run: "
                  f"{slope_mb_s * 1024 / (n / total):.2f} KB per image (least squares)")


def soak_engine(model: Path, duration: float, window: float, batch: int) -> None:
    import mnv3

    session = mnv3.load(model)
    crop = session.meta.preprocess.crop
    x = np.random.default_rng(0).standard_normal((batch, 3, crop, crop), dtype=np.float32)
    for _ in range(20):  # warm-up, reported apart by mnv3 bench; not part of any window
        session.run(x)
    print(f"engine: batch {batch}, {duration:.0f} s, windows of {window:.0f} s "
          "(latency ms per call: p50 p90 p99; resident MB)")
    start = time.perf_counter()
    w, lat = 1, []
    while (now := time.perf_counter()) - start < duration:
        t0 = time.perf_counter()
        session.run(x)
        lat.append(time.perf_counter() - t0)
        if now - start >= w * window:
            p50, p90, p99 = np.percentile(np.array(lat) * 1e3, [50, 90, 99])
            print(f"  window {w}: {p50:.3f} {p90:.3f} {p99:.3f} ms ({len(lat)} calls); "
                  f"{rss_mb():.0f} MB")
            w, lat = w + 1, []
    session.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--window", type=float, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--no-trim", action="store_true",
                    help="also run infer with the loader's malloc_trim off, then with it on")
    args = ap.parse_args()
    import mnv3

    with tempfile.TemporaryDirectory(prefix="mnv3-soak-") as tmp:
        tmp = Path(tmp)
        _, onnx_path = export_fp32("mobilenetv3-small", out_dir=tmp)
        model = tmp / "model"
        mnv3.build(onnx_path, model, quant_mode="force_float32", shape_mutable=False,
                   batch_size=args.batch, options={"progress": False})
        link_images(tmp / "images", args.images)
        if args.no_trim:
            soak_infer(model, tmp / "images", tmp / "out-no-trim", trim=False)
        soak_infer(model, tmp / "images", tmp / "out")
        if args.duration > 0:
            soak_engine(model, args.duration, args.window, args.batch)


if __name__ == "__main__":
    main()
