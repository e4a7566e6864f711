"""Compare two builds of one network on the same images, layer by layer where possible.

Runs MODEL_A (the reference, e.g. force_float32) and MODEL_B (e.g. qint8_mixed_float16) on the
same preprocessed images (MODEL_A's preprocessing) and prints final-output agreement (top-1
agreement, logit cosine, relative L2, max |diff|), the images that differ most, and, where both
models are ONNX graphs (the onnxruntime backend), each Conv/Gemm/MatMul layer's error and the
error it adds (growth of relative squared error from its input to its output): the layers
that add most are the ones to keep float. The build's accuracy fallback measures int8 layers
the same way, by their effect on the output.

examples:
  mnv3 compare data/models/force_float32_false_1 data/models/qint8_mixed_float32_false_1 \
      --images ../shared/datasets/imagenet-sample-500/images --num 50
  mnv3 compare A B --images DIR --json compare.json --top 10
"""

from __future__ import annotations

import sys

from mnv3.cli.common import add_parser as _add, write_json


def add_parser(sub):
    p = _add(sub, "compare", __doc__, run)
    p.add_argument("model_a", metavar="MODEL_A", help="the reference model directory")
    p.add_argument("model_b", metavar="MODEL_B", help="the model directory to compare")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="images to run (default: the bundled demo images)")
    p.add_argument("--num", type=int, default=50, metavar="N",
                   help="images to use (a seeded sample; default 50)")
    p.add_argument("--top", type=int, default=5, metavar="N",
                   help="layers and images to list (default 5)")
    p.add_argument("--no-layers", action="store_true", help="final outputs only (faster)")
    p.add_argument("--json", default=None, metavar="F", help="also write the report as JSON "
                   "('-' = stdout, and nothing else there)")
    return p


def run(args) -> int:
    from mnv3.calibration import regular_images, split_calibration
    from mnv3.compare import compare, top_layers
    from mnv3.data.datasets import demo_dir
    from mnv3.sysinfo import isa_label

    folder = args.images or demo_dir() / "images"
    files, _ = split_calibration(regular_images(folder), max(1, args.num))
    rep = compare(args.model_a, args.model_b, files, worst=args.top,
                  layers=not args.no_layers)
    out = sys.stderr if args.json == "-" else sys.stdout
    o = rep.outputs
    print(f"{args.model_b} vs {args.model_a} on {rep.images} images (CPU: {isa_label()}):",
          file=out)
    print(f"  top-1 agreement {o['top1_agreement']:.2%}, cosine mean {o['cosine_mean']:.5f} "
          f"min {o['cosine_min']:.5f}, relative L2 {o['rel_l2_mean']:.4f}, max |diff| "
          f"{o['max_abs_diff']:.4g}", file=out)
    print("  images that differ most (cosine, top-1 A -> B):", file=out)
    for w in rep.worst_images:
        print(f"    {w['image']}: {w['cosine']:.5f}, {w['top1_a']} -> {w['top1_b']}", file=out)
    if rep.layers:
        print(f"  layers adding the most error (of {len(rep.layers)}; rel. L2 of output, "
              "cosine, added rel. squared error):", file=out)
        for r in top_layers(rep.layers, args.top):
            print(f"    #{r['index']:<3d} {r['layer']}: {r['rel_l2']:.4f}, {r['cosine']:.5f}, "
                  f"{r['adds']:+.5f}", file=out)
    for note in rep.notes:
        print(f"  note: {note}", file=out)
    write_json(args.json, rep.to_dict())
    return 0
