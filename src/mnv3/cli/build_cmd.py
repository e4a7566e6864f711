"""Quantize and compile a model into a deployable directory (compiled file + meta.json).

The source is an ONNX classifier (--onnx, any NCHW float32 ImageNet-style network) or a
PyTorch checkpoint (--weights, exported to ONNX on the way). The directory appears atomically
at --output (default data/models/<quant_mode>_<mutable>_<batch>, or data/models/<backend>/...
for backends other than onnxruntime); a model built there with other settings is replaced
only with --force. meta.json records the
preprocessing, what precision each op really runs in, the calibration set and the fidelity
against float32 measured on held-out images.

int8 modes calibrate on a seeded subset of --calib-num images from --calib-dir (default: the
bundled demo images); if the folder holds fewer, all are used and meta.json says so.
Normalization travels with the model: for networks brought as ONNX pass the --mean/--std they
were trained with (a wrong one silently costs many top-1 points).

examples:
  mnv3 build --onnx mnv3_large.onnx --quant-mode qint8_mixed_float32 --shape-mutable false \\
      --batch-size 8 --calib-dir ../shared/datasets/imagenet-sample-500/images
  mnv3 build --onnx lite0.onnx --quant-mode force_float32 --shape-mutable true --batch-size 1 \\
      --mean 0.498,0.498,0.498 --std 0.502,0.502,0.502
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

from mnv3 import defaults as d
from mnv3.backends import DEFAULT_BACKEND, list_backends
from mnv3.build_request import CALIB_METHODS
from mnv3.cli import common
from mnv3.errors import UsageError
from mnv3.meta import PreprocessCfg, sha256_file
from mnv3.quant_mode import SEED_MODES


def add_parser(sub) -> argparse.ArgumentParser:
    p = common.add_parser(sub, "build", __doc__, run)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", type=Path, help="source ONNX classifier (NCHW float32 input)")
    src.add_argument("--weights", type=Path, help="PyTorch checkpoint (exported to ONNX first)")
    p.add_argument("--arch", default="auto", help="with --weights: network (default: detect)")
    p.add_argument("--layout", default="auto", help="with --weights: state-dict layout")
    p.add_argument("--width-mult", type=float, help="with --weights: width multiplier")
    p.add_argument("--num-classes", type=int, help="with --weights: classifier size")
    p.add_argument("--image-size", type=int, metavar="N",
                   help="model input N x N: sets --crop N and --resize by the network's ratio "
                   "(224 -> 256, 160 -> 183) unless they are given; with --weights also the "
                   "export resolution")
    p.add_argument("--quant-mode", required=True, metavar="MODE",
                   help=f"one of {', '.join(SEED_MODES)} (forced_* accepted); "
                   "force_bfloat16 where the backend builds it (openvino, torch)")
    p.add_argument("--shape-mutable", required=True, type=common.str2bool, metavar="true|false",
                   help="true: any batch per call; false: fixed --batch-size (often faster)")
    p.add_argument("--batch-size", required=True, type=int, metavar="N",
                   help="images per engine call: built into the model with --shape-mutable "
                   "false; with true, the default batch of infer and bench (any batch runs)")
    p.add_argument("--calib-dir", type=Path, help="calibration images (default: demo images)")
    p.add_argument("--calib-num", type=int, default=d.CALIB_NUM,
                   help=f"calibration images (default {d.CALIB_NUM})")
    p.add_argument("--calib-method", default=None, choices=CALIB_METHODS,
                   help="int8 activation ranges from the calibration images: minmax (observed "
                   "min/max; the default of onnxruntime and openvino), entropy (a histogram "
                   "search: KL divergence on onnxruntime; on torch the range of least "
                   "quantization error, its default), percentile (onnxruntime only: clips "
                   "rare outliers)")
    budget = p.add_argument_group(
        "accuracy budget", "a reduced-precision build must agree with float32 on held-out "
        "images (default: top-1 agreement >= 99%% and mean logit cosine >= 0.99); below it, "
        "int8 layers return to float until it does, or the build fails and writes nothing")
    budget.add_argument("--min-agreement", type=float, metavar="PCT",
                        help="minimum top-1 agreement with float32, in %% (default 99)")
    budget.add_argument("--max-drop", type=float, metavar="POINTS",
                        help="the same as --min-agreement 100-POINTS; with --backend openvino "
                        "int8 also NNCF's accuracy-aware quantization")
    budget.add_argument("--min-cosine", type=float, metavar="X",
                        help="minimum mean logit cosine similarity (default 0.99)")
    budget.add_argument("--allow-below-budget", action="store_true",
                        help="ship a build that misses its budget anyway (marked in meta.json "
                        "and every report)")
    budget.add_argument("--keep-slower-int8", action="store_true",
                        help="keep int8 even where it measures slower than float32 on this CPU "
                        "(by default such a build ships float and says so)")
    p.add_argument("--resize", type=int, help="short side before the crop (default 256)")
    p.add_argument("--crop", type=int, help="center crop = model input size (default 224)")
    p.add_argument("--mean", type=common.float_list, help="per-channel mean, 0-1 units")
    p.add_argument("--std", type=common.float_list, help="per-channel std, 0-1 units")
    p.add_argument("--backend", default=DEFAULT_BACKEND,
                   help=f"inference engine: {', '.join(list_backends())} "
                   f"(default {DEFAULT_BACKEND})")
    p.add_argument("--device", metavar="cpu|cuda[:N]",
                   help="where the model runs (default cpu); cuda[:N] with --backend torch "
                   "(N = GPU index, the seed's DEV_ID)")
    p.add_argument("--output", type=Path, help="model directory to create or replace (default "
                   "data/models/<mode>_<mutable>_<batch>; data/models/<backend>/... for backends "
                   "other than onnxruntime, as 'mnv3 run')")
    p.add_argument("--force", action="store_true",
                   help="replace a model built there with other settings (without it: refused)")
    p.add_argument("--json", type=Path, help="write meta.json's content here too ('-' = stdout)")
    p.add_argument("--strict", action="store_true",
                   help="stop with an error at the first calibration image that cannot be "
                   "decoded (default: skip and count it, as infer does)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _preprocess(args, default: PreprocessCfg) -> PreprocessCfg:
    """The network's defaults (or ImageNet's), overridden by the flags given.

    --image-size N is the crop unless --crop says otherwise; a crop without --resize keeps the
    network's resize/crop ratio (256/224 for ImageNet: 160 -> 183), as the seed's recipes do.
    """
    if args.image_size is not None and args.crop is not None and args.image_size != args.crop:
        raise UsageError(f"--image-size {args.image_size} and --crop {args.crop} disagree: the "
                         "model's input is the crop; give one of them")
    crop = args.crop if args.crop is not None else args.image_size
    over = {k: v for k, v in (("resize", args.resize), ("crop", crop), ("mean", args.mean),
                              ("std", args.std)) if v is not None}
    if crop is not None and args.resize is None:
        over["resize"] = max(crop, round(crop * default.resize / default.crop))
    return dataclasses.replace(default, **over)


def _export_weights(args, workdir: Path) -> tuple[Path, PreprocessCfg, dict]:
    """--weights: load the checkpoint and export it to ONNX in ``workdir``."""
    from mnv3.export import export_onnx
    from mnv3.models import load_checkpoint

    loaded = load_checkpoint(args.weights, arch=args.arch, layout=args.layout,
                             width_mult=args.width_mult, num_classes=args.num_classes)
    cfg = _preprocess(args, loaded.preprocess)
    onnx_path = workdir / "exported.onnx"
    export_onnx(loaded.module, onnx_path, batch_size=args.batch_size, dynamic_batch=True,
                image_size=cfg.crop, preprocess=cfg)
    # the source is the checkpoint; the temporary ONNX is identified by its hash only
    source = {"path": str(Path(args.weights).resolve()), "sha256": loaded.source_sha256,
              "onnx_sha256": sha256_file(onnx_path), "arch": loaded.arch,
              "layout": loaded.layout, "width_mult": loaded.width_mult,
              "num_classes": loaded.num_classes}
    return onnx_path, cfg, source


def run(args) -> int:
    from mnv3.build_request import BuildRequest
    from mnv3.builder import build_from_request, default_output

    options = {"progress": not args.no_progress}
    for key in ("min_agreement", "min_cosine"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.allow_below_budget:
        options["allow_below_budget"] = True
    if args.keep_slower_int8:
        options["speed_check"] = False
    if args.max_drop is not None:
        options["max_drop"] = args.max_drop
    if args.device is not None:
        options["device"] = args.device
    # validated here, before the export (which can be slow); the preprocessing comes later
    request = BuildRequest(quant_mode=args.quant_mode, shape_mutable=args.shape_mutable,
                           batch_size=args.batch_size, backend=args.backend,
                           calib_dir=args.calib_dir, calib_num=args.calib_num,
                           calib_method=args.calib_method, strict=args.strict, options=options)
    out = args.output or default_output(args.backend, request.name)
    before = _settings_at(out)
    with tempfile.TemporaryDirectory(prefix="mnv3-build-") as work:
        if args.weights is not None:
            onnx_path, cfg, source = _export_weights(args, Path(work))
        else:
            onnx_path, cfg, source = args.onnx, _preprocess(args, PreprocessCfg()), {}
        meta = build_from_request(onnx_path, request.replace(preprocess=cfg), args.output,
                                  source=source, force=args.force)
    say = common.human_print(args.json)
    say(summary(meta, out))
    if before is not None:  # --force replaced another build: say what changed
        from mnv3.model_settings import differences, recorded

        changes = differences(before, recorded(meta))
        if changes:
            say(f"replaced the model built there with other settings: {'; '.join(changes)}")
    common.write_json(args.json, meta.to_dict())
    return 0


def _settings_at(out: Path):
    """The settings of the model at ``out`` before this build, or None."""
    from mnv3.errors import ModelError
    from mnv3.meta import META_FILE, read_meta
    from mnv3.model_settings import recorded

    try:
        return recorded(read_meta(out)) if (out / META_FILE).is_file() else None
    except ModelError:
        return None


def summary(meta, out: Path) -> str:
    """Human summary: where, what, and the fidelity against float32."""
    lines = [f"built {out}  ({meta.backend} {meta.backend_version}, {meta.quant_mode}, "
             f"batch {'mutable' if meta.shape_mutable else meta.batch_size}, "
             f"input {meta.input_shape}, {meta.num_classes} classes)"]
    if meta.calibration:
        c = meta.calibration
        lines.append(f"calibration: {c['count']} images, {c['method']}")
        if c.get("skipped"):
            lines.append(f"skipped {len(c['skipped'])} (could not decode): "
                         + "; ".join(c["skipped"][:5]))
    f = meta.fidelity or {}
    if f:
        expected = f.get("top1_agreement_expected")
        lines.append(f"fidelity vs float32 on {f['inputs']}: top-1 agreement "
                     f"{100 * f['top1_agreement']:.2f}%"
                     + (f" (expected {100 * expected:.2f}%)" if expected is not None else "")
                     + f", cosine mean {f['cosine_mean']:.6f}, max |diff| "
                     f"{f['max_abs_diff']:.4g}")
        if "budget" in f:
            b = f["budget"]
            lines.append(f"accuracy budget (expected agreement >= {b['min_agreement']:.2%}, "
                         f"count consistent with it, cosine >= {b['min_cosine']:.4f}): "
                         + ("met" if f.get("within_budget") else "MISSED, shipped anyway"))
    from mnv3.sysinfo import isa_label
    lines.append(f"built and validated on: {isa_label(meta.extra.get('isa'))}")
    lines.append("precisions: " + ", ".join(f"{k}={v}" for k, v in meta.op_precisions.items()))
    lines += [f"note: {n}" for n in meta.notes]
    from mnv3.provenance import untrained_note

    if untrained_note(meta):
        lines.append(f"note: {untrained_note(meta)}")
    return "\n".join(lines)
