"""Find the fastest deployment of a network on this CPU within an accuracy budget.

Builds every candidate (backend x quant mode x batch shape: onnxruntime and, when installed,
openvino; force_float32, qint8_mixed_float32, and force_bfloat16 on OpenVINO where the CPU has
bf16; one fixed-batch build per batch size and one shape-mutable build, measured at every batch
size, per backend and mode). Every non-float32 build is held to the accuracy budget
(--min-agreement / --max-drop, default 99% top-1 agreement with float32 on held-out calibration
images): a refused build is a candidate that lost, and the report says why. Each build is then
measured over runtime settings: intra-op threads (1 and all cores), for --objective
throughput several requests in flight (streams x 1 thread), and for --objective latency at a
batch the cores divide, on OpenVINO, each batch split into one sub-batch per core run at once
(one request in flight still: 'mnv3 bench --split'). All settings of one batch are
measured interleaved, in short slices, in a fresh random order each round; figures are medians
with the slowest-fastest round; a setting whose best round is slower than the leader's worst
is pruned early.

Writes, under --out: models/ (every build), tuned/<objective>_b<B> (the winner per batch, its
threads, streams and split in meta.json extra["tuned"], which 'mnv3 bench' uses when given
no --threads / --streams / --split), tune.md and tune.json (every candidate's speed, fidelity and why it
lost; the CPU's int8 ISA beside every figure). --time-budget bounds the whole run (builds stop
at 60% of it, and a build is not started when one like it took longer than what is left;
rounds, then slices, shrink to fit); what was skipped to fit is listed.

Decoding: per winner, tune runs 'mnv3 infer' over its held-out images with both decode paths
(exact and --decode fast) and records decode: fast in the tuned settings only when the fast
path's top-1 agreement with the exact path is >= 99.5% and its end-to-end speed is higher;
where 'mnv3 build-cpp' built the native decoder, --decode native (the exact pixels in C++) is
timed too and recorded where it is the fastest; 'mnv3 infer' then uses the recorded path by
default for that model and says so (--decode exact overrides).
This check gets 15% of the time budget.

examples:
  mnv3 tune --onnx model.onnx --batch-sizes 1,8 --time-budget 10m
  mnv3 tune --weights mobilenetv3_small_67.218.pth.tar --objective latency --max-drop 0.5 \\
      --calib-dir ../shared/datasets/imagenet-sample-500/images --out data/tune
  mnv3 bench --model data/tune/tuned/throughput_b1     # runs with the tuned settings
"""

from __future__ import annotations


from mnv3 import defaults as d
from mnv3.cli.common import add_parser as _add
from mnv3.cli.common import (duration, float_list, human_print, int_list, str_list,
                              write_json)


def add_parser(sub):
    p = _add(sub, "tune", __doc__, run)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", default=None, metavar="FILE", help="a float32 ONNX classifier")
    src.add_argument("--weights", default=None, metavar="CKPT",
                     help="a trained checkpoint (exported to ONNX on the way)")
    p.add_argument("--objective", choices=("latency", "throughput"), default="throughput",
                   help="latency: one request in flight; throughput: also several "
                   "(default throughput)")
    p.add_argument("--batch-sizes", type=int_list, default=d.TUNE_BATCH_SIZES, metavar="B1,B2",
                   help="fixed batches to tune, one winner each "
                   f"(default {','.join(map(str, d.TUNE_BATCH_SIZES))})")
    p.add_argument("--shapes", type=str_list, default=None, metavar="S1,S2",
                   help="batch shapes to build: fixed (one build per batch size) and/or "
                   "mutable (one build serving every batch size) (default both)")
    p.add_argument("--backends", type=str_list, default=None, metavar="B1,B2",
                   help="default: every installed engine that builds from the ONNX file; "
                   "torch (it compiles the PyTorch network, minutes a build) only when named "
                   "here, with --weights")
    p.add_argument("--quant-modes", type=str_list, default=None, metavar="M1,M2",
                   help="default: force_float32, qint8_mixed_float32, and force_bfloat16 on "
                   "OpenVINO where the CPU has bf16")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--min-agreement", type=float, default=None, metavar="PCT",
                        help="top-1 agreement with float32 every reduced-precision build must "
                        "keep (default 99)")
    budget.add_argument("--max-drop", type=float, default=None, metavar="POINTS",
                        help="instead: the top-1 agreement it may lose, in points")
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="with --onnx: model input N x N (crop N, resize by 256/224)")
    p.add_argument("--mean", type=float_list, default=None, help="with --onnx: per-channel "
                   "mean, 0-1 units (default ImageNet's)")
    p.add_argument("--std", type=float_list, default=None, help="with --onnx: per-channel std")
    p.set_defaults(resize=None, crop=None)  # build's preprocessing helper reads them
    p.add_argument("--min-cosine", type=float, default=None, metavar="X",
                   help="mean logit cosine to float32 each such build must keep (default 0.99)")
    p.add_argument("--calib-dir", default=None, metavar="D",
                   help="calibration + held-out fidelity images (default: the bundled demo set)")
    p.add_argument("--calib-num", type=int, default=d.CALIB_NUM, metavar="N",
                   help=f"calibration images (default {d.CALIB_NUM})")
    p.add_argument("--time-budget", type=duration, default=d.TUNE_TIME_BUDGET_S, metavar="T",
                   help="the whole run's time, e.g. 600, 90s, 10m "
                   f"(default {d.TUNE_TIME_BUDGET_S:g} s)")
    p.add_argument("--rounds", type=int, default=d.TUNE_ROUNDS, metavar="N",
                   help=f"interleaved rounds per batch at most (default {d.TUNE_ROUNDS})")
    p.add_argument("--slice", dest="slice_s", type=float, default=d.TUNE_SLICE_S,
                   metavar="SECONDS",
                   help=f"one setting's measurement per round (default {d.TUNE_SLICE_S})")
    p.add_argument("--no-decode-check", dest="decode_check", action="store_false",
                   help="do not measure the fast / native decode paths for the winners "
                   "('mnv3 infer' then decodes them the exact way by default)")
    p.add_argument("--out", default="data/tune", metavar="DIR", help="default data/tune")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress lines on stderr")
    p.add_argument("--json", default=None, metavar="F", help="also write tune.json here "
                   "('-' = stdout)")
    return p


def run(args) -> int:
    from mnv3.errors import UsageError
    from mnv3.tune import tune
    from mnv3.tune_report import format_summary

    if args.rounds < 1 or args.slice_s <= 0:
        raise UsageError("--rounds must be at least 1 and --slice a positive number of seconds")
    preprocess = None
    if args.onnx:
        from mnv3.cli.build_cmd import _preprocess
        from mnv3.meta import PreprocessCfg

        preprocess = _preprocess(args, PreprocessCfg())
    elif any(v is not None for v in (args.image_size, args.mean, args.std)):
        raise UsageError("--image-size/--mean/--std describe an --onnx network; a checkpoint "
                         "(--weights) brings its own preprocessing")
    report = tune(args.onnx, weights=args.weights, batch_sizes=args.batch_sizes,
                  backends=args.backends, quant_modes=args.quant_modes,
                  objective=args.objective, min_agreement=args.min_agreement,
                  max_drop=args.max_drop, calib_dir=args.calib_dir, calib_num=args.calib_num,
                  preprocess=preprocess, out=args.out, time_budget_s=args.time_budget,
                  rounds=args.rounds, slice_s=args.slice_s, min_cosine=args.min_cosine,
                  progress=args.progress, decode_check=args.decode_check,
                  **({"shapes": args.shapes} if args.shapes else {}))
    say = human_print(args.json)
    say(format_summary(report))
    say(f"report: {args.out}/tune.md, {args.out}/tune.json")
    write_json(args.json, report.to_dict())
    return 0
