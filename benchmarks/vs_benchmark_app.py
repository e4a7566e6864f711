"""mnv3's tuned choice against OpenVINO's own benchmark_app, cell by cell (issue 17 item 3).

Per cell (network x batch x objective) mnv3's side is what ``mnv3.tune.tune`` chose (engine,
precision, threads, requests in flight, for latency at batch 8 also a batch split into
sub-batches run at once, which benchmark_app has no option for; run by ``mnv3 bench`` with no
flags, i.e. with the tuned settings), and benchmark_app's side is its best of two IRs made the plain OpenVINO way
(``ovc model.onnx``, then ``nncf.quantize`` with default parameters on the same calibration
images tune used) under the objective's hint (``-hint latency`` for latency, ``-hint
throughput`` for throughput), reshaped to the cell's batch with ``-shape``.

Both sides run as separate processes in short slices, alternated round after round in a fresh
random order, so machine drift (other jobs on a shared VM) hits both alike. Printed per cell:
the medians, the median of the per-round ratios mnv3 / benchmark_app's best IR (the IR with the
higher median), the slowest-fastest per-round ratio, the CPU's ISA and the load average.

    python benchmarks/vs_benchmark_app.py                       # 2 nets x b1,b8 x 2 objectives
    python benchmarks/vs_benchmark_app.py --quick               # Large b1 only, short rounds
    python benchmarks/vs_benchmark_app.py --archs mobilenetv3-large --batches 1 \
        --objectives throughput --rounds 5 --seconds 3

The networks have seeded random weights (speed does not depend on their values); tune then
keeps int8 builds below the accuracy budget as candidates, and says so in tune.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ARCHS = ("mobilenetv3-large", "mobilenetv3-small")
OBJECTIVES = ("latency", "throughput")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import venv_tool  # noqa: E402

CALIB = Path(__file__).resolve().parents[2] / "shared/datasets/imagenet-sample-500/images"


def main(argv=None) -> int:
    args = _args(argv)
    from mnv3.sysinfo import isa_label, system_info

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cells = []
    for arch in args.archs:
        onnx = _export(arch, work)
        irs = _plain_irs(onnx, work / arch / "ir", args.calib_dir, args.calib_num)
        for objective in args.objectives:
            tuned = _tune(onnx, work / arch / "tune", objective, args)
            cells += [_cell(arch, b, objective, tuned[b], irs) for b in args.batches]
    rounds = _measure(cells, args)
    info = system_info()
    print(f"\nCPU: {info['cpu_model']}, {os.cpu_count()} cores, ISA "
          f"{isa_label()}; load average during the rounds {min(rounds['load']):.1f}-"
          f"{max(rounds['load']):.1f}; {args.rounds} rounds of {args.seconds:g} s; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    rows = [_row(i, c, rounds) for i, c in enumerate(cells)]
    print(_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "load": rounds["load"],
                                               "isa": isa_label(), "args": vars(args)},
                                              indent=1, default=str))
    return 0


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", type=_csv, default=list(ARCHS))
    p.add_argument("--batches", type=lambda s: [int(b) for b in _csv(s)], default=[1, 8])
    p.add_argument("--objectives", type=_csv, default=list(OBJECTIVES))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0, help="one slice of one side")
    p.add_argument("--tune-budget", type=float, default=300.0, metavar="S",
                   help="mnv3.tune's time budget per network and objective")
    p.add_argument("--calib-dir", default=str(CALIB))
    p.add_argument("--calib-num", type=int, default=100)
    p.add_argument("--work", default="data/vs_benchmark_app")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true",
                   help="for a busy machine: Large, batch 1, 3 rounds of 2 s, tune budget 150 s")
    args = p.parse_args(argv)
    if args.quick:
        args.archs, args.batches, args.rounds, args.seconds = [ARCHS[0]], [1], 3, 2.0
        args.tune_budget = min(args.tune_budget, 150.0)
    return args


def _csv(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def _export(arch: str, work: Path) -> Path:
    from _common import export_fp32

    return export_fp32(arch, out_dir=work)[1]


def _plain_irs(onnx: Path, out: Path, calib_dir: str, calib_num: int) -> dict[str, Path]:
    """fp32 and int8 IR the way an OpenVINO user makes them: ovc with its defaults, then NNCF's
    default post-training quantization on the calibration images (preprocessed as mnv3 does)."""
    out.mkdir(parents=True, exist_ok=True)
    fp32, int8 = out / "fp32.xml", out / "int8.xml"
    if not fp32.is_file():
        subprocess.run([venv_tool("ovc"), str(onnx), "--output_model", str(fp32)], check=True,
                       stdout=subprocess.DEVNULL)
    if not int8.is_file():
        import nncf
        import openvino as ov

        data = nncf.Dataset(_calibration(calib_dir, calib_num))
        ov.save_model(nncf.quantize(ov.Core().read_model(fp32), data), int8)
    return {"fp32": fp32, "int8": int8}


def _calibration(calib_dir: str, num: int) -> list:
    """The images mnv3's int8 builds calibrate on: the same seeded subset, same preprocessing."""
    from mnv3.calibration import list_images, split_calibration
    from mnv3.data.preprocess import preprocess_image
    from mnv3.meta import PreprocessCfg

    cfg = PreprocessCfg()
    chosen, _ = split_calibration(list_images(calib_dir), num)
    return [preprocess_image(p, cfg)[None] for p in chosen]


def _tune(onnx: Path, out: Path, objective: str, args) -> dict[int, Path]:
    from mnv3.tune import tune

    report = tune(onnx, batch_sizes=args.batches, objective=objective, out=out,
                  time_budget_s=args.tune_budget, calib_dir=args.calib_dir,
                  calib_num=args.calib_num, progress=True)
    for name in ("tune.md", "tune.json"):  # the objectives share the builds, not the reports
        shutil.copyfile(out / name, out / name.replace("tune.", f"tune-{objective}."))
    return {b: Path(report.winners[f"{objective}_b{b}"]["model_dir"]) for b in args.batches}


def _cell(arch, batch, objective, tuned_dir: Path, irs) -> dict:
    meta = json.loads((tuned_dir / "meta.json").read_text())
    # benchmark_app also runs mnv3's own IR where tune chose OpenVINO: with both, a gap splits
    # into the IR's share (plain int8 IR vs mnv3's, same tool) and the runtime's (same IR)
    own = tuned_dir / meta["compiled_file"] if meta["backend"] == "openvino" else None
    return {"arch": arch, "batch": batch, "objective": objective, "tuned": tuned_dir,
            "irs": irs, "own_ir": own}


def _measure(cells, args) -> dict:
    """Rounds: every side of every cell once, in a fresh random order each round."""
    jobs = [(i, side) for i, c in enumerate(cells)
            for side in ("mnv3", *c["irs"], *(["mnv3_ir"] if c["own_ir"] else []))]
    out: dict = {"load": [os.getloadavg()[0]]}
    rng = random.Random(0)
    for r in range(args.rounds):
        rng.shuffle(jobs)
        for i, side in jobs:
            ips = _run_side(cells[i], side, args.seconds)
            out.setdefault((i, side), []).append(ips)
            print(f"round {r + 1}/{args.rounds} {_name(cells[i])} {side}: {ips:.1f} images/s",
                  file=sys.stderr)
        out["load"].append(os.getloadavg()[0])
    return out


def _run_side(cell, side: str, seconds: float) -> float:
    if side == "mnv3":  # no --threads/--streams: the tuned settings
        return _mnv3_bench(cell["tuned"], seconds)
    xml = cell["own_ir"] if side == "mnv3_ir" else cell["irs"][side]
    return _benchmark_app(xml, cell["batch"], cell["objective"], seconds)


def _mnv3_bench(model: Path, seconds: float) -> float:
    proc = subprocess.run([venv_tool("mnv3"), "bench", "--model", str(model), "--duration", f"{seconds:g}",
                           "--json", "-"], check=True, capture_output=True, text=True)
    return float(json.loads(proc.stdout)["throughput_ips"])


def _benchmark_app(xml: Path, batch: int, objective: str, seconds: float) -> float:
    proc = subprocess.run([venv_tool("benchmark_app"), "-m", str(xml), "-d", "CPU", "-hint", objective,
                           "-shape", f"[{batch},3,224,224]", "-t", f"{seconds:g}"],
                          check=True, capture_output=True, text=True)
    fps = re.search(r"Throughput:\s+([\d.]+) FPS", proc.stdout)
    if not fps:
        raise RuntimeError(f"no throughput in benchmark_app's output:\n{proc.stdout[-2000:]}")
    return float(fps.group(1))  # benchmark_app's FPS counts images (batch x iterations)


def _row(i, cell, rounds) -> dict:
    mnv3 = rounds[(i, "mnv3")]
    ba = {ir: rounds[(i, ir)] for ir in cell["irs"]}
    best = max(ba, key=lambda ir: statistics.median(ba[ir]))
    ratios = [a / b for a, b in zip(mnv3, ba[best])]
    meta = json.loads((cell["tuned"] / "meta.json").read_text())
    t = meta["extra"]["tuned"]
    own = rounds.get((i, "mnv3_ir"))
    return {"cell": _name(cell), "mnv3": statistics.median(mnv3),
            # benchmark_app on mnv3's IR: vs the best plain IR, the IR's share of the gap;
            # mnv3 against it, the runtime's share
            "benchmark_app_mnv3_ir": statistics.median(own) if own else None,
            "ir_ratio": statistics.median([a / b for a, b in zip(own, ba[best])]) if own else None,
            "runtime_ratio": statistics.median([a / b for a, b in zip(mnv3, own)]) if own else None,
            "mnv3_choice": f"{meta['backend']} {meta['quant_mode']} {t['threads']} thr x "
                           f"{t['streams']} req" + (f", batch split in {t['split']}"
                                                    if t.get("split", 1) > 1 else ""),
            "benchmark_app": {ir: statistics.median(v) for ir, v in ba.items()},
            "best_ir": best, "ratio": statistics.median(ratios),
            "ratio_range": (min(ratios), max(ratios)), "rounds_mnv3": mnv3, "rounds_ba": ba}


def _name(cell) -> str:
    net = cell["arch"].replace("mobilenetv3-", "").title()
    return f"{net} b{cell['batch']} {cell['objective']}"


def _table(rows) -> str:
    lines = ["| cell | mnv3 tuned choice | mnv3 images/s | benchmark_app fp32 | benchmark_app "
             "int8 | mnv3 / best (median, per-round range) | benchmark_app on mnv3's IR: "
             "images/s, vs best (IR) / mnv3 vs it (runtime) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ba = r["benchmark_app"]
        lo, hi = r["ratio_range"]
        own = (f"{r['benchmark_app_mnv3_ir']:.1f}, {r['ir_ratio']:.2f}x / "
               f"{r['runtime_ratio']:.2f}x" if r["benchmark_app_mnv3_ir"] else "n/a (not OpenVINO)")
        lines.append(f"| {r['cell']} | {r['mnv3_choice']} | {r['mnv3']:.1f} | {ba['fp32']:.1f} "
                     f"| {ba['int8']:.1f} | **{r['ratio']:.2f}x** ({lo:.2f}-{hi:.2f}) vs "
                     f"{r['best_ir']} | {own} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
