"""The ONNX Runtime backend's session: one engine call per run(), checks, threads, providers."""

from __future__ import annotations

import numpy as np
import pytest

import mnv3
from mnv3.errors import BackendUnavailable, ModelError
from mnv3.meta import PreprocessCfg
from tiny_onnx import SIZE

CFG = PreprocessCfg(resize=36, crop=SIZE)


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("ort")
    mnv3.build(tiny_model(dynamic=True, images=0).onnx, d / "m", quant_mode="force_float32", shape_mutable=True,
               batch_size=1, preprocess=CFG)
    return d / "m"


def test_run_equals_predict_and_threads_are_honoured(model_dir):
    x = np.random.default_rng(0).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    with mnv3.load(model_dir, threads=1) as s:
        assert s.session.get_session_options().intra_op_num_threads == 1
        assert s.session.get_providers() == ["CPUExecutionProvider"]
        np.testing.assert_array_equal(s.run(x), s.predict(x))


def _spinning(session) -> str:
    """The session's allow_spinning entry; "" when unset (ORT's default: spin)."""
    try:
        return session.session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning")
    except RuntimeError:  # ORT raises for an entry never set
        return ""


def test_spin_false_stops_idle_threads_spinning_and_infer_uses_it(model_dir, tmp_path,
                                                                   monkeypatch):
    """mnv3 infer decodes on other threads between engine calls: its sessions must not spin."""
    from mnv3 import backends, inference as infer_mod

    with mnv3.load(model_dir, threads=1, spin=False) as s:
        assert _spinning(s) == "0"
    with mnv3.load(model_dir, threads=1) as s:  # bench: ORT's default, best engine-only speed
        assert _spinning(s) in ("", "1")
    opened = []
    real_load = backends.load

    def spy(*a, **kw):
        s = real_load(*a, **kw)
        opened.append(_spinning(s))
        return s

    monkeypatch.setattr(backends, "load", spy)
    from mnv3.data.datasets import Sample, demo_dataset
    unlabeled = [Sample(s.path, None) for s in demo_dataset()[:2]]  # the tiny net has 10 classes
    infer_mod.infer(model_dir, unlabeled, tmp_path / "out", progress=False)
    assert opened == ["0"]


@pytest.mark.parametrize("bad, match", [
    (np.zeros((1, 3, SIZE, SIZE), np.float64), "float32"),
    (np.zeros((3, SIZE, SIZE), np.float32), "shape"),
    (np.zeros((1, 3, SIZE + 1, SIZE + 1), np.float32), "shape"),
    (np.zeros((0, 3, SIZE, SIZE), np.float32), "N >= 1"),
    ([[1.0]], "numpy"),
])
def test_bad_inputs_are_clear_errors(model_dir, bad, match):
    with mnv3.load(model_dir) as s, pytest.raises(ModelError, match=match):
        s.predict(bad)


def test_cuda_request_without_cuda_provider(model_dir):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        mnv3.load(model_dir, device="cuda")


def test_unloadable_compiled_file_is_a_model_error(model_dir, tmp_path):
    import shutil

    from mnv3.meta import read_meta, sha256_file, write_meta

    shutil.copytree(model_dir, tmp_path / "m")
    (tmp_path / "m" / "model.onnx").write_bytes(b"not onnx")
    meta = read_meta(tmp_path / "m")
    meta.compiled_sha256 = sha256_file(tmp_path / "m" / "model.onnx")  # hash matches, file bad
    write_meta(meta, tmp_path / "m")
    with pytest.raises(ModelError, match="cannot load"):
        mnv3.load(tmp_path / "m")
