"""The backend contract, for every registered backend and for a minimal one registered here
the way a new engine would be (one module, one ``register`` line): its capabilities are data,
it builds and runs the reference mode, the registry and the planner read it, and a model it
built is checked like any other."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import mnv3.backends as registry
from mnv3.backends.base import Capabilities
from mnv3.build_request import CALIB_METHODS, BuildRequest
from mnv3.errors import BackendUnavailable, ModelError, UsageError
from mnv3.meta import PreprocessCfg
from mnv3.quant_mode import QuantMode

PP = PreprocessCfg(resize=36, crop=32)
MINIMAL = "minimal"
NAMES = [*registry.list_backends(), MINIMAL]


@pytest.fixture(autouse=True, scope="module")
def minimal_registered():
    with pytest.MonkeyPatch.context() as mp:  # registered for this module only
        mp.setitem(registry._BACKENDS, MINIMAL, "")
        registry.register(MINIMAL, "minimal_backend:MinimalBackend")  # the one line
        yield


def _engine(name):
    try:
        return registry.get_backend(name)
    except BackendUnavailable as e:  # not installed here
        pytest.skip(f"{name} is not available here: {e}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small seeded MobileNetV3 as ONNX, images, its PyTorch logits, and the source that
    describes it (what a backend compiling the PyTorch network, torch, rebuilds it from)."""
    pytest.importorskip("torch")
    from mnv3 import create_model, export_onnx
    from tiny_onnx import torch_logits, write_images

    d = tmp_path_factory.mktemp("contract")
    net = create_model("mobilenetv3-small", "seed", width_mult=0.35, num_classes=10, seed=0)
    export_onnx(net, d / "tiny.onnx", dynamic_batch=True, image_size=PP.crop)
    write_images(d / "images", 6)
    source = {"arch": net.arch, "layout": net.layout, "width_mult": net.width_mult,
              "num_classes": net.num_classes, "random_seed": 0}
    return d / "tiny.onnx", d / "images", lambda x: torch_logits(net, x), source


@pytest.mark.parametrize("name", NAMES)
def test_capabilities_are_data(name):
    caps = registry.capabilities(name)  # readable without instantiating (or installing) it
    assert isinstance(caps, Capabilities)
    assert caps.modes and all(isinstance(m, QuantMode) for m in caps.modes)
    assert QuantMode.FLOAT32 in caps.modes  # every budget is measured against it
    assert set(caps.calib_methods) <= set(CALIB_METHODS)
    assert bool(caps.calib_methods) == any(m.int8 for m in caps.modes)
    assert caps.fallback in (None, "layers", "accuracy_control")
    assert caps.install_hint.startswith("pip install") and caps.distribution


@pytest.mark.parametrize("name", NAMES)
def test_the_request_accepts_exactly_the_declared_modes(name):
    caps = registry.capabilities(name)
    for mode in QuantMode:
        make = lambda: BuildRequest(quant_mode=mode, shape_mutable=False,  # noqa: E731
                                    batch_size=1, backend=name)
        if caps.builds(mode):
            assert make().quant_mode is mode
        else:
            with pytest.raises(UsageError, match=f"{mode}.*not {name}|no installed backend"):
                make()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mutable", [False, True])
def test_builds_and_runs_the_reference_mode(name, mutable, tiny, tmp_path):
    """fp32 matches PyTorch, a fixed batch splits and pads, bad input and a tampered file are
    ModelErrors (skips an engine that is not installed, with the reason)."""
    from mnv3 import build, load

    _engine(name)
    onnx_path, images, reference, source = tiny
    meta = build(onnx_path, tmp_path / "m", quant_mode="force_float32", shape_mutable=mutable,
                 batch_size=2, preprocess=PP, calib_dir=images, backend=name, source=source,
                 options={"progress": False})
    assert meta.backend == name and meta.quant_mode is QuantMode.FLOAT32
    assert meta.fidelity["top1_agreement"] == 1.0
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    with load(tmp_path / "m") as session:
        assert session.meta.default_batch == 2
        np.testing.assert_allclose(session.predict(x), reference(x), rtol=1e-4, atol=1e-4)
        if not mutable:  # one engine call is exactly the fixed batch
            with pytest.raises(ModelError, match="fixed batch of 2"):
                session.run(x)
        with pytest.raises(ModelError, match="float32"):
            session.predict(x.astype(np.float64))
    compiled = tmp_path / "m" / meta.compiled_file
    compiled.write_bytes(compiled.read_bytes() + b"\0")
    with pytest.raises(ModelError, match="sha256"):
        load(tmp_path / "m")


def test_the_planner_reads_the_capabilities(monkeypatch):
    from mnv3.pipeline import _plan

    plan = _plan(("force_float32", "qint8_mixed_float16"), (1,), False, 1, 1,
                 ("onnxruntime", MINIMAL))
    assert [(r.backend, r.quant_mode) for r in plan["models"]] == [
        ("onnxruntime", "force_float32"), ("onnxruntime", "qint8_mixed_float16"),
        (MINIMAL, "force_float32")]
    assert plan["skipped"] == [(MINIMAL, "qint8_mixed_float16")]
    with pytest.raises(UsageError, match="built only by .*onnxruntime.*not minimal"):
        _plan(("qint8_mixed_float16",), (1,), False, 1, 1, (MINIMAL,))


def test_an_unknown_backend_names_the_registered_ones():
    with pytest.raises(UsageError, match=f"onnxruntime.*{MINIMAL}"):
        registry.get_backend("tensorrt")


def test_a_missing_engine_is_an_install_hint(monkeypatch):
    cls = registry.backend_class(MINIMAL)
    monkeypatch.setattr(cls, "missing", classmethod(lambda c: "No module named 'minimal_rt'"))
    assert MINIMAL not in registry.list_backends(available_only=True)
    with pytest.raises(BackendUnavailable, match=r"not available .*minimal_rt.*pip install \"mnv3\""):
        registry.get_backend(MINIMAL)
    assert dataclasses.asdict(registry.capabilities(MINIMAL))  # still readable as data
