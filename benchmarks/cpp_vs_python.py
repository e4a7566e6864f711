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
2. Speed: `mnv3 infer --threads T` vs `mnv3-infer-cpp --threads T` (1 stream, 2 requests), and
   `mnv3-infer-cpp --streams 2 --threads 1` (what its async requests allow; Python infer has one
   stream), beside `mnv3 bench`'s engine-only figure for the same model and threads. For Lite0
   (engine-bound: decoding is a few ms of a ~50 ms image) and for a seeded MobileNetV3-Small
   (decode-bound) built the same way.
3. Memory: the program's peak resident memory (VmHWM) on the 500 images and on the same images
   listed 4 times (2000 files, symlinks): streaming means it does not grow.

    python benchmarks/cpp_vs_python.py [--rounds 3] [--threads 2] [--models lite0,small]

Prints the CPU's ISA (AVX2 / AVX-512 / VNNI / AMX): a speed figure holds for the ISA it was
measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import export_fp32, interleave, median, median_ratio  # noqa: E402

from mnv3.cpp_engine import build_cpp  # noqa: E402
from mnv3.meta import read_meta  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "imagenet-sample-500"
LITE0_NORM = ["--mean", "0.498,0.498,0.498", "--std", "0.502,0.502,0.502"]


def isa() -> str:
    flags = set(re.findall(r"\w+", Path("/proc/cpuinfo").read_text().split("flags", 2)[1]
                           .split("\n")[0]))
    found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f in flags]
    model = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    return f"{model.strip()}, {os.cpu_count()} vCPU, ISA: {' '.join(found) or 'no AVX2'}"


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
            subprocess.run(["mnv3", "build", "--onnx", str(onnx), "--backend", "openvino",
                            "--quant-mode", "force_float32", "--shape-mutable", "false",
                            "--batch-size", "8", "--output", str(target), "--no-progress",
                            *norm], check=True, stdout=subprocess.DEVNULL)
        out[name] = target
    return out


def data_args() -> list[str]:
    return ["--image-dir", str(SAMPLE / "images"), "--label-file", str(SAMPLE / "labels.txt"),
            "--synsets", str(SAMPLE / "synsets.txt")]


def run_py(model: Path, out: Path, threads: int) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(["mnv3", "infer", "--model", str(model), *data_args(), "--output-dir",
                           str(out), "--threads", str(threads), "--json", "-", "--no-progress"],
                          check=True, capture_output=True, text=True)
    d = json.loads(proc.stdout)
    return {"wall": 500 / (time.perf_counter() - t0), "ips": d["images_per_s"]}


def run_cpp(binary: Path, model: Path, out: Path, threads: int, streams: int = 1,
            image_dir: str | None = None, extra=()) -> dict:
    args = data_args() if image_dir is None else ["--image-dir", image_dir]
    t0 = time.perf_counter()
    proc = subprocess.run([str(binary), "--model", str(model), *args, "--output-dir", str(out),
                           "--threads", str(threads), "--streams", str(streams), "--json", "-",
                           *extra], check=True, capture_output=True, text=True)
    d = json.loads(proc.stdout)
    return {"wall": d["processed"] / (time.perf_counter() - t0), "ips": d["images_per_s"],
            "rss_mb": d["peak_rss_kb"] / 1024, "processed": d["processed"]}


def run_bench(model: Path, threads: int) -> dict:
    proc = subprocess.run(["mnv3", "bench", "--model", str(model), "--threads", str(threads),
                           "--duration", "5", "--json", "-"], check=True, capture_output=True,
                          text=True)
    d = json.loads(proc.stdout)
    ips = d["throughput_ips"]
    return {"wall": ips, "ips": ips}


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="lite0,small")
    ap.add_argument("--work", default=None, help="keep models and results here (reused)")
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
    if "lite0" in models:
        fidelity(binary, models["lite0"], work, args.threads)
    T = args.threads
    for name, model in models.items():
        configs = {
            "python": lambda: run_py(model, work / "py", T),
            "cpp": lambda: run_cpp(binary, model, work / "cpp", T),
            "cpp_2streams": lambda: run_cpp(binary, model, work / "cpp2", 1, streams=2),
            "bench": lambda: run_bench(model, T),
        }
        res = interleave(configs, args.rounds, lambda n, f: f())
        print(f"\nspeed ({name}, batch 8, {T} threads, 500 images, median of {args.rounds} "
              "interleaved rounds; images/s):")
        print("  config                          in-run  whole command   x Python (in-run / wall)")
        for cfg in configs:
            ips = [r["ips"] for r in res[cfg]]
            wall = [r["wall"] for r in res[cfg]]
            ratio = median_ratio(ips, [r["ips"] for r in res["python"]])
            rwall = median_ratio(wall, [r["wall"] for r in res["python"]])
            print(f"  {cfg:30s} {median(ips):7.1f} {median(wall):13.1f}   {ratio:.2f}x / "
                  f"{rwall:.2f}x")
        cpp_vs_bench = median_ratio([r["ips"] for r in res["cpp"]], [r["ips"] for r in res["bench"]])
        print(f"  mnv3-infer-cpp end to end / mnv3 bench engine-only: {cpp_vs_bench:.2f}")
    if "lite0" in models:
        memory(binary, models["lite0"], work, args.threads)
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
