"""The GPU check of issue 15: the torch backend on one NVIDIA GPU against the seed's MLU370-X4.

On a machine with one NVIDIA GPU and mnv3 installed, it builds MobileNetV3-Small and -Large
(seeded random weights: speed does not depend on their values) with the torch backend
(AOTInductor, --device cuda) in force_float32 / force_float16 / force_bfloat16, one package per
network and precision with a mutable batch (1..256: one compile serves every batch, which keeps
the run inside its 8 minutes), and for batch 1, 4, 8 and a throughput batch (64):

* parity with PyTorch eager float32 on the same GPU: max relative error of the logits (fp32
  target <= 1e-3) and top-1 agreement (fp16 / bf16; random weights have small margins, so the
  accuracy yardstick, Lite0, is still to be added: see README);
* speed through ``mnv3.bench.benchmark`` (CUDA graphs captured per batch after warm-up):
  images/s, latency avg / p95 / p99 (host), device time per call (CUDA events), and each
  cell's ratio to the seed's MLU370-X4 figure in the same precision (fp32 / fp16 rows of its
  README; bf16 has no seed figure).

It prints the seed-style table, the GPU (name, driver, clocks) and writes everything as JSON.

    python benchmarks/gpu_check.py --json gpu_check.json          # on the GPU machine
    python benchmarks/gpu_check.py --dry-run                      # anywhere: CPU, tiny, fp32

Where only the machine's own PyTorch with CUDA is installed: install mnv3 without touching it,
``pip install --no-deps -e .``, plus the few pure-Python packages mnv3 imports (numpy and Pillow
are usually there; bring onnx, onnxruntime and onnxscript as wheels: ``pip download -d wheels
onnx onnxruntime onnxscript`` on a connected machine, then ``pip install --no-deps
wheels/*.whl``). ONNX Runtime is needed only for the builder's fidelity check against float32.

--dry-run runs the same code on the CPU (MobileNetV3-Small x0.35 at 32x32, force_float32,
batch 1 and 2, short slices): it proves the script, not the GPU; its figures are not GPU ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEED_X4 = {  # the seed README's MagicMind MobileNetV3-Small table on MLU370-X4, images/s
    "force_float32": {1: 759, 4: 2463, 8: 4215},
    "force_float16": {1: 875, 4: 2848, 8: 5027},
}
MODES = ("force_float32", "force_float16", "force_bfloat16")
ARCHS = ("mobilenetv3-small", "mobilenetv3-large")


def plan(args) -> dict:
    if args.dry_run:
        return {"device": "cpu", "archs": ["mobilenetv3-small"], "width": 0.35, "size": 32,
                "modes": ["force_float32"], "batches": [1, 2], "duration": 0.3}
    return {"device": args.device, "archs": list(args.archs), "width": 1.0, "size": 224,
            "modes": list(args.modes), "batches": list(args.batches),
            "duration": args.duration}


def build_one(p: dict, arch: str, mode: str, work: Path):
    from mnv3 import build, create_model, export_onnx

    net = create_model(arch, "seed", width_mult=p["width"], seed=0)
    onnx = work / f"{arch}.onnx"
    if not onnx.exists():
        export_onnx(net, onnx, dynamic_batch=True, image_size=p["size"])
    source = {"arch": net.arch, "layout": net.layout, "width_mult": net.width_mult,
              "num_classes": net.num_classes, "random_seed": 0}
    from mnv3.meta import PreprocessCfg

    pre = PreprocessCfg(resize=round(p["size"] * 256 / 224), crop=p["size"])
    t0 = time.perf_counter()
    meta = build(onnx, work / f"{arch}_{mode}", quant_mode=mode, shape_mutable=True,
                 batch_size=max(p["batches"]), backend="torch", preprocess=pre, source=source,
                 options={"progress": False, "device": p["device"], "fidelity_num": 16},
                 force=True)
    return net, meta, time.perf_counter() - t0


def parity(net, session, p: dict, batch: int) -> dict:
    import torch

    x = np.random.default_rng(0).standard_normal((batch, 3, p["size"], p["size"]),
                                                 dtype=np.float32)
    dev = torch.device(p["device"])
    with torch.no_grad():
        ref = net.to(dev).float()(torch.from_numpy(x).to(dev)).float().cpu().numpy()
    got = session.predict(x)
    rel = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))
    return {"max_rel_err": rel, "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}


def measure(session, batch: int, duration: float) -> dict:
    from mnv3.bench import benchmark

    r = benchmark(session, batch=batch, duration=duration, warmup=10)
    row = {"images_per_s": r.throughput_ips, "latency_avg_ms": r.latency_ms.avg,
           "latency_p95_ms": r.latency_ms.p95, "latency_p99_ms": r.latency_ms.p99}
    if r.device:
        row["device_avg_ms"] = (r.device.get("device_time") or {}).get("avg_ms")
        row["cuda_graphs"] = r.device.get("cuda_graphs")
    return row


def table(rows: list[dict], dry_run: bool = False) -> str:
    head = (f"{'network':<18} {'mode':<15} {'batch':>5} {'images/s':>10} {'x MLU370-X4':>11} "
            f"{'avg ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'dev ms':>8} {'parity':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        seed = None if dry_run else SEED_X4.get(r["mode"], {}).get(r["batch"])
        ratio = f"x{r['images_per_s'] / seed:.1f}" if seed else "-"
        par = (f"{r['max_rel_err']:.1e}" if r["mode"] == "force_float32"
               else f"{100 * r['top1_agreement']:.1f}%")
        dev = r.get("device_avg_ms")
        lines.append(f"{r['arch']:<18} {r['mode']:<15} {r['batch']:>5} "
                     f"{r['images_per_s']:>10.1f} {ratio:>11} {r['latency_avg_ms']:>8.3f} "
                     f"{r['latency_p95_ms']:>8.3f} {r['latency_p99_ms']:>8.3f} "
                     f"{'-' if dev is None else f'{dev:.3f}':>8} {par:>9}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny network, fp32 only")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--archs", nargs="+", default=list(ARCHS))
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8, 64])
    ap.add_argument("--duration", type=float, default=2.0, help="seconds measured per cell")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import mnv3
    from mnv3.sysinfo import cpu_model, isa_label

    p = plan(args)
    work = args.work or Path(tempfile.mkdtemp(prefix="mnv3-gpu-check-"))
    t_start, rows, builds, gpu = time.perf_counter(), [], [], None
    for arch in p["archs"]:
        for mode in p["modes"]:
            net, meta, secs = build_one(p, arch, mode, work)
            builds.append({"arch": arch, "mode": mode, "build_s": secs,
                           "compile_s": meta.extra["compile_s"]})
            print(f"built {arch} {mode} for {p['device']} in {secs:.0f} s", file=sys.stderr)
            with mnv3.load(work / f"{arch}_{mode}", cuda_graphs=True) as session:
                for b in p["batches"]:
                    row = {"arch": arch, "mode": mode, "batch": b,
                           **parity(net, session, p, b), **measure(session, b, p["duration"])}
                    rows.append(row)
                gpu = (session.device_report() or {}).get("gpu", gpu)
    print(f"device: {p['device']}" + (f" = {gpu}" if gpu else f" ({cpu_model()}, "
                                      f"{isa_label()}; a dry run: not GPU figures)"))
    print(table(rows, args.dry_run))
    result = {"plan": p, "dry_run": args.dry_run, "gpu": gpu, "builds": builds, "rows": rows,
              "seed_mlu370_x4": SEED_X4, "total_s": time.perf_counter() - t_start}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
