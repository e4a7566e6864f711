"""`mnv3 infer --engine ray` against the local path: same model, same images (issue 18).

Target: on one 2-core machine, Ray with 2 model actors (1 thread each) gives >= 80% of the local
path's end-to-end images/s, with byte-identical result files. The model is a seeded random
MobileNetV3 (speed does not depend on the weights) built force_float32 with a fixed batch.

Measured, interleaved round after round (DESIGN.md: 2-vCPU speed is bimodal), on one local Ray
cluster started once (its start-up, 10-30 s, is printed apart):

* local     : ``mnv3.infer(model_dir, ...)`` (threaded decode overlapping the engine);
* ray N     : ``mnv3.infer(..., engine="ray", workers=N)`` for each N of --workers: images/s
              of the whole call (actor start-up included) and the time to its first result.

Then the costs of a written scale-out model: decode CPU ms per image (one thread), engine CPU
ms per image (one thread, the model's batch) and the driver's CPU (the Ray run's driver process
from its first result to the end: receiving logits, writing lines). With K machines of C cores,
decoding and the engine are spread, the driver is not, so

    images/s(K) ~= min(K * C * 1000 / (decode_ms + engine_ms), driver cap)

and the script prints it for ImageNet-val (50,000 images) and 10 million images.

    python benchmarks/ray_scale.py [--images 1000] [--rounds 3] [--workers 1,2] \\
        [--arch mobilenetv3-large] [--probe-images 4000] [--decode exact|native]

``--decode native`` runs the local path, the Ray runs and the per-image decode cost with the
native decoder (the exact pixels in C++, ``mnv3.data.native_decode``; ``mnv3 build-cpp`` first).

Images: hard links of ../shared/datasets/imagenet-sample-500 (else the bundled demo set),
cycled to --images.

The driver cap: the driver's CPU is part per image and part per second (Ray's polling, whatever
the rate), and one rate cannot tell them apart. So a probe run (``--probe-images``; 0 skips it)
takes Ray with a network that costs almost nothing (one small convolution and a 1000-class head
on 32x32 inputs) over 40x30 PNG copies of the images, in the same interleaved rounds: images
then flow as fast as Ray Data moves them, several times the real model's rate. A line
``cores busy = a + b x images/s`` fitted over every Ray round (the real model's and the
probe's) gives the cap where it reaches one core, ``(1 - a) / b``; without the probe, all of
the driver's CPU is counted per image (a lower cap).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import export_fp32, interleave, median, median_ratio  # noqa: E402
from soak import link_images  # noqa: E402

import mnv3  # noqa: E402
from mnv3.data.datasets import load_dataset  # noqa: E402
from mnv3.data.preprocess import preprocess_image  # noqa: E402
from mnv3.results import ResultWriter  # noqa: E402
from mnv3.meta import read_meta  # noqa: E402
from mnv3.sysinfo import cpu_model, isa_label  # noqa: E402

FILES = ("eval_result_1.txt", "eval_result_5.txt", "results.jsonl")
PROBE_SIZE = 32  # the probe network's input size


def timed_infer(model, samples, out, **kw) -> dict:
    """Images/s of the whole call, seconds to the first result (for Ray: the actors' start-up
    and the first block), engine ms and the driver's CPU ms per image after the first result."""
    first = []
    real_add = ResultWriter.add

    def add(self, batch, logits):  # when the first results reach the driver (wall, CPU, count)
        first or first.extend((time.perf_counter(), time.process_time(), len(batch)))
        return real_add(self, batch, logits)

    ResultWriter.add = add
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        r = mnv3.infer(model, samples, out, progress=False, **kw)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        ResultWriter.add = real_add
    after = r.processed - first[2]  # images that arrived after the first batch
    after_s, after_cpu = t0 + wall - first[0], c0 + cpu - first[1]
    return {"wall": r.processed / wall, "first_s": first[0] - t0,
            "steady": after / after_s,  # images/s once the first result is in
            "driver_ms": after_cpu * 1e3 / after,
            "driver_share": after_cpu / after_s,  # cores the driver kept busy meanwhile
            "engine_ms": r.engine_seconds * 1e3 / r.processed}


def engine_cpu_ms(model: Path, calls: int = 10) -> float:
    """CPU ms per image of one engine thread at the model's batch (process time, so the other
    jobs of a shared machine disturb it little; the actors' wall time does not say this)."""
    import numpy as np

    with mnv3.load(model, threads=1) as session:
        x = np.zeros(session.meta.input_shape, dtype=np.float32)
        session.run(x)  # the cold first call, not counted
        c0 = time.process_time()
        for _ in range(calls):
            session.run(x)
        return (time.process_time() - c0) * 1e3 / (calls * x.shape[0])


def decode_ms(samples, cfg, n: int = 50, decode: str = "exact") -> float:
    if decode == "native":
        from mnv3.data.native_decode import decoder

        one = decoder(cfg).file
    else:
        def one(path):
            return preprocess_image(path, cfg)
    c0 = time.process_time()
    for s in samples[:n]:
        one(s.path)
    return (time.process_time() - c0) * 1e3 / min(n, len(samples))


def build_probe_model(model: Path, batch: int, tmp: Path) -> None:
    """A 1000-class network that costs almost nothing (the probe): the driver then receives
    logits of the real size as fast as the pipeline can deliver them."""
    import torch
    from torch import nn

    from mnv3.export import export_onnx
    from mnv3.meta import PreprocessCfg

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 1000)).eval()
    export_onnx(net, tmp / "probe.onnx", dynamic_batch=True, image_size=PROBE_SIZE)
    mnv3.build(tmp / "probe.onnx", model, quant_mode="force_float32", shape_mutable=False,
               batch_size=batch, preprocess=PreprocessCfg(resize=PROBE_SIZE, crop=PROBE_SIZE),
               options={"progress": False})


def probe_images(dest: Path, n: int) -> None:
    """``n`` images for the probe: 40x30 PNG copies of the sample's first 50, cycled (hard links)."""
    from PIL import Image

    small = dest.parent / "probe-src"
    link_images(small / "full", min(n, 50))
    sources = []
    for f in sorted((small / "full").iterdir()):
        sources.append(small / (f.stem + ".png"))
        with Image.open(f) as img:
            img.convert("RGB").resize((40, 30)).save(sources[-1])
    dest.mkdir(parents=True)
    for i in range(n):
        os.link(sources[i % len(sources)], dest / f"{i:06d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--arch", default="mobilenetv3-large")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--probe-images", type=int, default=4000,
                    help="images of the near-free probe run (0: no probe; see the docstring)")
    ap.add_argument("--decode", default="exact", choices=("exact", "native"),
                    help="how the local path and the Ray decode tasks decode (default exact)")
    args = ap.parse_args()
    import ray

    with tempfile.TemporaryDirectory(prefix="mnv3-ray-scale-") as tmp:
        tmp = Path(tmp)
        model = tmp / "model"
        _, onnx_path = export_fp32(args.arch, out_dir=tmp)
        mnv3.build(onnx_path, model, quant_mode="force_float32", shape_mutable=False,
                   batch_size=args.batch, options={"progress": False})
        link_images(tmp / "images", args.images)
        samples = load_dataset(tmp / "images", None, None, num_classes=1000)
        workers = [int(w) for w in args.workers.split(",")]
        how = {"decode": args.decode}
        configs = {"local": (model, samples, how),
                   **{f"ray {w}": (model, samples, {"engine": "ray", "workers": w, **how})
                      for w in workers}}
        if args.probe_images:
            build_probe_model(tmp / "probe", args.batch, tmp)
            probe_images(tmp / "probe-images", args.probe_images)
            configs["probe ray"] = (tmp / "probe", load_dataset(
                tmp / "probe-images", None, None, num_classes=1000),
                {"engine": "ray", "workers": max(workers)})
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=(os.cpu_count() or 1) + max(workers),
                 include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        print(f"ray.init (local cluster): {time.perf_counter() - t0:.1f} s")
        res = interleave(configs, args.rounds,
                         lambda name, c: timed_infer(c[0], c[1], tmp / name, **c[2]))
        report(res, samples, model, tmp, args)
        ray.shutdown()


def driver_line(rows: list[dict]) -> tuple[float, float]:
    """Least squares of the driver's CPU share against images/s over the Ray runs' rounds:
    (cores busy whatever the rate, CPU ms per image)."""
    import numpy as np

    rate = np.array([r["steady"] for r in rows])
    share = np.array([r["driver_share"] for r in rows])
    per_image, fixed = np.polyfit(rate, share, 1)
    return float(fixed), float(per_image) * 1e3


def report(res, samples, model, tmp: Path, args) -> None:
    most = max(int(w) for w in args.workers.split(","))  # the probe ran with this many actors
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores, {isa_label()}); {args.arch} "
          f"force_float32 batch {args.batch}; {len(samples)} images; decode {args.decode}; load "
          f"{os.getloadavg()[0]:.1f}")
    local = [r["wall"] for r in res["local"]]
    print(f"local        : {median(local):.1f} images/s end to end (median of {args.rounds}; "
          f"rounds {min(local):.1f}-{max(local):.1f})")
    for name, rows in res.items():
        if name == "local":
            continue
        wall = [r["wall"] for r in rows]
        if name == "probe ray":
            print(f"{name:<13}: near-free network, {args.probe_images} images of 40x30 pixels, "
                  f"{most} actors")
        else:
            print(f"{name:<13}: {median(wall):.1f} images/s whole call "
                  f"({median_ratio(wall, local):.2f}x local; rounds {min(wall):.1f}-"
                  f"{max(wall):.1f}), first result after "
                  f"{median([r['first_s'] for r in rows]):.1f} s")
        print(f"{'':<13}  after the first result: {median([r['steady'] for r in rows]):.1f} "
              f"images/s, driver {median([r['driver_ms'] for r in rows]):.2f} CPU ms per image"
              f" = {median([r['driver_share'] for r in rows]):.2f} of a core")
        if name != "probe ray":
            same = all(filecmp.cmp(tmp / "local" / f, tmp / name / f, shallow=False)
                       for f in FILES)
            print(f"{'':<13}  result files byte-identical to local: {same}")
    last = res[f"ray {most}"]
    d_ms = decode_ms(samples, read_meta(model).preprocess, decode=args.decode)
    e_ms = engine_cpu_ms(model)
    print(f"per image: decode {d_ms:.2f} CPU ms, engine {e_ms:.2f} CPU ms (1 thread; the "
          f"actors' engine wall time {median([r['engine_ms'] for r in last]):.2f} ms while "
          f"sharing the cores) (driver peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
    ray_rows = [r for name, rows in res.items() if name != "local" for r in rows]
    if "probe ray" in res:  # two rates far apart: the line is fitted, not extrapolated
        fixed, per_image = driver_line(ray_rows)
        cap = (1 - fixed) * 1000 / per_image
        print(f"driver: {fixed * 1e3:.0f} CPU ms per second + {per_image:.2f} CPU ms per image "
              f"(least squares over {len(ray_rows)} Ray rounds at "
              f"{min(r['steady'] for r in ray_rows):.0f}-{max(r['steady'] for r in ray_rows):.0f}"
              f" images/s): one core at {cap:.0f} images/s")
    else:  # one rate only: everything counted per image (a lower cap)
        cap = 1000 / median([r["driver_ms"] for r in last])
        print(f"driver: {1000 / cap:.2f} CPU ms per image at one rate (no probe): "
              f"one core at {cap:.0f} images/s")
    cores = os.cpu_count() or 1
    print(f"model: images/s(K machines of {cores} cores) ~= min(K*{cores}*1000/{d_ms + e_ms:.2f},"
          f" {cap:.0f}); the driver caps it from K = {cap * (d_ms + e_ms) / 1000 / cores:.0f}")
    for k in (1, 4, 16, 64):
        rate = min(k * cores * 1000 / (d_ms + e_ms), cap)
        print(f"  K={k:<3} {rate:8.0f} images/s: ImageNet-val {50_000 / rate / 60:6.1f} min, "
              f"10M images {10_000_000 / rate / 3600:6.2f} h")


if __name__ == "__main__":
    main()
