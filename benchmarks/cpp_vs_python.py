"""mnv3-infer-cpp against Python `mnv3 infer`: fidelity, end-to-end speed, memory (issue 16).

Same model, same images, same batch and engine threads, interleaved round after round
(A B C A B C: 2-vCPU speed drifts for minutes, DESIGN.md). Each run is the whole command as a
user types it (a subprocess: start-up and model load included in "wall"), and each command's
own images/s figure (decode included, load excluded) is quoted too.

1. Fidelity, EfficientNet-Lite0 real weights, force_float32, OpenVINO, fixed batch 8, on the
   500 images of ../shared/datasets/imagenet-sample-500 (mean/std 0.498/0.502, as
   benchmarks/reference_lite0.py builds it): how many preprocessed tensors are bit-identical to
   preprocess_image's (the program's --dump-tensors), the share of images whose top-1 is the
   same as Python's, both top-1 / top-5 accuracies, and whether the result files are identical.
2. Speed: `mnv3 infer --threads T` vs `mnv3-infer-cpp --threads T` (T engine threads in all,
   the program's default split: T streams of one thread) and `mnv3-infer-cpp --threads T
   --streams 1` (Python's split: one stream of T threads), and `mnv3 infer --decode native`
   (Python with the program's decoding: how much of the difference is decoding), beside the
   engine-only figures for the same model and threads: `mnv3 bench --threads T` (1 stream),
   `mnv3 bench --threads 1 --streams T` (the program's split) and `mnv3-infer-cpp --bench`
   (the program measuring its own engine calls). For Lite0 (engine-bound) and for a seeded
   MobileNetV3-Small (decode-bound) built the same way. The program's --profile (CPU ms per
   image per decode stage) is printed for the default configuration.
3. Memory: the program's peak resident memory (VmHWM) on the 500 images and on the same images
   listed 4 times (2000 files, symlinks): streaming means it does not grow.

    python benchmarks/cpp_vs_python.py [--rounds 3] [--threads 2] [--models lite0,small]
        [--skip-fidelity] [--skip-memory] [--bench-seconds 3]

Prints the CPU's ISA (AVX2 / AVX-512 / VNNI / AMX): a speed figure holds for the ISA it was
measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import export_fp32, interleave, median, venv_tool  # noqa: E402

from mnv3.cpp_engine import build_cpp  # noqa: E402
from mnv3.meta import read_meta  # noqa: E402
from mnv3.sysinfo import cpu_model, isa_label  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "imagenet-sample-500"
LITE0_NORM = ["--mean", "0.498,0.498,0.498", "--std", "0.502,0.502,0.502"]


def isa() -> str:
    return (f"{cpu_model()}, {os.cpu_count()} vCPU, int8 ISA: {isa_label()}, "
            f"OpenVINO {openvino_version()}")


def openvino_version() -> str:
    import openvino

    return openvino.get_version().split("-")[0]


def build_models(work: Path, names: list[str]) -> dict[str, Path]:
    out = {}
    for name in names:
        target = work / f"{name}_ov_fp32_b8"
        if not (target / "meta.json").is_file():
            if name == "lite0":
                import lite0

                onnx, norm = lite0.export_lite0(work / "lite0.onnx"), LITE0_NORM
            else:
                _, onnx = export_fp32("mobilenetv3-small", out_dir=work)
                norm = []
            subprocess.run([venv_tool("mnv3"), "build", "--onnx", str(onnx), "--backend", "openvino",
                            "--quant-mode", "force_float32", "--shape-mutable", "false",
                            "--batch-size", "8", "--output", str(target), "--no-progress",
                            *norm], check=True, stdout=subprocess.DEVNULL)
        out[name] = target
    return out


def data_args() -> list[str]:
    return ["--image-dir", str(SAMPLE / "images"), "--label-file", str(SAMPLE / "labels.txt"),
            "--synsets", str(SAMPLE / "synsets.txt")]


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_py(model: Path, out: Path, threads: int, decode: str = "exact") -> dict:
    t0, c0 = time.perf_counter(), children_cpu()
    proc = subprocess.run([venv_tool("mnv3"), "infer", "--model", str(model), *data_args(), "--output-dir",
                           str(out), "--threads", str(threads), "--json", "-", "--no-progress",
                           "--decode", decode],
                          check=True, capture_output=True, text=True)
    d = json.loads(proc.stdout)
    return {"wall": 500 / (time.perf_counter() - t0), "ips": d["images_per_s"],
            "cpu_ms": 1e3 * (children_cpu() - c0) / 500}


def run_cpp(binary: Path, model: Path, out: Path, threads: int, streams: int | None = None,
            image_dir: str | None = None, extra=()) -> dict:
    args = data_args() if image_dir is None else ["--image-dir", image_dir]
    split = ["--streams", str(streams)] if streams else []
    t0, c0 = time.perf_counter(), children_cpu()
    proc = subprocess.run([str(binary), "--model", str(model), *args, "--output-dir", str(out),
                           "--threads", str(threads), *split, "--json", "-", "--profile",
                           *extra], check=True, capture_output=True, text=True)
    d = json.loads(proc.stdout)
    return {"wall": d["processed"] / (time.perf_counter() - t0), "ips": d["images_per_s"],
            "rss_mb": d["peak_rss_kb"] / 1024, "processed": d["processed"],
            "profile": d["profile"], "cpu_ms": 1e3 * (children_cpu() - c0) / d["processed"]}


def run_bench(model: Path, threads: int, streams: int, seconds: float) -> dict:
    proc = subprocess.run([venv_tool("mnv3"), "bench", "--model", str(model), "--threads", str(threads),
                           "--streams", str(streams), "--duration", f"{seconds:g}", "--json",
                           "-"], check=True, capture_output=True, text=True)
    ips = json.loads(proc.stdout)["throughput_ips"]
    return {"wall": ips, "ips": ips}


def run_cpp_bench(binary: Path, model: Path, threads: int, seconds: float) -> dict:
    proc = subprocess.run([str(binary), "--model", str(model), "--threads", str(threads),
                           "--bench", f"{seconds:g}", "--json", "-"], check=True,
                          capture_output=True, text=True)
    d = json.loads(proc.stdout)
    images = len(d["latencies_s"]) * d["batch_size"]
    return {"wall": images / d["wall_s"], "ips": images / d["wall_s"],
            "cpu_ms": 1e3 * d["cpu_s"] / images}


def print_profile(runs: list[dict]) -> None:
    """The median over rounds of each --profile figure of the default C++ configuration."""
    cpu = {k: median([r["profile"]["cpu_ms_per_image"][k] for r in runs])
           for k in runs[0]["profile"]["cpu_ms_per_image"]}
    waits = {k: median([r["profile"][k] for r in runs]) for k in
             ("wall_s", "engine_busy_s", "decode_threads_waiting_for_a_request_s",
              "main_waiting_for_results_s")}
    print("  mnv3-infer-cpp --profile (median of rounds): CPU ms per image: " +
          ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    print("    seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in waits.items()))


def fidelity(binary: Path, model: Path, work: Path, threads: int) -> None:
    from mnv3.data.preprocess import preprocess_image

    cfg = read_meta(model).preprocess
    dump, out_c, out_p = work / "dump", work / "fid_cpp", work / "fid_py"
    run_cpp(binary, model, out_c, threads, extra=("--dump-tensors", str(dump)))
    run_py(model, out_p, threads)
    paths = sorted((SAMPLE / "images").iterdir(), key=str)
    same, worst = 0, 0.0
    for i, p in enumerate(paths):
        ours = np.fromfile(dump / f"{i}.f32", dtype=np.float32).reshape(3, cfg.crop, cfg.crop)
        ref = preprocess_image(p, cfg)
        same += np.array_equal(ours, ref)
        worst = max(worst, float(np.abs(ours - ref).max()))
    t1 = {d: dict(line.split() for line in (d / "eval_result_1.txt").read_text().splitlines())
          for d in (out_c, out_p)}
    agree = sum(t1[out_c][k] == t1[out_p][k] for k in t1[out_p]) / len(t1[out_p])
    print(f"\nfidelity ({model.name}, {len(paths)} images):")
    print(f"  preprocessed tensors bit-identical to preprocess_image: {same}/{len(paths)} "
          f"(max |diff| {worst:g})")
    print(f"  top-1 same as Python on {agree:.2%} of images")
    for d, label in ((out_p, "Python mnv3 infer"), (out_c, "mnv3-infer-cpp   ")):
        print(f"  {label}: {(d / 'eval_result.txt').read_text().strip().replace(chr(10), ', ')}")
    for name in ("eval_labels.txt", "eval_result_1.txt", "eval_result_5.txt", "eval_result.txt",
                 "results.jsonl"):
        same_file = (out_c / name).read_bytes() == (out_p / name).read_bytes()
        print(f"  {name}: {'identical' if same_file else 'DIFFERENT'}")


def memory(binary: Path, model: Path, work: Path, threads: int) -> None:
    many = work / "many"
    many.mkdir(exist_ok=True)
    for rep in range(4):
        for p in (SAMPLE / "images").iterdir():
            link = many / f"r{rep}_{p.name}"
            if not link.exists():
                link.symlink_to(p)
    small = run_cpp(binary, model, work / "mem1", threads)
    big = run_cpp(binary, model, work / "mem4", threads, image_dir=str(many))
    print(f"\nmemory ({model.name}): peak RSS {small['rss_mb']:.0f} MB for {small['processed']} "
          f"images, {big['rss_mb']:.0f} MB for {big['processed']} "
          f"(x{big['rss_mb'] / small['rss_mb']:.2f})")


def row(cfg: str, res: dict) -> str:
    """One config's medians and its per-round ratios to Python's, with their spread."""
    out = f"{cfg:15s} {median([r['ips'] for r in res[cfg]]):7.1f} "
    out += f"{median([r['wall'] for r in res[cfg]]):13.1f}"
    for key in ("ips", "wall"):
        ratios = [x[key] / y[key] for x, y in zip(res[cfg], res["python"])]
        out += f"   {median(ratios):5.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="lite0,small")
    ap.add_argument("--work", default=None, help="keep models and results here (reused)")
    ap.add_argument("--bench-seconds", type=float, default=3.0)
    ap.add_argument("--skip-fidelity", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    if not (SAMPLE / "labels.txt").is_file():
        print(f"needs the ImageNet sample at {SAMPLE}", file=sys.stderr)
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="mnv3-cpp-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(isa())
    print(f"load average at start: {os.getloadavg()}")
    binary = build_cpp()
    models = build_models(work, args.models.split(","))
    if "lite0" in models and not args.skip_fidelity:
        fidelity(binary, models["lite0"], work, args.threads)
    T, secs = args.threads, args.bench_seconds
    for name, model in models.items():
        configs = {
            "python": lambda: run_py(model, work / "py", T),
            # the same pixels decoded by the C++ code inside Python (mnv3.data.native_decode)
            "python_native": lambda: run_py(model, work / "pyn", T, decode="native"),
            "cpp": lambda: run_cpp(binary, model, work / "cpp", T),
            "cpp_1stream": lambda: run_cpp(binary, model, work / "cpp1", T, streams=1),
            "bench_1stream": lambda: run_bench(model, T, 1, secs),
            "bench_split": lambda: run_bench(model, 1, T, secs),
            "cpp_bench": lambda: run_cpp_bench(binary, model, T, secs),
        }
        print(f"load average before {name}: {os.getloadavg()}")
        res = interleave(configs, args.rounds, lambda n, f: f())
        print(f"\nspeed ({name}, {isa_label()}, batch 8, {T} engine threads in all, 500 "
              f"images, median of {args.rounds} interleaved rounds; images/s; x Python: median "
              "of per-round ratios [min-max]):")
        print("  config           in-run  whole command   x Python in-run          x Python wall")
        for cfg in configs:
            print("  " + row(cfg, res))
        cpu = {c: [r["cpu_ms"] for r in res[c]] for c in ("python", "cpp", "cpp_1stream")}
        print("  whole-command CPU ms per image (start-up and load included; the speed ratio "
              "where the CPU is the limit, as on this shared machine): " + ", ".join(
                  f"{c} {median(v):.2f}" for c, v in cpu.items()) + "; Python / C++ "
              f"{median([p / c for p, c in zip(cpu['python'], cpu['cpp'])]):.2f}x")
        for a, b in (("cpp", "bench_split"), ("cpp", "bench_1stream"), ("cpp_1stream",
                                                                         "bench_1stream")):
            ratios = [x["ips"] / y["ips"] for x, y in zip(res[a], res[b])]
            print(f"  {a} end to end / {b} engine-only: {median(ratios):.2f} "
                  f"[{min(ratios):.2f}-{max(ratios):.2f}]")
        print_profile(res["cpp"])
        engine = median([r["cpu_ms"] for r in res["cpp_bench"]])
        total = median([r["profile"]["cpu_ms_per_image"]["process_total"] for r in res["cpp"]])
        decode = median([r["profile"]["cpu_ms_per_image"]["decode_threads_total"]
                         for r in res["cpp"]])
        print(f"  CPU ms per image: engine alone (cpp --bench) {engine:.2f}, end to end "
              f"{total:.2f} (decode threads {decode:.2f}); where the CPU is the limit, end to "
              f"end can reach at most {engine / (engine + decode):.2f} of engine-only")
        print(f"load average after {name}: {os.getloadavg()}")
    if "lite0" in models and not args.skip_memory:
        memory(binary, models["lite0"], work, args.threads)
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
