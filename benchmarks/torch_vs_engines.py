"""The torch backend (AOTInductor package) vs ONNX Runtime float32 on this CPU (issue 15).

For each network (seeded random weights: speed does not depend on their values) it builds,
with ``mnv3.build``, the torch package (force_float32, fixed batch; also channels_last with
``--channels-last``) and ONNX Runtime's force_float32 model, records the AOTInductor compile
time, then measures them interleaved in short slices in this process (DESIGN.md: speed on
these shared 2-vCPU machines swings within seconds, so only neighbouring slices compare) and
prints median images/s, the median per-round ratio torch / ONNX Runtime, and the CPU's ISA
(``mnv3.sysinfo.isa_label``) beside every figure.

    python benchmarks/torch_vs_engines.py                       # Small, batch 1 and 8
    python benchmarks/torch_vs_engines.py --archs mobilenetv3-small mobilenetv3-large \\
        --batches 1 8 --rounds 7 --channels-last --json torch_vs_ort.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import mnv3
from mnv3.bench import benchmark
from mnv3.builder import build
from mnv3.sysinfo import cpu_model, isa_label

from _common import SPEED_ONLY, export_fp32, median, median_ratio


def build_all(arch: str, batches, work: Path, channels_last: bool) -> dict:
    """{(engine label, batch): model dir}; each torch build's compile seconds are in meta.json."""
    from mnv3.models import create_model

    net = create_model(arch, "seed", seed=0)
    source = {"arch": net.arch, "layout": net.layout, "width_mult": net.width_mult,
              "num_classes": net.num_classes, "random_seed": 0}
    _, onnx = export_fp32(arch, out_dir=work)
    wanted = [("onnxruntime fp32", "onnxruntime", {}), ("torch fp32", "torch", {})]
    if channels_last:
        wanted.append(("torch fp32 channels_last", "torch", {"channels_last": True}))
    dirs = {}
    for label, backend, opts in wanted:
        for b in batches:
            d = work / f"{arch}_{label.replace(' ', '_')}_{b}"
            if not (d / "meta.json").is_file():
                t0 = time.perf_counter()
                build(onnx, d, quant_mode="force_float32", shape_mutable=False, batch_size=b,
                      backend=backend, source=source,
                      options={"progress": False, **SPEED_ONLY, **opts})
                print(f"built {d.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            dirs[(label, b)] = d
    return dirs


def measure(dirs: dict, batch: int, rounds: int, slice_s: float, threads: int | None) -> dict:
    sessions = {label: mnv3.load(d, threads=threads) for (label, b), d in dirs.items()
                if b == batch}
    ips: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(rounds):
        order = list(sessions) if r % 2 == 0 else list(reversed(sessions))
        for label in order:
            res = benchmark(sessions[label], batch=batch, duration=slice_s, warmup=3,
                            first_run=False)
            ips[label].append(res.throughput_ips)
    for s in sessions.values():
        s.close()
    return ips


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["mobilenetv3-small"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--slice", type=float, default=1.0, help="seconds per measured slice")
    ap.add_argument("--threads", type=int, default=None, help="default: the engines' choice")
    ap.add_argument("--channels-last", action="store_true",
                    help="also a torch package compiled channels_last (the layout choice)")
    ap.add_argument("--work", type=Path, default=None, help="keep the builds here (reused)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mnv3-torch-vs-"))
    isa = isa_label()
    print(f"CPU: {cpu_model()} [{isa}]")
    rows = []
    for arch in args.archs:
        dirs = build_all(arch, args.batches, work, args.channels_last)
        for (label, b), d in sorted(dirs.items()):
            meta = mnv3.ModelMeta.from_dict(json.loads((d / "meta.json").read_text()))
            if meta.backend == "torch":
                cpu_s = meta.extra.get("compile_cpu_s")
                print(f"{arch} {label} batch {b}: AOTInductor compile {meta.extra['compile_s']}"
                      f" s wall, {cpu_s} CPU s [{isa}]")
                rows.append({"arch": arch, "engine": label, "batch": b, "isa": isa,
                             "compile_s": meta.extra["compile_s"], "compile_cpu_s": cpu_s})
        for b in args.batches:
            ips = measure(dirs, b, args.rounds, args.slice, args.threads)
            base = ips["onnxruntime fp32"]
            for label, values in ips.items():
                ratio = median_ratio(values, base)
                print(f"{arch} batch {b} {label:<26} {median(values):8.1f} images/s  "
                      f"x{ratio:.2f} of ONNX Runtime fp32 [{isa}]")
                rows.append({"arch": arch, "engine": label, "batch": b, "isa": isa,
                             "images_per_s": median(values), "rounds": values,
                             "ratio_to_onnxruntime_fp32": ratio})
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "isa": isa, "rows": rows},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
