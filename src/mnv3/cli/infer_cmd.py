"""Run a built model over images: per-image top-1 / top-5, accuracy, images/s, the seed's result files.

Data: --image-dir D with an optional --label-file F (`filename class_index` or `filename wnid`
lines; wnids need --synsets), an ImageFolder tree (one sub-folder per class) or a plain folder
(predict only). --dataset DIR takes a folder laid out as images/ + labels.txt (+ synsets.txt),
like ../shared/datasets/imagenet-sample-500; --dataset demo (or no data flags at all) is the
bundled demo set (28 ImageNet photos).

Writes into --output-dir: eval_labels.txt, eval_result_1.txt, eval_result_5.txt (five lines per
image), eval_result.txt (`top1 accuracy: x` / `top5 accuracy: y`), results.jsonl (top-5 indices,
class names, probabilities per image), infer.json (this summary; it tells mnv3 eval when the
model was never trained) and skipped.txt when an image could not be decoded
(skipped and counted; --strict makes it an error). --save-images also writes copies with the
top-1 class and probability drawn on them into images/ (moved in only when the run succeeds).
Images are decoded on --workers threads while the model runs, so end-to-end images/s is printed
beside the images/s inside the engine calls (timed while the decode threads compete for the
cores: lower than 'mnv3 bench', which runs the engine alone). The engine runs with the settings
'mnv3 tune' recorded for the model, else 2 batches at once on half the cores each (single-thread
streams keep going when a decode thread takes a core); --threads T runs one batch at a time on T
threads. --decode fast trades exact pixels
for speed (mnv3.data.fast_decode; its measured top-1 agreement is in the README); a model for
which 'mnv3 tune' measured it (>= 99.5% top-1 agreement with the exact path, and faster) uses it
by default, and says so; --decode exact overrides. --decode native keeps the exact pixels and
decodes them in C++ (the decoder of mnv3-infer-cpp, built by 'mnv3 build-cpp'), about half the
CPU per image, which end to end goes to the engine.
--engine cpp runs an OpenVINO model through the native program mnv3-infer-cpp instead (build
it once with 'mnv3 build-cpp'): same flags, same result files.
--engine ray runs on a Ray cluster (pip install "mnv3[ray]"): Ray Data decodes in map tasks and
--workers actors run the model (--threads-per-worker engine threads each); --address local (the
default) starts a cluster on this machine, auto or host:port joins one. Same result files.
--shard K/N runs only the K-th of N contiguous slices of the images (python or ray engine), so
N machines or clusters can share one run; 'mnv3 merge' then joins their output folders into
the files one run writes.

examples:
  mnv3 infer --model data/models/force_float32_false_8 --output-dir out/demo
  mnv3 infer --model data/models/force_float32_false_8 \\
      --dataset ../shared/datasets/imagenet-sample-500 --output-dir out/sample
  mnv3 infer --model data/models/force_float32_false_8 --image-dir val/images \\
      --label-file val/labels.txt --output-dir out/val --image-num 500 --json out/val.json
  mnv3 infer --model data/models/force_float32_false_8 --decode native \\
      --dataset ../shared/datasets/imagenet-sample-500 --output-dir out/native
  mnv3 infer --model data/models/force_float32_false_8 --engine ray --workers 2 \\
      --dataset ../shared/datasets/imagenet-sample-500 --output-dir out/ray
  mnv3 infer --model data/models/force_float32_false_8 --shard 1/2 --output-dir out/s1
  mnv3 infer --model data/models/force_float32_false_8 --shard 2/2 --output-dir out/s2
  mnv3 merge out/s1 out/s2 --output-dir out/all
"""

from __future__ import annotations

import sys

from mnv3.cli.common import add_parser as _add, dataset_dir, human_print, write_json
from mnv3.defaults import DECODES
from mnv3.provenance import below_budget_note


def add_parser(sub):
    p = _add(sub, "infer", __doc__, run)
    p.add_argument("--model", required=True, metavar="DIR", help="a built model directory")
    data = p.add_argument_group("data (default: the bundled demo set)")
    data.add_argument("--image-dir", metavar="D", help="folder of images (or ImageFolder tree)")
    data.add_argument("--label-file", metavar="F", help="'filename class_index' or "
                      "'filename wnid' lines")
    data.add_argument("--synsets", metavar="F", help="'wnid name' per line, line N = class N: "
                      "maps wnid labels and names the classes")
    data.add_argument("--dataset", metavar="DIR", help="a folder with images/, labels.txt "
                      "and optionally synsets.txt; 'demo' = the bundled demo set")
    data.add_argument("--demo", action="store_true", help="use the bundled demo set")
    p.add_argument("--output-dir", required=True, metavar="O", help="where result files go")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="images per engine call (default: the model's batch)")
    p.add_argument("--image-num", type=int, default=None, metavar="N",
                   help="only the first N images (sorted by name)")
    p.add_argument("--workers", type=int, default=None, metavar="W",
                   help="decode threads (default: one per CPU); with --engine ray: model actors "
                   "(default 2)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="engine intra-op threads, one batch in the engine at a time "
                   "(default: what 'mnv3 tune' chose, else 2 batches in flight sharing the "
                   "cores)")
    p.add_argument("--save-images", action="store_true",
                   help="write copies with the top-1 class drawn on them to O/images/")
    p.add_argument("--strict", action="store_true",
                   help="stop with an error at the first image that cannot be decoded")
    p.add_argument("--engine", choices=("python", "cpp", "ray"), default="python",
                   help="python (default); cpp: the native mnv3-infer-cpp program, for models "
                   "built with --backend openvino (see 'mnv3 build-cpp'); ray: a Ray cluster")
    ray = p.add_argument_group("--engine ray")
    ray.add_argument("--address", default=None, metavar="ADDR",
                     help="local (default: start a cluster here), auto, or host:port")
    ray.add_argument("--threads-per-worker", type=int, default=None, metavar="T",
                     help="engine threads of each model actor (default 1)")
    p.add_argument("--decode", choices=DECODES, default=None,
                   help="exact (default, unless 'mnv3 tune' chose fast for this model after "
                   "measuring it): the reference pipeline, bit for bit; native: the same "
                   "pixels from the C++ decoder that 'mnv3 build-cpp' builds, about half the "
                   "CPU per image (checked against exact before it runs); fast: JPEGs "
                   "decoded at 1/2-1/8 scale where at least twice the resize target and one "
                   "resize to the crop (other pixels; its top-1 agreement is in the README); "
                   "recorded in infer.json. --engine python; native also with --engine ray")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="only the K-th of N contiguous slices of the images (after "
                   "--image-num), for 'mnv3 merge' to join with the other shards' folders")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", default=None, metavar="F",
                   help="also write the summary as JSON ('-' = stdout)")
    return p


def run(args) -> int:
    from mnv3.backends import load
    from mnv3.data.datasets import demo_dataset, demo_dir, load_class_names, load_dataset
    from mnv3.data.fast_decode import check_decode
    from mnv3.errors import UsageError
    from mnv3.inference import infer, open_for_infer

    if args.dataset == "demo":
        args.demo, args.dataset = True, None
    if sum(map(bool, (args.demo, args.dataset, args.image_dir))) > 1:
        raise UsageError("give one of --image-dir, --dataset or --demo")
    if args.dataset and args.label_file:
        raise UsageError("--dataset brings its own labels.txt; drop --label-file")
    if args.label_file and not args.image_dir:
        raise UsageError("--label-file needs --image-dir (the folder its file names are in)")
    if args.decode is not None:
        check_decode(args.decode, args.engine)
    if args.dataset:
        args.image_dir, args.label_file, args.synsets = dataset_dir(args.dataset, args.synsets)
    for flag, value in (("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value is not None and value < 1:  # 0 would silently mean "the default"
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if args.engine != "ray" and (args.address or args.threads_per_worker):
        raise UsageError("--address and --threads-per-worker are options of --engine ray")
    extra = {}
    if args.shard is not None:
        from mnv3.shards import Shard

        if args.engine == "cpp":
            raise UsageError("--shard runs with --engine python or ray (the cpp engine writes "
                             "no infer.json for 'mnv3 merge' to check)")
        extra["shard"] = Shard.parse(args.shard)
    say = human_print(args.json)
    model = None
    if args.engine == "cpp":  # the same dataset handling; the native program runs the model
        from mnv3.cpp_engine import CppModel, infer_cpp as infer  # noqa: F811

        session = CppModel(args.model, threads=args.threads)
    elif args.engine == "ray":  # checked here once (its meta reads the labels); actors load it
        session, model = load(args.model, threads=1), args.model
        extra.update(engine="ray", address=args.address,
                     threads_per_worker=args.threads_per_worker)
    else:
        session = open_for_infer(args.model, args.threads)  # decoding needs the CPU too
        if session.meta.tuned and (session.in_flight > 1 or session.split > 1):
            say(f"using the settings 'mnv3 tune' chose: {session.meta.tuned['threads']} "
                f"thread(s) x {session.in_flight} batches in flight"
                + (f", each batch split in {session.split} at once" if session.split > 1
                   else "") + "; pass --threads to override")
        if args.decode is None:
            args.decode = _tuned_decode(session.meta, say)
    with session:
        synsets = args.synsets
        if args.image_dir:
            samples = load_dataset(args.image_dir, args.label_file, synsets,
                                   num_classes=session.meta.num_classes)
        else:
            say(f"no --image-dir given: using the bundled demo set ({demo_dir()})")
            samples = demo_dataset()
            synsets = synsets or str(demo_dir() / "synsets.txt")
        class_names = load_class_names(synsets) if synsets else None
        result = infer(model or session, samples, args.output_dir, batch_size=args.batch_size,
                       image_num=args.image_num, workers=args.workers, strict=args.strict,
                       save_images=args.save_images, class_names=class_names,
                       progress=not args.no_progress and sys.stderr.isatty(),
                       **({"decode": args.decode} if args.engine != "cpp" else {}), **extra)
    for line in summary_lines(result):
        say(line)
    below = below_budget_note(getattr(session, "meta", None))
    if below:  # shipped with --allow-below-budget: every accuracy it prints carries that
        say(f"note: {below}")
    write_json(args.json, result.to_dict())
    return 0


def _tuned_decode(meta, say) -> str:
    """The decode 'mnv3 tune' chose for this model (said when it is not exact)."""
    from mnv3.data.fast_decode import tuned_decode
    from mnv3.tune_decode import describe

    decode = tuned_decode(meta)
    if decode == "fast":
        say(f"using --decode fast, which 'mnv3 tune' chose for this model ({describe(meta.tuned)}"
            "); pass --decode exact for the exact pixels")
    elif decode == "native":
        say("using --decode native (the exact pixels, decoded in C++), which 'mnv3 tune' chose "
            f"for this model ({describe(meta.tuned)}); --decode exact decodes them in Python")
    elif (meta.tuned or {}).get("decode") == "native":
        from mnv3.data.native_decode import unavailable

        say(f"'mnv3 tune' chose --decode native for this model, which cannot run here "
            f"({unavailable(meta.preprocess)}): decoding the exact way, the same pixels")
    return decode


def summary_lines(r) -> list[str]:
    workers = (f"{r.workers} model actors on Ray" if getattr(r, "engine", None) == "ray"
               else f"{r.workers} decode threads")
    decode = getattr(r, "decode", "exact")
    if decode == "native":
        workers += ", --decode native: the exact pixels, decoded in C++"
    elif decode != "exact":  # its accuracy is not the exact pipeline's
        workers += f", --decode {decode}: approximate pixels, see README for its agreement"
    lines = [f"images: {r.processed} predicted, {r.skipped} skipped "
             f"(of {r.images}; batch {r.batch_size}, {workers})"]
    shard = getattr(r, "shard", None)
    if shard:
        lines.append(f"shard {shard['index']}/{shard['count']}: images {shard['first'] + 1}-"
                     f"{shard['first'] + shard['images']} of {shard['total']}; join the shards "
                     "with 'mnv3 merge'")
    if r.skipped:
        lines.append(f"skipped (could not decode), listed in {r.output_dir}/skipped.txt:")
        lines += [f"  {name}: {reason}" for name, reason in r.skipped_files[:5]]
        if r.skipped > 5:
            lines.append(f"  ... and {r.skipped - 5} more")
    if r.top1 is not None:
        lines.append(f"top1 accuracy: {r.top1:f} ({r.top1_correct}/{r.labeled})")
        lines.append(f"top5 accuracy: {r.top5:f} ({r.top5_correct}/{r.labeled})")
        if r.untrained:
            lines.append(f"note: {r.untrained}")
    else:
        lines.append("no labels given: predictions only (see results.jsonl)")
    decode = getattr(r, "decode", "exact")
    lines.append(f"speed: {r.images_per_s:.1f} images/s end to end ({decode} decode included), "
                 f"{r.engine_images_per_s:.1f} images/s in the engine calls "
                 f"({r.engine_seconds:.2f} s of {r.seconds:.2f} s; timed while the decode "
                 "threads share the cores, so below 'mnv3 bench's engine-alone figure)")
    lines.append(f"results in {r.output_dir}")
    return lines
