"""Issue 6's speed targets: mnv3's OpenVINO builds vs OpenVINO's own benchmark_app, and vs ORT.

For MobileNetV3-Large (seeded random weights: speed does not depend on their values), fixed
batch 1 and 8, it builds each OpenVINO mode with ``mnv3.build`` and measures, interleaved in
short slices (DESIGN.md: speed on these shared 2-vCPU machines swings by up to +-40% within
seconds and drifts for minutes, so only neighbouring slices compare):

* mnv3: ``mnv3.load`` + ``mnv3.bench.benchmark`` (Python threads calling ``Session.run``);
* benchmark_app: OpenVINO's own measurement loop (``openvino.tools.benchmark``, the code the
  ``benchmark_app`` command runs after compiling: an AsyncInferQueue of ``nireq`` = streams
  requests with inputs filled once, ``-hint none``) on the SAME model.xml compiled with the SAME
  settings (PERFORMANCE_HINT, NUM_STREAMS, INFERENCE_NUM_THREADS, INFERENCE_PRECISION_HINT read
  back from mnv3's session), in this process so its slice sits right beside mnv3's;
  ``--cli`` also runs the ``benchmark_app`` command itself each round (slower: ~2 s start-up
  per call, and its slice lands seconds away from mnv3's);
* mnv3's ONNX Runtime force_float32 build, same batch and threads.

Thread settings per batch: batch 1 = one stream of T threads (latency); batch 8 with T=2 = two
streams of one thread (throughput), T=1 = one stream. Each round visits the configurations in a
new random order and swaps which of mnv3 / benchmark_app goes first. Prints median images/s over
the rounds and the median and interquartile range of the per-round ratios. Targets: mnv3 /
benchmark_app >= 1.0 (match or beat) at batch 1 and 8; qint8 (OpenVINO) batch 1 >= 1.6x ORT
force_float32.

    python benchmarks/openvino_speed.py            # ~7 min on 2 vCPUs; ~12 with --cli
    python benchmarks/openvino_speed.py --batches 1 --rounds 25 --seed 1 --json ov_speed.json
    python benchmarks/openvino_speed.py --modes qint8_mixed_float16 --batches 1 --threads 2 --cli
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import mnv3
from mnv3.bench import benchmark
from mnv3.builder import build

from _common import export_fp32, venv_tool

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO.parent / "shared" / "datasets" / "imagenet-sample-500" / "images"


def build_models(onnx, work: Path, modes, batches, calib_dir) -> dict:
    """{(backend, mode, batch): model dir}, reusing directories a previous run built."""
    dirs = {}
    wanted = [("openvino", m, b) for m in modes for b in batches]
    wanted += [("onnxruntime", "force_float32", b) for b in batches]
    for backend, mode, b in wanted:
        d = work / f"{backend}_{mode}_false_{b}"
        if not (d / "meta.json").is_file():
            print(f"building {d.name} ...", file=sys.stderr, flush=True)
            build(onnx, d, quant_mode=mode, shape_mutable=False, batch_size=b,
                  calib_dir=calib_dir, calib_num=100, backend=backend,
                  # speed of the int8 recipe itself: no accuracy budget (seeded random
                  # weights), no float shipped in its place
                  options={"progress": False, "fidelity_num": 8, "allow_below_budget": True,
                           "speed_check": False})
        dirs[backend, mode, b] = d
    return dirs


def open_session(model_dir: Path, batch: int, threads: int):
    """(session, streams) with the thread layout described in the module docstring."""
    streams = 2 if batch > 1 and threads == 2 else 1
    if "openvino" in model_dir.name and streams > 1:
        return mnv3.load(model_dir, threads=1, streams=streams), streams
    return mnv3.load(model_dir, threads=threads), streams


def run_mnv3(session, batch, streams, seconds) -> float:
    r = benchmark(session, batch=batch, streams=streams, duration=seconds, warmup=20,
                  first_run=False)
    return r.throughput_ips


class BenchmarkAppLoop:
    """benchmark_app's measurement (``openvino.tools.benchmark.benchmark.Benchmark``) on ``xml``.

    Set up as the command sets it up for ``-hint none -load_config <settings> -nireq <streams>``
    (async API, inference-only mode: inputs filled once, random values, then a first
    inference); ``measure`` runs its ``main_loop`` for ``seconds`` and returns images/s
    counted as mnv3 counts them (iterations x batch / duration).
    """

    def __init__(self, xml: Path, settings: dict, batch: int, streams: int, seconds: float):
        from openvino.tools.benchmark.benchmark import Benchmark

        self.bm = Benchmark("CPU", number_infer_requests=streams, duration_seconds=seconds,
                            api_type="async", inference_only=True)
        self.bm.set_config({"CPU": settings})
        compiled = self.bm.core.compile_model(self.bm.read_model(str(xml)), "CPU")
        got = {k: str(compiled.get_property(k)) for k in ("NUM_STREAMS", "INFERENCE_NUM_THREADS")}
        if got != {k: str(settings[k]) for k in got}:  # the comparison is void otherwise
            raise RuntimeError(f"benchmark_app's compile chose {got}, mnv3's {settings}")
        self.requests = self.bm.create_infer_requests(compiled)
        rng = np.random.default_rng(0)
        for request in self.requests:
            tensor = request.get_input_tensor()
            tensor.data[:] = rng.random(tuple(tensor.shape), dtype=np.float32)
        self.bm.first_infer(self.requests)
        self.batch = batch

    def measure(self) -> float:
        batches = type("Batches", (), {"get_next_batch_size": lambda _: self.batch})()
        *_, duration, iterations = self.bm.main_loop(self.requests, batches, [self.batch], 50, False)
        return iterations * self.batch / duration


def run_benchmark_app_cli(model_dir: Path, config: dict, batch: int, seconds: float, tmp: Path) -> float:
    """The ``benchmark_app`` command itself, with mnv3's compiled settings (``--cli``)."""
    cfg = tmp / "ov_config.json"
    keys = ("NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT")
    cfg.write_text(json.dumps({"CPU": {k: config[k] for k in keys}}))
    cmd = [venv_tool("benchmark_app"), "-m", str(model_dir / "model.xml"),
           "-d", "CPU", "-hint", "none", "-load_config", str(cfg), "-nireq", config["NUM_STREAMS"],
           "-t", str(max(1, round(seconds)))]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"benchmark_app failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    out = done.stdout
    count = int(re.search(r"Count:\s+(\d+) iterations", out).group(1))
    duration_ms = float(re.search(r"Duration:\s+([\d.]+) ms", out).group(1))
    return count * batch / (duration_ms / 1e3)


def benchmark_app_settings(session) -> dict:
    """mnv3's compiled settings, in the form benchmark_app's config file takes."""
    conf = session.config()
    keys = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS")
    return {**{k: conf[k] for k in keys}, "INFERENCE_PRECISION_HINT": precision_name(conf)}


def precision_name(config: dict) -> str:
    """'<Type: 'bfloat16'>' -> 'bf16' for benchmark_app's config file."""
    text = config["INFERENCE_PRECISION_HINT"]
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(
        re.sub(r"[<>'\s]|Type:", "", text), text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="mobilenetv3-large")
    ap.add_argument("--modes", default="force_float32,force_bfloat16,qint8_mixed_float16")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=1.0, help="length of one measured slice")
    ap.add_argument("--cli", action="store_true",
                    help="also run the benchmark_app command itself each round")
    ap.add_argument("--seed", type=int, default=0, help="seeds the order of the slices")
    ap.add_argument("--work", type=Path, default=None, help="reuse builds across runs")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--build-only", action="store_true", help="build (into --work) and stop")
    args = ap.parse_args()
    modes = args.modes.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="mnv3-ovspeed-"))
    work.mkdir(parents=True, exist_ok=True)
    onnx = next(work.glob(f"{args.arch}-*.onnx"), None)  # a previous run's export
    if onnx is None:
        _, onnx = export_fp32(args.arch, out_dir=work, layout="torchvision")
    calib = SAMPLE_IMAGES if SAMPLE_IMAGES.is_dir() else None  # None: the bundled demo images
    dirs = build_models(onnx, work, modes, batches, calib)
    if args.build_only:
        return

    # Every configuration is opened once; the rounds then interleave them.
    configs = {}
    for (backend, mode, b), d in dirs.items():
        for t in thread_counts:
            session, streams = open_session(d, b, t)
            app = None
            if backend == "openvino":
                app = BenchmarkAppLoop(d / "model.xml", benchmark_app_settings(session), b,
                                       streams, args.seconds)
            configs[backend, mode, b, t] = (session, streams, d, app)
    order = random.Random(args.seed)
    results: dict[tuple, list[float]] = {}
    for r in range(args.rounds):
        for key in order.sample(list(configs), len(configs)):
            session, streams, d, app = configs[key]
            runs = {"mnv3": lambda: run_mnv3(session, key[2], streams, args.seconds)}
            if app is not None:
                runs["benchmark_app"] = app.measure
            if app is not None and args.cli:
                conf = benchmark_app_settings(session)
                runs["benchmark_app_cli"] = lambda: run_benchmark_app_cli(
                    d, conf, key[2], args.seconds, work)
            names = list(runs)[::-1] if r % 2 else list(runs)  # neither always goes first
            for name in names:
                results.setdefault(key + (name,), []).append(runs[name]())
            print(f"  round {r + 1}/{args.rounds} {key}: "
                  f"{results[key + ('mnv3',)][-1]:.0f} img/s", file=sys.stderr, flush=True)
    report(results, modes, batches, thread_counts, configs)
    if args.json:
        args.json.write_text(json.dumps(
            {"|".join(map(str, k)): v for k, v in results.items()}, indent=2))


def report(results, modes, batches, thread_counts, configs) -> None:
    med = {k: statistics.median(v) for k, v in results.items()}

    def ratio(a, b, spread=True) -> str:
        """Median of the per-round ratios a/b, with their interquartile range."""
        per_round = [x / y for x, y in zip(results[a], results[b])]
        text = f"{statistics.median(per_round):.2f}"
        if spread and len(per_round) > 1:
            q1, _, q3 = statistics.quantiles(per_round, n=4)
            text += f" ({q1:.2f}-{q3:.2f})"
        return text

    cli = any(k[-1] == "benchmark_app_cli" for k in results)
    print("\n| batch | threads | build | settings | mnv3 img/s | benchmark_app img/s "
          "| mnv3 / benchmark_app (IQR) |" + (" mnv3 / benchmark_app command |" if cli else "")
          + " vs mnv3 ORT force_float32 |")
    print("|---" * (9 if cli else 8) + "|")
    for b in batches:
        for t in thread_counts:
            ort_key = ("onnxruntime", "force_float32", b, t, "mnv3")
            for mode in modes:
                key = ("openvino", mode, b, t)
                conf = configs[key][0].config()
                setting = (f"{conf['NUM_STREAMS']} stream(s), {conf['INFERENCE_NUM_THREADS']} "
                           f"threads, {precision_name(conf)}")
                mine, app = key + ("mnv3",), key + ("benchmark_app",)
                print(f"| {b} | {t} | OV {mode} | {setting} | {med[mine]:.0f} | {med[app]:.0f} | "
                      f"{ratio(mine, app)} |"
                      + (f" {ratio(mine, key + ('benchmark_app_cli',))} |" if cli else "")
                      + f" {ratio(mine, ort_key, spread=False)}x |")
            print(f"| {b} | {t} | ORT force_float32 | - | {med[ort_key]:.0f} | - | - |"
                  + (" - |" if cli else "") + " 1.00x |")


if __name__ == "__main__":
    main()
