"""Benchmark a built model: throughput (images/s and queries/s), latency percentiles, cold start.

Feeds one pre-filled input to the engine, exactly one engine call per query (as trtexec,
benchmark_app and mm_run do), after one timed cold run and --warmup unmeasured runs. The
measured phase stops after --iterations queries (default 1000) or, instead, after --duration
seconds.

Throughput is given in images/s (mm_run counts images) and queries/s (trtexec counts a batch as
one query). Latency is per query, in ms: min, avg, p50, p90, p95, p99, max.
Percentiles use linear interpolation between closest ranks, numpy.percentile's default
(method='linear', Hyndman & Fan type 7): the p-th percentile of n sorted latencies v is
v[k] + f*(v[k+1]-v[k]) with k + f = (n-1)*p/100.

--threads T is the engine's intra-op thread count per request (default: the engine's choice;
1 when --streams > 1). --streams S runs S concurrent requests, each a thread calling the same
loaded session (as fast as S sessions with ONNX Runtime here, and it loads once). --split S
(OpenVINO) runs each query's batch as S sub-batches at once, one stream of --threads (default
1) threads each: still one query in flight, its latency is the whole batch's. A model chosen
by 'mnv3 tune' runs with its tuned threads, streams and split (meta.json extra["tuned"]) when
none of these flags is given; the output and the JSON's notes say which settings ran.

--serve URL load-tests a running 'mnv3 serve' instead, end to end over HTTP: --concurrency C
clients (default 20), each with one keep-alive connection, POST the --images (default: the
bundled demo photos) back to back for --duration seconds (default 10); it reports requests/s,
latency p50/p95/p99 and errors by kind. Loopback only, unless --allow-remote.

examples:
  mnv3 bench --model data/models/force_float32_false_8
  mnv3 bench --model data/models/force_float32_true_1 --batch-size 4 --threads 1 --duration 10
  mnv3 bench --model data/models/qint8_mixed_float16_false_1 --streams 2 --json bench.json
  mnv3 bench --model data/models/qint8_mixed_float16_false_8 --split 2
  mnv3 bench --serve http://127.0.0.1:8000 --concurrency 20 --duration 60
"""

from __future__ import annotations

import time

from mnv3 import defaults as d
from mnv3.cli.common import add_parser as _add, human_print, write_json


def add_parser(sub):
    p = _add(sub, "bench", __doc__, run)
    p.add_argument("--model", metavar="DIR", help="a built model directory (or --serve URL)")
    p.add_argument("--batch-size", "--batch", dest="batch", type=int, default=None, metavar="N",
                   help="images per query (default: the batch the model was built for); --batch "
                   "is accepted too")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="intra-op threads per request (default: engine's choice)")
    p.add_argument("--streams", type=int, default=None, metavar="S",
                   help="concurrent requests (default 1, or the tuned setting)")
    p.add_argument("--split", type=int, default=None, metavar="S",
                   help="run each query's batch as S sub-batches at once (OpenVINO; default 1, "
                   "or the tuned setting)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--iterations", type=int, default=None, metavar="N",
                      help=f"measured queries (default {d.BENCH_ITERATIONS})")
    stop.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                      help="measure for this many seconds instead")
    p.add_argument("--warmup", type=int, default=d.BENCH_WARMUP, metavar="N",
                   help=f"unmeasured runs per stream after the cold run (default {d.BENCH_WARMUP})")
    p.add_argument("--json", default=None, metavar="F", help="also write the result as JSON "
                   "('-' = stdout)")
    serve = p.add_argument_group("--serve: load-test a running 'mnv3 serve'")
    serve.add_argument("--serve", metavar="URL", help="the service, e.g. http://127.0.0.1:8000")
    serve.add_argument("--concurrency", type=int, default=20, metavar="C",
                       help="clients sending at once (default 20)")
    serve.add_argument("--images", metavar="DIR", help="images to send, cycled (default: the "
                       "bundled demo photos)")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow a service that is not on this machine's loopback")
    return p


def run(args) -> int:
    from mnv3.backends import load
    from mnv3.bench import benchmark
    from mnv3.errors import UsageError
    from mnv3.report import format_bench

    if args.serve is not None:
        return _load_test(args)
    if args.model is None:
        raise UsageError("give --model DIR (the engine alone) or --serve URL (a service)")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    say = human_print(args.json)
    tuned = _use_tuned(args, say)
    threads = args.threads if args.threads is not None else \
        (1 if args.streams > 1 or args.split > 1 else None)
    t0 = time.perf_counter()
    # OpenVINO: 1 stream per caller
    session = load(args.model, threads=threads, streams=args.streams, split=args.split)
    load_s = time.perf_counter() - t0
    with session:
        result = benchmark(session, batch=args.batch, threads=threads, streams=args.streams,
                           iterations=args.iterations, duration=args.duration,
                           warmup=args.warmup, load_time_s=load_s)
    if tuned is not None:  # the JSON says which settings ran, not only what tune recorded
        result.notes.append(f"ran with the settings 'mnv3 tune' chose ({tuned.get('objective')}): "
                            f"{_describe(args)}" if tuned else "ran with the --threads/--streams/"
                            "--split given, not the settings 'mnv3 tune' chose")
    say(format_bench(result))
    write_json(args.json, result.to_dict())
    return 0


def _use_tuned(args, say) -> dict | None:
    """No --threads / --streams: a tuned model's recorded settings (issue 17), else 1 stream.
    Returns them when used, {} for a tuned model run with other settings, None if untuned."""
    from mnv3.meta import read_meta

    tuned = read_meta(args.model).tuned
    if tuned and any(v is not None for v in (args.threads, args.streams, args.split)):
        tuned = {}
    if tuned:
        args.threads, args.streams = int(tuned["threads"]), int(tuned["streams"])
        args.split = int(tuned.get("split", 1))
        say(f"using the settings 'mnv3 tune' chose ({tuned['objective']}): {_describe(args)}; "
            "pass --threads/--streams/--split to override")
    else:
        args.streams = 1 if args.streams is None else args.streams
        args.split = 1 if args.split is None else args.split
    return tuned


def _describe(args) -> str:
    text = f"{args.threads} thread(s) x {args.streams} request(s) in flight"
    return text + (f", each batch split into {args.split} at once" if args.split > 1 else "")


def _load_test(args) -> int:
    """``--serve URL``: mnv3.serve_load against a running service."""
    from pathlib import Path

    from mnv3.data.datasets import demo_dir, is_image_file
    from mnv3.errors import UsageError
    from mnv3.serve_load import format_load, load_test

    if args.model is not None or args.iterations is not None:
        raise UsageError("--serve measures a running service: drop --model and --iterations "
                         "(it runs for --duration seconds)")
    engine_flags = [flag for flag, value in (("--batch-size", args.batch), ("--threads",
                    args.threads), ("--streams", args.streams), ("--split", args.split))
                    if value is not None]
    if engine_flags:  # the service's own settings decide these: say so, not ignore them
        raise UsageError(f"--serve measures a running service, whose 'mnv3 serve' settings "
                         f"decide {', '.join(engine_flags)}: drop them (load it with "
                         "--concurrency)")
    folder = Path(args.images) if args.images else demo_dir() / "images"
    if not folder.is_dir():
        raise UsageError(f"--images {folder} is not a folder of images")
    images = [p for p in folder.iterdir() if is_image_file(p) and p.is_file()]
    result = load_test(args.serve, images, concurrency=args.concurrency,
                       duration=args.duration or 10.0, allow_remote=args.allow_remote)
    human_print(args.json)(format_load(result))
    write_json(args.json, result.to_dict())
    return 0
