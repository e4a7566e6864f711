"""Is mnv3's int8 IR slower than the plain OpenVINO one? benchmark_app on both, same runtime.

The headline table (vs_benchmark_app.py) splits each gap into the IR's share and the runtime's;
its 2-thread cells move by +-30% round to round on a 2-vCPU VM. This runs benchmark_app alone
on int8 IRs of one network that differ in one recipe setting at a time, interleaved in a fresh
random order each round, and prints each one's median images/s and median per-round ratio to
the plain IR (``ovc`` + ``nncf.quantize`` defaults, vs_benchmark_app.py's), with the CPU's ISA:

  plain    ovc model.onnx, NNCF defaults (what an OpenVINO user makes)
  mnv3     mnv3 build --backend openvino, its recipe for this CPU (overflow fix by ISA,
           MatMuls float)
  matmul8  mnv3's recipe with the MatMuls int8 (``ignored_types: []``)
  overflow mnv3's recipe with NNCF's default overflow fix (``first_layer_only``)
  pc_act   mnv3's recipe with NNCF's per-channel activation scales (depthwise inputs)
  nncf     mnv3's conversion with NNCF's defaults for all three

    python benchmarks/ir_variants.py [--arch mobilenetv3-small] [--batch 1] [--threads 1]
        [--rounds 10] [--seconds 2] [--work data/vs_benchmark_app]

``--threads 1`` runs one stream of one thread (``-hint none -nstreams 1 -nthreads 1``): on a
2-vCPU VM the least noisy measure of what the IR costs; ``--threads 0`` uses ``-hint latency``.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SPEED_ONLY, venv_tool  # noqa: E402
from vs_benchmark_app import CALIB, _export, _plain_irs  # noqa: E402

VARIANTS = {"mnv3": {}, "matmul8": {"ignored_types": []},
            "overflow": {"overflow_fix": "first_layer_only"},
            "pc_act": {"per_channel_activations": True},
            "nncf": {"ignored_types": [], "overflow_fix": "first_layer_only",
                     "per_channel_activations": True}}


def main(argv=None) -> int:
    a = _args(argv)
    import mnv3
    from mnv3.sysinfo import cpu_model, isa_label

    work = Path(a.work)
    onnx = _export(a.arch, work)
    irs = {"plain": _plain_irs(onnx, work / a.arch / "ir", a.calib_dir, a.calib_num)["int8"]}
    for name, options in VARIANTS.items():
        out = work / a.arch / "ir_variants" / name
        if not (out / "meta.json").is_file():
            mnv3.build(onnx, out, quant_mode="qint8_mixed_float32", shape_mutable=False,
                       batch_size=a.batch, backend="openvino", calib_dir=a.calib_dir,
                       calib_num=a.calib_num, options={"progress": False, **SPEED_ONLY,
                                                       **options})
        irs[name] = out / "model.xml"
    res: dict[str, list[float]] = {k: [] for k in irs}
    rng = random.Random(0)
    for r in range(a.rounds):
        order = list(irs)
        rng.shuffle(order)
        for name in order:
            res[name].append(_fps(irs[name], a))
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in
                                                         res.items()), file=sys.stderr)
    how = "1 stream x 1 thread" if a.threads == 1 else "-hint latency"
    print(f"{cpu_model()}, int8 ISA: {isa_label()}; {a.arch} int8 batch {a.batch}, benchmark_app "
          f"{how}, {a.rounds} interleaved rounds of {a.seconds:g} s")
    for name, v in res.items():
        ratios = [x / p for x, p in zip(v, res["plain"])]
        print(f"  {name:<9}{statistics.median(v):8.1f} images/s ({min(v):.0f}-{max(v):.0f})   "
              f"vs plain {statistics.median(ratios):.3f}x ({min(ratios):.2f}-{max(ratios):.2f})")
    return 0


def _fps(xml: Path, a) -> float:
    how = (["-hint", "none", "-nstreams", "1", "-nthreads", "1", "-nireq", "1"]
           if a.threads == 1 else ["-hint", "latency"])
    out = subprocess.run([venv_tool("benchmark_app"), "-m", str(xml), "-d", "CPU", *how,
                          "-shape", f"[{a.batch},3,224,224]", "-t", f"{a.seconds:g}"],
                         check=True, capture_output=True, text=True).stdout
    fps = re.search(r"Throughput:\s+([\d.]+) FPS", out)
    if not fps:
        raise RuntimeError(f"no throughput in benchmark_app's output:\n{out[-2000:]}")
    return float(fps.group(1))


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="mobilenetv3-small")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, choices=(0, 1))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--calib-dir", default=str(CALIB))
    p.add_argument("--calib-num", type=int, default=100)
    p.add_argument("--work", default="data/vs_benchmark_app")
    return p.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
