"""Issue 6's speed targets: mnv3's OpenVINO builds vs OpenVINO's own benchmark_app, and vs ORT.

For MobileNetV3-Large (seeded random weights: speed does not depend on their values), fixed
batch 1 and 8, it builds each OpenVINO mode with ``mnv3.build`` and measures, interleaved
(A B A B ..., DESIGN.md: 2-thread speed on these shared 2-vCPU machines drifts for minutes):

* mnv3: ``mnv3.load`` + ``mnv3.bench.benchmark`` (Python threads calling ``Session.run``);
* benchmark_app: OpenVINO's C++-backed tool on the SAME model.xml with the SAME compiled
  settings (NUM_STREAMS, INFERENCE_NUM_THREADS, INFERENCE_PRECISION_HINT read back from mnv3's
  session, passed with ``-hint none -load_config``; ``-nireq`` = streams; images/s computed as
  iterations x batch / duration, as mnv3 counts);
* mnv3's ONNX Runtime force_float32 build, same batch and threads.

Thread settings per batch: batch 1 = one stream of T threads (latency); batch 8 with T=2 = two
streams of one thread (throughput), T=1 = one stream. Prints median images/s over the rounds
and the median of per-round ratios. Targets: mnv3 / benchmark_app >= 1.0 (match or beat) at
batch 1 and 8; qint8 (OpenVINO) batch 1 >= 1.6x ORT force_float32.

    python benchmarks/openvino_speed.py                               # ~8 min on 2 vCPUs
    python benchmarks/openvino_speed.py --rounds 5 --seconds 4 --json ov_speed.json
    python benchmarks/openvino_speed.py --modes qint8_mixed_float16 --batches 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import mnv3
from mnv3.bench import benchmark
from mnv3.builder import build

from _common import export_fp32

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
                  options={"progress": False, "fidelity_num": 8})
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


def run_benchmark_app(model_dir: Path, config: dict, batch: int, seconds: float, tmp: Path) -> float:
    cfg = tmp / "ov_config.json"
    keys = ("NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT")
    cfg.write_text(json.dumps({"CPU": {k: config[k] for k in keys}}))
    tool = Path(sys.executable).with_name("benchmark_app")  # the one this venv's openvino ships
    cmd = [str(tool) if tool.exists() else "benchmark_app", "-m", str(model_dir / "model.xml"), "-d", "CPU", "-hint", "none",
           "-load_config", str(cfg), "-nireq", config["NUM_STREAMS"], "-t", str(max(1, round(seconds)))]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"benchmark_app failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    out = done.stdout
    count = int(re.search(r"Count:\s+(\d+) iterations", out).group(1))
    duration_ms = float(re.search(r"Duration:\s+([\d.]+) ms", out).group(1))
    return count * batch / (duration_ms / 1e3)


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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
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
            configs[backend, mode, b, t] = (session, streams, d)
    results: dict[tuple, list[float]] = {}
    for r in range(args.rounds):
        for key, (session, streams, d) in configs.items():
            backend, mode, b, t = key
            results.setdefault(key + ("mnv3",), []).append(
                run_mnv3(session, b, streams, args.seconds))
            if backend == "openvino":
                conf = session.config()
                conf["INFERENCE_PRECISION_HINT"] = precision_name(conf)
                results.setdefault(key + ("benchmark_app",), []).append(
                    run_benchmark_app(d, conf, b, args.seconds, work))
            print(f"  round {r + 1}/{args.rounds} {key}: "
                  f"{results[key + ('mnv3',)][-1]:.0f} img/s", file=sys.stderr, flush=True)
    report(results, modes, batches, thread_counts, configs)
    if args.json:
        args.json.write_text(json.dumps(
            {"|".join(map(str, k)): v for k, v in results.items()}, indent=2))


def report(results, modes, batches, thread_counts, configs) -> None:
    med = {k: statistics.median(v) for k, v in results.items()}

    def ratio(a, b):
        return statistics.median(x / y for x, y in zip(results[a], results[b]))

    print("\n| batch | threads | build | settings | mnv3 img/s | benchmark_app img/s "
          "| mnv3 / benchmark_app | vs mnv3 ORT force_float32 |")
    print("|---|---|---|---|---|---|---|---|")
    for b in batches:
        for t in thread_counts:
            ort_key = ("onnxruntime", "force_float32", b, t, "mnv3")
            for mode in modes:
                key = ("openvino", mode, b, t)
                conf = configs[key][0].config()
                setting = (f"{conf['NUM_STREAMS']} stream(s), {conf['INFERENCE_NUM_THREADS']} "
                           f"threads, {precision_name(conf)}")
                print(f"| {b} | {t} | OV {mode} | {setting} | {med[key + ('mnv3',)]:.0f} | "
                      f"{med[key + ('benchmark_app',)]:.0f} | "
                      f"{ratio(key + ('mnv3',), key + ('benchmark_app',)):.2f} | "
                      f"{ratio(key + ('mnv3',), ort_key):.2f}x |")
            print(f"| {b} | {t} | ORT force_float32 | - | {med[ort_key]:.0f} | - | - | 1.00x |")


if __name__ == "__main__":
    main()
