"""The benchmark scripts the README quotes must at least start: a refactor that moves a name
they import broke benchmarks/fidelity_lite0.py unnoticed once. Each is imported (not run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_script_imports(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)  # a script's work is under `if __name__ == "__main__"`


def _int8_floor(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("_bench_int8_floor",
                                                  BENCHMARKS / "int8_floor_lite0.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_int8_floor_activation_ranges_rewrite_the_quantizers(monkeypatch):
    """The README's per-channel / oracle range rows rest on this rewrite: each channel of an
    activation must be rounded on its own range's grid, and per tensor on the widest."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from mnv3.onnx_source import cpu_session

    floor = _int8_floor(monkeypatch)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.uint8), "z")]
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("QuantizeLinear", ["a", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
    qdq = helper.make_model(helper.make_graph(nodes, "g", [x_info], [y_info], inits),
                            opset_imports=[helper.make_opsetid("", 17)])
    assert list(floor.activation_quantizers(qdq)) == ["a"]
    rng = np.random.default_rng(0)
    x = np.stack([rng.uniform(0, 1, (4, 4)), rng.uniform(0, 100, (4, 4))])[None].astype(np.float32)
    ranges = {"a": (np.zeros(2, np.float32), np.array([1.0, 100.0], np.float32))}
    for per_channel, steps in ((True, (1 / 255, 100 / 255)), (False, (100 / 255, 100 / 255))):
        model = floor.with_activation_ranges(qdq, ranges, per_channel)
        onnx.checker.check_model(model)
        y = cpu_session(model, optimize=False).run(None, {"x": x})[0]
        for c, step in enumerate(steps):
            err = np.abs(y[0, c] - x[0, c]).max()
            assert err <= step / 2 + 1e-6
        if not per_channel:  # channel 0 on the wide grid: most of it rounds to 0 or one step
            assert np.abs(y[0, 0] - x[0, 0]).max() > 1 / 255
