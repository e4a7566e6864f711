"""Resident memory of the threaded decoder against the number of images, per malloc setting.

Issue 19 item 1: ``mnv3 infer``'s resident memory grew ~0.75 KB per image while Python's heap
stayed flat, and the growth stopped with ``MALLOC_ARENA_MAX=1``: glibc's malloc arenas of the
decode threads. Each candidate runs the real loader (``mnv3.data.loader.iter_batches``, exact
decode, W threads) in a fresh process over N images (the shared sample, cycled) and prints its
resident memory after 500, 1,000, 2,000, 5,000, ... images (VmRSS then, and VmHWM: the peak
so far, which a periodic trim cannot hide) and its images/s:

* ``main``     : the loader as it is (the product's own fix, if any, included);
* ``none``     : with the product's fix switched off (``mnv3.data.loader.TRIM_EVERY = 0``);
* ``arena1/2`` : ``none`` plus ``mallopt(M_ARENA_MAX, 1 or 2)`` before the threads start;
* ``trimK``    : ``none`` plus ``malloc_trim(0)`` every K images, from the consuming thread;
* ``mmap``     : ``none`` plus a fixed ``M_MMAP_THRESHOLD`` of 128 KiB (no dynamic raise).

    python benchmarks/decode_memory.py [--images 20000] [--candidates main,none,arena1]
    python benchmarks/decode_memory.py --speed --images 1000 --rounds 4   # interleaved img/s

``--speed`` alternates the candidates round after round (fresh processes, same order every
round) and prints the median of per-round ratios against the first candidate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/datasets/imagenet-sample-500"
CHECKPOINTS = (500, 1000, 2000, 5000, 10000, 20000, 50000)


def rss_mb(field: str = "VmRSS") -> float:
    """Resident MB now (VmRSS) or at its peak so far (VmHWM)."""
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith(field + ":"))


def arenas() -> tuple[int, float, float, float]:
    """glibc's own account (malloc_info): (arenas, MB they hold from the system, MB of that
    free in their bins, MB in mmapped chunks)."""
    import ctypes
    import re

    from mnv3.data import heap

    libc = heap.glibc()
    libc.fopen.restype = ctypes.c_void_p  # a FILE*, not the default int
    with tempfile.NamedTemporaryFile("r", suffix=".xml") as tmp:
        fp = libc.fopen(tmp.name.encode(), b"w")
        libc.malloc_info(0, ctypes.c_void_p(fp))
        libc.fclose(ctypes.c_void_p(fp))
        xml = tmp.read()
    heaps = re.findall(r'<heap nr="\d+">(.*?)</heap>', xml, re.S)
    tail = xml[xml.rindex("</heap>"):]

    def size(text: str, kind: str, attr: str = "total") -> int:
        return sum(int(x) for x in re.findall(rf'<{attr} type="{kind}" count="\d+" size="(\d+)"'
                                              if attr == "total" else
                                              rf'<{attr} type="{kind}" size="(\d+)"', text))

    system = sum(size(h, "current", "system") for h in heaps)
    free = sum(size(h, "fast") + size(h, "rest") for h in heaps)
    return len(heaps), system / 2**20, free / 2**20, size(tail, "mmap") / 2**20


def child(candidate: str, n: int, workers: int, model: str | None) -> dict:
    """Run in a fresh process: apply the candidate, decode n images (or ``mnv3.infer`` them
    with ``model``), report RSS at the checkpoints and the speed."""
    from mnv3.data import heap, loader
    from mnv3.data.datasets import Sample, demo_dataset
    from mnv3.meta import PreprocessCfg

    trim_every = 0
    if candidate != "main":
        loader.TRIM_EVERY = 0
    if candidate.startswith("arena"):
        assert heap.mallopt(heap.M_ARENA_MAX, int(candidate[5:]))
    elif candidate.startswith("trim"):
        trim_every = int(candidate[4:])
    elif candidate == "mmap":
        assert heap.mallopt(heap.M_MMAP_THRESHOLD, 128 << 10)
    trims = []  # seconds of each malloc_trim the product's loader made (candidate main)
    real_trim = heap.malloc_trim

    def timed_trim():
        t = time.perf_counter()
        real_trim()
        trims.append(time.perf_counter() - t)

    heap.malloc_trim = timed_trim
    rss, state = {}, {"done": 0, "next_trim": trim_every}
    marks = [c for c in CHECKPOINTS if c <= n]

    def count(k: int) -> None:
        state["done"] += k
        while marks and state["done"] >= marks[0]:  # measured before any trim at this count
            rss[marks.pop(0)] = (round(rss_mb(), 1), round(rss_mb("VmHWM"), 1),
                                 *[round(v, 1) for v in arenas()])
        if trim_every and state["done"] >= state["next_trim"]:
            real_trim()
            state["next_trim"] += trim_every

    t0, cpu0 = time.perf_counter(), time.process_time()
    if model:  # the real infer: loader, engine, result files; counted as batches are written
        from mnv3 import results
        from mnv3.inference import infer

        folder = Path(model).parent / "images"
        samples = [Sample(p) for p in sorted(folder.iterdir())[:n]]
        add = results.ResultWriter.add

        def counted_add(self, batch_samples, logits):
            out = add(self, batch_samples, logits)
            count(len(batch_samples))
            return out

        results.ResultWriter.add = counted_add
        infer(model, samples, Path(model).parent / f"out-{candidate}", workers=workers,
              progress=False)
    else:
        files = (sorted((SAMPLE / "images").iterdir()) if SAMPLE.is_dir()
                 else [s.path for s in demo_dataset()])
        samples = [Sample(files[i % len(files)]) for i in range(n)]
        cfg = PreprocessCfg(resize=256, crop=224)
        for batch in loader.iter_batches(samples, cfg, 8, workers=workers):
            count(len(batch.samples))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"candidate": candidate, "images": state["done"], "seconds": seconds,
            "cpu_ms_per_image": 1e3 * cpu / state["done"],
            "images_per_s": state["done"] / seconds, "rss_mb": rss,
            "trims": len(trims), "trim_ms_max": round(1e3 * max(trims, default=0), 2)}


def run_child(candidate: str, n: int, workers: int, model: Path | None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", candidate, "--images", str(n),
                          "--workers", str(workers)] + (["--model", str(model)] if model else []),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--candidates", default="main,none,arena1,arena2,trim1000,mmap")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--infer", action="store_true",
                    help="run mnv3.infer (MobileNetV3-Small force_float32 batch 8) over N "
                    "hard-linked images instead of the loader alone")
    ap.add_argument("--child", default=None)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.images, args.workers, args.model)))
        return
    with tempfile.TemporaryDirectory(prefix="mnv3-memory-") as tmp:
        model = _model(Path(tmp), args.images) if args.infer else None
        _run(args, model)


def _model(tmp: Path, n: int) -> Path:
    import mnv3
    from _common import export_fp32
    from soak import link_images

    _, onnx_path = export_fp32("mobilenetv3-small", out_dir=tmp)
    mnv3.build(onnx_path, tmp / "model", quant_mode="force_float32", shape_mutable=False,
               batch_size=8, options={"progress": False})
    link_images(tmp / "images", n)
    return tmp / "model"


def _run(args, model: Path | None) -> None:
    from mnv3.sysinfo import cpu_model, int8_isa

    print(f"{'mnv3.infer' if model else 'loader alone'}; CPU: {cpu_model()}, ISA {int8_isa()}; "
          f"{args.workers} decode threads; load average {os.getloadavg()[0]:.1f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    names = args.candidates.split(",")
    if args.speed:
        speed, cpu = {c: [] for c in names}, {c: [] for c in names}
        for r in range(args.rounds):
            for c in names:
                res = run_child(c, args.images, args.workers, model)
                speed[c].append(res["images_per_s"])
                cpu[c].append(res["cpu_ms_per_image"])
                print(f"  round {r + 1} {c}: {speed[c][-1]:.1f} img/s, "
                      f"{cpu[c][-1]:.2f} CPU ms per image (all threads)", file=sys.stderr)
        for c in names:
            ratio = statistics.median(a / b for a, b in zip(speed[c], speed[names[0]]))
            print(f"{c:>9}: median {statistics.median(speed[c]):.1f} img/s, "
                  f"{ratio:.3f}x {names[0]} (median of per-round ratios, range "
                  f"{min(a / b for a, b in zip(speed[c], speed[names[0]])):.3f}-"
                  f"{max(a / b for a, b in zip(speed[c], speed[names[0]])):.3f}); CPU ms per "
                  f"image {statistics.median(cpu[c]):.2f}, "
                  f"{statistics.median(a / b for a, b in zip(cpu[c], cpu[names[0]])):.3f}x")
        return
    for c in names:
        res = run_child(c, args.images, args.workers, model)
        marks = ", ".join(f"{k}: {v[0]:.0f}/{v[1]:.0f}" for k, v in res["rss_mb"].items())
        print(f"{c:>9}: {res['images_per_s']:.0f} img/s; resident MB after N images "
              f"(now/peak so far): {marks}; {res['trims']} trims, longest "
              f"{res['trim_ms_max']} ms", flush=True)
        print(" " * 11 + "malloc_info (arenas, MB from the system, MB of it free in bins, MB "
              "mmapped): " + ", ".join(f"{k}: {v[2]}/{v[3]:.0f}/{v[4]:.0f}/{v[5]:.0f}"
                                       for k, v in res["rss_mb"].items()), flush=True)


if __name__ == "__main__":
    main()
