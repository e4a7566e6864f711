"""Would int8 pay on the torch backend? PT2E + X86InductorQuantizer vs the float32 package.

Issue 15 offers int8 on the torch backend only if it measures faster than the float32
AOTInductor package on the CPU at hand. torch 2.13 no longer ships PT2E quantization
(``torch.ao.quantization.quantize_pt2e`` is gone); it lives in torchao, mnv3's torch-int8
extra (the torch backend builds int8 with it now; this probe keeps the first measurement):

    pip install -e ".[torch-int8]"
    python benchmarks/torch_int8_probe.py --batch 8 --rounds 7

It compiles MobileNetV3-Small (seeded random weights, 224x224, fixed batch) twice with the
backend's settings (torch.export, AOTInductor, freezing): float32, and int8 (default
X86InductorQuantizer config, calibrated on random inputs: speed does not depend on the
ranges), then times both interleaved and prints images/s with the CPU's ISA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mnv3.backends.torch_aot import expose_layers, int8_layers, private_kernel_cache
from mnv3.models import create_model
from mnv3.sysinfo import cpu_model, isa_label


def compile_pt2(module, x, path: Path) -> float:
    t0 = time.perf_counter()
    with torch.no_grad(), private_kernel_cache():
        program = torch.export.export(module, (x,), strict=False)
        torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                 inductor_configs={"freezing": True})
    return time.perf_counter() - t0


def quantize(net, x):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    captured = torch.export.export(net, (x,), strict=False).module()
    prepared = prepare_pt2e(expose_layers(captured), quantizer)  # as the backend does
    with torch.no_grad():
        for _ in range(4):
            prepared(torch.randn_like(x))
    converted = convert_pt2e(prepared)
    print("int8 layers: %d of %d" % int8_layers(converted), file=sys.stderr)
    return converted


def ips(runner, x, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    with torch.no_grad():
        while time.perf_counter() - t0 < seconds:
            runner(x)
            n += 1
    return n * x.shape[0] / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--slice", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=None, help="default: torch's choice")
    ap.add_argument("--work", type=Path, default=None, help="keep the packages here (reused)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="mnv3-int8-probe-"))
    work.mkdir(parents=True, exist_ok=True)
    net = create_model("mobilenetv3-small", "seed", seed=0)
    x = torch.randn(args.batch, 3, 224, 224)
    secs = {}
    for name, make in (("fp32", lambda: net), ("int8", lambda: quantize(net, x))):
        path = work / f"{name}_{args.batch}.pt2"
        secs[name] = float("nan") if path.exists() else compile_pt2(make(), x, path)
    with private_kernel_cache():
        runners = {k: torch._inductor.aoti_load_package(str(work / f"{k}_{args.batch}.pt2"))
                   for k in secs}
    for r in runners.values():
        ips(r, x, 0.5)  # warm-up
    got: dict[str, list[float]] = {k: [] for k in runners}
    for i in range(args.rounds):
        for k in (list(runners) if i % 2 == 0 else list(reversed(runners))):
            got[k].append(ips(runners[k], x, args.slice))
    isa = isa_label()
    print(f"CPU: {cpu_model()} [{isa}], torch {torch.__version__}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads")
    for k, v in got.items():
        print(f"{k}: {statistics.median(v):.1f} images/s (rounds {min(v):.1f}-{max(v):.1f}), "
              f"compile {secs[k]:.0f} s (nan: reused) [{isa}]")
    ratio = statistics.median(a / b for a, b in zip(got["int8"], got["fp32"]))
    print(f"int8 / fp32: x{ratio:.2f} [{isa}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
