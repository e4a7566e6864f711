"""`mnv3 infer --engine ray` against the local path: same model, same images (issue 18).

Target: on one 2-core machine, Ray with 2 model actors (1 thread each) gives >= 80% of the local
path's end-to-end images/s, with byte-identical result files. The model is a seeded random
MobileNetV3 (speed does not depend on the weights) built force_float32 with a fixed batch.

Measured, interleaved round after round (DESIGN.md: 2-vCPU speed is bimodal), on one local Ray
cluster started once (its start-up, 10-30 s, is printed apart):

* local     : ``mnv3.infer(model_dir, ...)`` (threaded decode overlapping the engine);
* ray N     : ``mnv3.infer(..., engine="ray", workers=N)`` for each N of --workers: images/s
              of the whole call (actor start-up included) and the time to its first result.

Then the per-image costs of a written scale-out model: decode CPU ms (one thread), engine CPU
ms (one thread, the model's batch) and the driver's CPU ms (the Ray run's driver process
time per image from its first result to the end: receiving logits, writing lines). With K
machines of C cores, decoding and the engine are spread, the driver is not, so

    images/s(K) ~= min(K * C * 1000 / (decode_ms + engine_ms), 1000 / driver_ms)

and the script prints it for ImageNet-val (50,000 images) and 10 million images.

    python benchmarks/ray_scale.py [--images 1000] [--rounds 3] [--workers 1,2] \\
        [--arch mobilenetv3-large]

Images: hard links of ../shared/datasets/imagenet-sample-500 (else the bundled demo set),
cycled to --images.
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
    return {"wall": r.processed / wall, "first_s": first[0] - t0,
            "driver_ms": (c0 + cpu - first[1]) * 1e3 / after,
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


def decode_ms(samples, cfg, n: int = 50) -> float:
    c0 = time.process_time()
    for s in samples[:n]:
        preprocess_image(s.path, cfg)
    return (time.process_time() - c0) * 1e3 / min(n, len(samples))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--arch", default="mobilenetv3-large")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    import ray

    with tempfile.TemporaryDirectory(prefix="mnv3-ray-scale-") as tmp:
        tmp = Path(tmp)
        _, onnx_path = export_fp32(args.arch, out_dir=tmp)
        model = tmp / "model"
        mnv3.build(onnx_path, model, quant_mode="force_float32", shape_mutable=False,
                   batch_size=args.batch, options={"progress": False})
        link_images(tmp / "images", args.images)
        samples = load_dataset(tmp / "images", None, None, num_classes=1000)
        workers = [int(w) for w in args.workers.split(",")]
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=(os.cpu_count() or 1) + max(workers),
                 include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        print(f"ray.init (local cluster): {time.perf_counter() - t0:.1f} s")
        configs = {"local": {}, **{f"ray {w}": {"engine": "ray", "workers": w} for w in workers}}
        res = interleave(configs, args.rounds,
                         lambda name, kw: timed_infer(model, samples, tmp / name, **kw))
        report(res, samples, model, tmp, args)
        ray.shutdown()


def report(res, samples, model, tmp: Path, args) -> None:
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores, {isa_label()}); {args.arch} "
          f"force_float32 batch {args.batch}; {len(samples)} images; load "
          f"{os.getloadavg()[0]:.1f}")
    local = [r["wall"] for r in res["local"]]
    print(f"local        : {median(local):.1f} images/s end to end (median of {args.rounds}; "
          f"rounds {min(local):.1f}-{max(local):.1f})")
    for name, rows in res.items():
        if name == "local":
            continue
        wall = [r["wall"] for r in rows]
        ratio = median_ratio(wall, local)
        print(f"{name:<13}: {median(wall):.1f} images/s whole call ({ratio:.2f}x local; rounds {min(wall):.1f}-{max(wall):.1f}), first result after "
              f"{median([r['first_s'] for r in rows]):.1f} s")
        same = all(filecmp.cmp(tmp / "local" / f, tmp / name / f, shallow=False) for f in FILES)
        print(f"{'':<13}  result files byte-identical to local: {same}")
    last = res[list(res)[-1]]
    d_ms = decode_ms(samples, read_meta(model).preprocess)
    e_ms = engine_cpu_ms(model)
    w_ms = median([r["driver_ms"] for r in last])
    print(f"per image: decode {d_ms:.2f} CPU ms, engine {e_ms:.2f} CPU ms (1 thread; the "
          f"actors' engine wall time {median([r['engine_ms'] for r in last]):.2f} ms while "
          f"sharing the cores), driver {w_ms:.2f} CPU ms "
          f"(driver peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
    cores = os.cpu_count() or 1
    cap = 1000 / w_ms
    print(f"model: images/s(K machines of {cores} cores) ~= min(K*{cores}*1000/{d_ms + e_ms:.2f},"
          f" {cap:.0f}); the driver caps it from K = {cap * (d_ms + e_ms) / 1000 / cores:.0f}")
    for k in (1, 4, 16, 64):
        rate = min(k * cores * 1000 / (d_ms + e_ms), cap)
        print(f"  K={k:<3} {rate:8.0f} images/s: ImageNet-val {50_000 / rate / 60:6.1f} min, "
              f"10M images {10_000_000 / rate / 3600:6.2f} h")


if __name__ == "__main__":
    main()
