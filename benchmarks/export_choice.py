"""Why mnv3 exports the way it does: exporter x graph clean-up, measured on the full-size networks.

For each layout x arch (width 1.0, seeded weights) prints export seconds, the opset emitted, node
counts that matter downstream (BatchNormalization left, HardSwish kept whole or decomposed, total
nodes) and ONNX Runtime latency at batch 1 on 1 thread (median of interleaved rounds), for:
  torchscript+none        torch.onnx.export(dynamo=False) as is
  torchscript+onnxscript  ... then onnxscript.optimizer (mnv3's choice)
  torchscript+ort-basic   ... then ORT offline "basic" optimisation saved to a file
  dynamo                  torch.onnx.export(dynamo=True, optimize=True)

    python benchmarks/export_choice.py [--archs mobilenetv3-small] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from mnv3.export import _export, _optimize
from mnv3.models import create_model


def latency_ms(path: Path, iters: int = 50) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    for _ in range(10):
        sess.run(None, {"input": x})
    t = time.perf_counter()
    for _ in range(iters):
        sess.run(None, {"input": x})
    return (time.perf_counter() - t) / iters * 1e3


def variants(model, work: Path) -> dict[str, tuple[Path, float]]:
    example = torch.randn(2, 3, 224, 224)
    out = {}
    t = time.perf_counter()
    _export(model, example, work / "ts.onnx", 17, True, "torchscript")
    out["torchscript+none"] = (work / "ts.onnx", time.perf_counter() - t)
    base = out["torchscript+none"][1]
    (work / "os.onnx").write_bytes((work / "ts.onnx").read_bytes())
    t = time.perf_counter()
    _optimize(work / "os.onnx")
    out["torchscript+onnxscript"] = (work / "os.onnx", base + time.perf_counter() - t)
    t = time.perf_counter()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(work / "ort.onnx")
    ort.InferenceSession(str(work / "ts.onnx"), opts, providers=["CPUExecutionProvider"])
    out["torchscript+ort-basic"] = (work / "ort.onnx", base + time.perf_counter() - t)
    t = time.perf_counter()
    _export(model, example, work / "dy.onnx", 17, True, "dynamo")
    out["dynamo"] = (work / "dy.onnx", time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="mobilenetv3-small,mobilenetv3-large")
    ap.add_argument("--layouts", default="seed,torchvision")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print(f"{'network':32} {'variant':24} {'export s':>8} {'opset':>5} {'BN':>3} {'HSwish':>6} "
          f"{'nodes':>5} {'ms b1 1t':>8}")
    for layout in args.layouts.split(","):
        for arch in args.archs.split(","):
            model = create_model(arch, layout, seed=0)
            with tempfile.TemporaryDirectory() as d:
                found = variants(model, Path(d))
                times = {k: [] for k in found}
                for _ in range(args.rounds):  # interleave: A B C D A B C D ...
                    for k, (p, _) in found.items():
                        times[k].append(latency_ms(p))
                for k, (p, secs) in found.items():
                    proto = onnx.load(str(p))
                    ops = Counter(n.op_type for n in proto.graph.node)
                    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
                    print(f"{layout + ' ' + arch:32} {k:24} {secs:8.2f} {opset:5} "
                          f"{ops['BatchNormalization']:3} {ops['HardSwish']:6} "
                          f"{sum(ops.values()):5} {statistics.median(times[k]):8.3f}")


if __name__ == "__main__":
    main()
