"""Export a trained MobileNetV3 checkpoint to a verified ONNX graph.

Reads a .pth / .pth.tar / .pt checkpoint (raw state dict, wrapped under 'state_dict' or 'model',
'module.' prefixes stripped; or a TorchScript file), detects layout, arch, width and classes unless
given, exports to ONNX (opset >= 17, input 'input' float32 NCHW, output 'logits', BatchNorm folded)
and checks the graph in ONNX Runtime against PyTorch. If any check exceeds 1e-4 relative error the
command fails and writes no file.

--demo-weights exports a network with deterministic random weights (seed 0) instead: no
checkpoint needed to try every stage; its speed is real, its accuracy is noise (the ONNX file
and every model built from it say so). An existing --output is replaced only if mnv3 exported
it (or with --force).

examples:
  mnv3 export --demo-weights --dynamic-batch --output model.onnx
  mnv3 export --weights mobilenetv3_small_67.4.pth.tar --output model.onnx
  mnv3 export --weights tv_large.pth --layout torchvision --dynamic-batch \\
      --verify-images data/images --output large.onnx --json export.json
"""

from __future__ import annotations

from mnv3.cli.common import add_parser as _add, human_print, write_json


def add_parser(sub):
    p = _add(sub, "export", __doc__, run)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="checkpoint file (.pth, .pth.tar, .pt, TorchScript)")
    src.add_argument("--demo-weights", action="store_true",
                     help="no checkpoint: random weights, seed 0 (UNTRAINED: for trying the "
                     "tools; --arch/--layout/--width-mult pick the network, default small/seed)")
    p.add_argument("--arch", default="auto", help="auto | mobilenetv3-small | mobilenetv3-large")
    p.add_argument("--layout", default="auto", help="auto | seed | torchvision (whose key names)")
    p.add_argument("--width-mult", type=float, default=None, help="width multiplier (default: detect)")
    p.add_argument("--num-classes", type=int, default=None, help="classes (default: detect)")
    p.add_argument("--preprocess", default=None,
                   help="preprocessing preset: imagenet (default) | torchvision-large-v2 (resize 232)")
    p.add_argument("--image-size", type=int, default=224, help="input height = width (default 224)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch-size", type=int, default=1, help="fixed batch size (default 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default 17)")
    p.add_argument("--verify-images", default=None, help="folder of images added to the parity check")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--json", default=None, help="also write the export report as JSON ('-' = stdout)")
    p.add_argument("--force", action="store_true",
                   help="replace --output even if it is not an ONNX file mnv3 exported")
    return p


def run(args) -> int:
    from mnv3.export import export_onnx
    from mnv3.models import load_checkpoint

    if args.demo_weights:
        loaded = demo_network(args)
    else:
        loaded = load_checkpoint(args.weights, arch=args.arch, layout=args.layout,
                                 width_mult=args.width_mult, num_classes=args.num_classes,
                                 preprocess=args.preprocess)
    report = export_onnx(loaded, args.output, batch_size=args.batch_size,
                         dynamic_batch=args.dynamic_batch, image_size=args.image_size,
                         opset=args.opset, verify_images=args.verify_images, force=args.force)
    human_print(args.json)(summary(report))
    write_json(args.json, report.to_dict())
    return 0


def demo_network(args):
    """--demo-weights: the network ``mnv3 run`` uses without --weights (seed 0), said loudly."""
    import sys

    from mnv3.models import create_model, preprocess_preset

    model = create_model("mobilenetv3-small" if args.arch == "auto" else args.arch,
                         layout="seed" if args.layout == "auto" else args.layout,
                         width_mult=args.width_mult or 1.0,
                         num_classes=args.num_classes or 1000, seed=0)
    if args.preprocess:
        model.preprocess = preprocess_preset(args.preprocess)
    print("mnv3 export: warning: --demo-weights: random weights (seed 0), UNTRAINED: speed "
          "figures are real, accuracy is noise", file=sys.stderr)
    return model


def summary(report) -> str:
    """A few human lines: what was exported, how close it is to PyTorch, where it went."""
    width = f" x{report.width_mult:g}" if report.width_mult else ""
    worst: dict[int, float] = {}
    for c in report.checks:
        worst[c.batch] = max(worst.get(c.batch, 0.0), c.max_rel_error)
    errors = ", ".join(f"batch {b}: {e:.2e}" for b, e in worst.items())
    return "\n".join([
        f"model    {report.arch} ({report.layout}{width}), {report.num_classes} classes, "
        f"{report.num_params:,} params",
        f"graph    opset {report.opset}, input {report.input_shape}, output {report.output_shape}, "
        f"{sum(report.op_counts.values())} nodes, exported in {report.export_seconds:.2f} s",
        f"parity   max rel error vs PyTorch ({errors}) <= {report.tolerance:g}",
        f"wrote    {report.output}" + (" (replaced an earlier mnv3 export)" if report.replaced
                                      else ""),
        *(["note     UNTRAINED (random weights, seed 0): accuracy from it is meaningless"]
          if report.untrained else []),
    ])
