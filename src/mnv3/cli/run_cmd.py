"""Run the whole pipeline: export, build every quant mode x batch, infer + eval, bench, report.

With no arguments: MobileNetV3-Small (seed layout) with a deterministic RANDOM initialization
(no --weights: top-1/top-5 are then meaningless and marked "untrained"), the bundled demo
images, ONNX Runtime, quant modes force_float32, force_float16, qint8_mixed_float16 at batch
1, 4 and 8. Every speed figure is compared with PyTorch eager fp32 and a plain ONNX Runtime
session on the exported fp32 ONNX, measured in the same run on the same input and threads.

Prints the performance and accuracy tables (Markdown) and writes report.md, report.json and
report.png into --out, beside onnx/, models/ and results/ (models of a backend other than
onnxruntime go to models/<backend>/). Resumable: a model whose meta.json
matches the request is reused, not rebuilt. Lists are comma-separated.

examples:
  mnv3 run
  mnv3 run --weights mobilenetv3_small_67.4.pth.tar \\
           --image-dir ../shared/datasets/imagenet-sample-500/images \\
           --label-file ../shared/datasets/imagenet-sample-500/labels.txt
  mnv3 run --quant-modes force_float32,qint8_mixed_float32 --batch-sizes 1,8 --out runs/a
  mnv3 run --backends onnxruntime,openvino --quant-modes force_float32,qint8_mixed_float16
  mnv3 run --backends openvino --quant-modes force_float32 --batch-sizes 8 --cpp
"""

from __future__ import annotations

from mnv3 import defaults as d
from mnv3.backends import DEFAULT_BACKEND
from mnv3.cli.common import add_parser as _add
from mnv3.cli.common import (dataset_dir, duration, human_print, int_list, str2bool, str_list,
                              write_json)


def add_parser(sub):
    p = _add(sub, "run", __doc__, run)
    p.add_argument("--weights", default=None, metavar="CKPT",
                   help="trained checkpoint (.pth/.pth.tar/.pt); default: random init (untrained)")
    p.add_argument("--arch", default="auto",
                   help="auto|mobilenetv3-small|mobilenetv3-large (auto: from the checkpoint, "
                        "else small)")
    p.add_argument("--layout", default="auto", help="auto|seed|torchvision (auto: from the "
                   "checkpoint, else seed)")
    p.add_argument("--width-mult", type=float, default=None, metavar="W", help="width multiplier "
                   "(default: from the checkpoint, else 1.0)")
    p.add_argument("--image-dir", default=None, metavar="D",
                   help="evaluation images (default: the bundled demo set)")
    p.add_argument("--label-file", default=None, metavar="F", help="'filename class' lines")
    p.add_argument("--synsets", "--synsets-file", dest="synsets_file", default=None, metavar="F",
                   help="'wnid name' per line, line N = class N (as infer's --synsets)")
    p.add_argument("--dataset", default=None, metavar="DIR",
                   help="a folder with images/, labels.txt and optionally synsets.txt (as "
                   "infer's --dataset); 'demo' = the bundled demo set")
    p.add_argument("--image-num", type=int, default=None, metavar="N",
                   help="use only the first N images")
    p.add_argument("--quant-modes", type=str_list, default=d.RUN_QUANT_MODES,
                   metavar="M1,M2", help=f"default {','.join(d.RUN_QUANT_MODES)}")
    p.add_argument("--batch-sizes", type=int_list, default=d.RUN_BATCH_SIZES, metavar="B1,B2",
                   help=f"default {','.join(map(str, d.RUN_BATCH_SIZES))}")
    p.add_argument("--shape-mutable", type=str2bool, default=False, metavar="true|false",
                   help="default false")
    p.add_argument("--backends", "--backend", dest="backends", type=str_list,
                   default=(DEFAULT_BACKEND,), metavar="B1,B2",
                   help="engines to build for, e.g. onnxruntime,openvino: one report with a "
                        f"backend column (default {DEFAULT_BACKEND}; openvino needs "
                        "mnv3[openvino])")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="intra-op threads for mnv3 and both baselines (default: all cores)")
    p.add_argument("--calib-dir", default=None, metavar="D",
                   help="int8 calibration images (default: the evaluation images)")
    p.add_argument("--calib-num", type=int, default=d.CALIB_NUM, metavar="N",
                   help=f"default {d.CALIB_NUM}")
    p.add_argument("--bench-duration", type=float, default=d.RUN_BENCH_DURATION_S, metavar="S",
                   help=f"seconds per configuration per round (default {d.RUN_BENCH_DURATION_S})")
    p.add_argument("--bench-iterations", type=int, default=None, metavar="N",
                   help="or stop each round after N queries")
    p.add_argument("--bench-rounds", type=int, default=d.RUN_BENCH_ROUNDS, metavar="R",
                   help="interleaved rounds per configuration; tables quote the median round "
                   f"and the range of all rounds (default {d.RUN_BENCH_ROUNDS})")
    p.add_argument("--bench-warmup", type=int, default=d.RUN_BENCH_WARMUP, metavar="N",
                   help=f"unmeasured runs before each round (default {d.RUN_BENCH_WARMUP})")
    p.add_argument("--out", default="data", metavar="DIR", help="output folder (default data)")
    p.add_argument("--cpp", action="store_true",
                   help="also run each openvino build through the native mnv3-infer-cpp (built "
                   "with 'mnv3 build-cpp' on the way): an 'openvino C++' row")
    p.add_argument("--tune", nargs="?", type=duration, const=d.TUNE_TIME_BUDGET_S, default=None,
                   metavar="T", help="also run 'mnv3 tune' (throughput, within the accuracy "
                   "budget; T = its time budget, e.g. 5m; default "
                   f"{d.TUNE_TIME_BUDGET_S:g} s) and add its winner per batch as a 'tuned' row, "
                   "benchmarked with the threads and requests in flight it chose")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", default=None, metavar="F", help="also write report.json's content "
                   "to F ('-' = stdout)")
    return p


def _resolve_dataset(args) -> None:
    """--dataset DIR -> --image-dir DIR/images --label-file DIR/labels.txt (+ synsets.txt)."""
    from mnv3.errors import UsageError

    if args.dataset in (None, "demo"):  # demo: the default data, said explicitly
        if args.dataset == "demo" and (args.image_dir or args.label_file):
            raise UsageError("--dataset demo is the bundled set; drop --image-dir/--label-file")
        return
    if args.image_dir or args.label_file:
        raise UsageError("--dataset brings its own images/ and labels.txt; drop --image-dir and "
                         "--label-file")
    args.image_dir, args.label_file, args.synsets_file = dataset_dir(args.dataset,
                                                                     args.synsets_file)


def run(args) -> int:
    import time

    from mnv3.pipeline import run_all
    from mnv3.report import accuracy_table, baselines_table, performance_table, report_paths

    t0 = time.perf_counter()
    _resolve_dataset(args)
    rep = run_all(
        weights=args.weights, arch=args.arch, layout=args.layout, width_mult=args.width_mult,
        image_dir=args.image_dir, label_file=args.label_file, synsets_file=args.synsets_file,
        image_num=args.image_num, quant_modes=args.quant_modes, batch_sizes=args.batch_sizes,
        shape_mutable=args.shape_mutable, backends=args.backends, threads=args.threads,
        calib_dir=args.calib_dir, calib_num=args.calib_num, bench_duration=args.bench_duration,
        bench_iterations=args.bench_iterations, bench_rounds=args.bench_rounds,
        bench_warmup=args.bench_warmup, out=args.out,
        progress=not args.no_progress, cpp=args.cpp, tune_budget_s=args.tune,
    )
    say = human_print(args.json)
    if rep.untrained:
        say("UNTRAINED (random init, seed 0): top-1/top-5 below are meaningless.\n")
    say("## Performance\n\n" + performance_table(rep) + "\n")
    say("## Accuracy\n\n" + accuracy_table(rep) + "\n")
    say("## Against baselines (same run, same input, same threads)\n\n"
        + baselines_table(rep) + "\n")
    say("report: " + ", ".join(str(p) for p in report_paths(args.out).values())
        + f" (mnv3 run took {time.perf_counter() - t0:.0f} s)")
    write_json(args.json, rep.to_dict())
    return 0
