"""Helpers shared by the benchmark scripts: a model to measure, interleaved rounds, medians.

On these 2-vCPU machines 2-thread speed is bimodal for minutes at a time (see DESIGN.md), so
every script compares configurations by interleaving them (A B A B ...) in one process and
quoting the median of the rounds and the median of the per-round ratios.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path


def export_fp32(arch: str = "mobilenetv3-small", width_mult: float = 1.0,
                out_dir: str | Path | None = None, layout: str = "seed"):
    """(torch module, fp32 ONNX path with a dynamic batch) for a seeded random network.

    Speed does not depend on the weights' values, so random weights give real speed figures.
    An existing export in ``out_dir`` is reused.
    """
    from mnv3.export import export_onnx
    from mnv3.models import create_model

    model = create_model(arch, layout=layout, width_mult=width_mult, seed=0)
    out = Path(out_dir or tempfile.mkdtemp(prefix="mnv3-bench-")) / f"{arch}-{width_mult:g}.onnx"
    if not out.is_file():
        export_onnx(model, out, dynamic_batch=True)
    return model, out


def interleave(configs: dict, rounds: int, measure) -> dict[str, list]:
    """Run ``measure(name, cfg)`` for every config, round after round: A B C A B C ..."""
    results: dict[str, list] = {name: [] for name in configs}
    for r in range(rounds):
        for name, cfg in configs.items():
            results[name].append(measure(name, cfg))
            print(f"  round {r + 1}/{rounds} {name}: {_fmt(results[name][-1])}", file=sys.stderr)
    return results


def _fmt(v) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def median(values) -> float:
    return statistics.median(values)


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median of the per-round ratios a/b (rounds ran back to back, so they share conditions)."""
    return statistics.median(x / y for x, y in zip(a, b))


# Speed scripts measure each recipe as built: seeded random weights cannot meet an accuracy
# budget, and an int8 build must not be swapped for the float32 it is compared with.
SPEED_ONLY = {"allow_below_budget": True, "speed_check": False}


def build_model(onnx_path, quant_mode: str, batch: int, out_dir, mutable: bool = False,
                calib_dir=None, backend: str = "onnxruntime"):
    """A built mnv3 model directory (an existing one is reused: scripts can be rerun)."""
    from mnv3.builder import build
    from mnv3.meta import model_dir_name

    target = Path(out_dir) / model_dir_name(quant_mode, mutable, batch)
    if not (target / "meta.json").is_file():
        build(onnx_path, target, quant_mode=quant_mode, shape_mutable=mutable, batch_size=batch,
              calib_dir=calib_dir, backend=backend, options={"progress": False, **SPEED_ONLY})
    return target


def venv_tool(name: str) -> str:
    """This environment's console script (mnv3, benchmark_app, ovc), found without an
    activated venv; else the one on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.is_file() else name
