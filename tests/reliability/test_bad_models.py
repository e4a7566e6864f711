"""Damaged or mismatched model directories through ``mnv3 infer`` / ``mnv3 bench`` and the API.

A model directory is trusted only when meta.json is readable, of a format this mnv3 knows, and
the compiled file's sha256 matches it; otherwise exit 7 with "rebuild". A model for an engine
that is not installed is exit 8 with the pip command that installs it.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import mnv3
from .helpers import assert_user_error, build_argv
from mnv3.errors import ModelError


def _edit_meta(model, **changes):
    meta = json.loads((model / "meta.json").read_text())
    meta.update(changes)
    (model / "meta.json").write_text(json.dumps(meta))


def _drop_field(model, name):
    meta = json.loads((model / "meta.json").read_text())
    del meta[name]
    (model / "meta.json").write_text(json.dumps(meta))


REBUILD = r"rebuild"
# case -> (damage(model_dir), regex what, regex do)
CASES = {
    "missing_meta_json": (lambda m: (m / "meta.json").unlink(),
                          r"has no meta\.json, so it is not a built mnv3 model", REBUILD),
    "meta_json_newer_format": (lambda m: _edit_meta(m, format_version=99),
                               r"format_version 99 but this mnv3 reads up to 1",
                               r"upgrade mnv3 .*or rebuild"),
    "meta_json_not_json": (lambda m: (m / "meta.json").write_text("{format_version: 1"),
                           r"meta\.json is not valid JSON", REBUILD),
    "meta_json_missing_field": (lambda m: _drop_field(m, "compiled_file"),
                                r"meta\.json is missing fields", REBUILD),
    "compiled_sha256_mismatch": (lambda m: (m / "model.onnx").write_bytes(
        (m / "model.onnx").read_bytes() + b"\0"),
        r"model\.onnx does not match the sha256 recorded in meta\.json", REBUILD),
    "compiled_file_missing": (lambda m: (m / "model.onnx").unlink(),
                              r"lacks its compiled file model\.onnx", REBUILD),
    "compiled_file_replaced_by_garbage": (lambda m: (m / "model.onnx").write_bytes(b"not onnx"),
                                          r"does not match the sha256", REBUILD),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["infer", "bench"])
def test_damaged_model_dir(cli, model_copy, tmp_path, case, command):
    damage, what, do = CASES[case]
    damage(model_copy)
    out = tmp_path / "out"
    argv = (["infer", "--model", model_copy, "--output-dir", out, "--no-progress"]
            if command == "infer" else ["bench", "--model", model_copy, "--iterations", "2"])
    assert_user_error(cli(*argv), 7, what, do)
    assert not out.exists()


def test_model_dir_does_not_exist(cli, tmp_path):
    res = cli("infer", "--model", tmp_path / "nope", "--output-dir", tmp_path / "out")
    assert_user_error(res, 7, r"model directory \S+nope does not exist", r"build one with 'mnv3 build'")
    assert not (tmp_path / "out").exists()


def test_model_file_instead_of_its_directory(cli, tiny, tmp_path):
    """Issue 13: 'does not exist' was wrong for a file that exists; name the folder to pass."""
    res = cli("infer", "--model", tiny["model"] / "model.onnx", "--output-dir", tmp_path / "o")
    assert_user_error(res, 7, r"model\.onnx is a file inside a model directory",
                      r"pass \S+model \(the folder holding meta\.json\)")
    res = cli("bench", "--model", tiny["onnx"], "--iterations", "2")
    assert_user_error(res, 7, r"tiny\.onnx is a file, not a model directory",
                      r"mnv3 build --onnx \S+tiny\.onnx")
    assert not (tmp_path / "o").exists()


def test_checkpoint_given_to_build_onnx(cli, tiny, tmp_path):
    """Issue 13: a .pth passed to --onnx is told to use --weights, not to 'export it again'."""
    import torch

    ck = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(2)}, ck)
    argv = build_argv(tiny, tmp_path / "m")
    argv[argv.index("--onnx")] = "--onnx"
    argv[argv.index(tiny["onnx"])] = ck
    res = cli(*argv)
    assert_user_error(res, 6, r"w\.pth is not an ONNX model: it looks like a PyTorch checkpoint",
                      r"pass it with --weights \S+w\.pth instead of --onnx")
    argv[argv.index(ck)] = tmp_path / "lite0.onnx"
    res = cli(*argv)
    assert_user_error(res, 2, r"ONNX model \S+lite0\.onnx does not exist",
                      r"check the path.*README\.md shows how to get lite0\.onnx")
    assert not (tmp_path / "m").exists()


def test_fixed_batch_model_asked_for_another_batch(cli, tiny):
    """bench measures exactly one engine call per query, so it cannot split: exit 7."""
    res = cli("bench", "--model", tiny["model"], "--batch", "3", "--iterations", "2")
    assert_user_error(res, 7, r"fixed batch of 2 but got 3 images", r"use batch 2|--shape-mutable true")


def test_fixed_batch_api_run_vs_predict(tiny):
    """Session.run refuses another batch; Session.predict splits and pads (documented)."""
    x = np.zeros((3, 3, 32, 32), np.float32)
    with mnv3.load(tiny["model"], threads=1) as s:
        with pytest.raises(ModelError, match=r"fixed batch of 2 .*call predict\(\)"):
            s.run(x)
        assert s.predict(x).shape == (3, 10)


@pytest.mark.parametrize("x, what", [
    (np.zeros((2, 3, 32, 32), np.float64), r"expected float32 input, got float64; convert"),
    (np.zeros((2, 3, 64, 64), np.float32), r"expected input shape \[N, 3, 32, 32\].*got \[2, 3, 64, 64\]"),
    (np.zeros((0, 3, 32, 32), np.float32), r"with N >= 1, got \[0, 3, 32, 32\]"),
    ([[1.0]], r"expected a numpy float32 array"),
])
def test_wrong_input_to_session(tiny, x, what):
    with mnv3.load(tiny["model"], threads=1) as s:
        with pytest.raises(ModelError, match=what):
            s.predict(x)


def test_backend_not_installed(cli, model_copy, tmp_path, monkeypatch):
    """A model built for OpenVINO on a machine without it: exit 8 and the pip command."""
    _edit_meta(model_copy, backend="openvino")  # the compiled file's sha256 is unchanged
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    monkeypatch.delitem(sys.modules, "mnv3.backends.openvino", raising=False)
    res = cli("infer", "--model", model_copy, "--output-dir", tmp_path / "out", "--no-progress")
    assert_user_error(res, 8, r"backend 'openvino' is not available", r'pip install "mnv3\[openvino\]"')
    assert not (tmp_path / "out").exists()


def test_unknown_backend_in_meta(cli, model_copy, tmp_path):
    _edit_meta(model_copy, backend="tensorrt")
    res = cli("infer", "--model", model_copy, "--output-dir", tmp_path / "out", "--no-progress")
    assert_user_error(res, 7, r"built for backend 'tensorrt'", r"upgrade mnv3 or rebuild")


def test_meta_compiled_file_outside_model_dir_is_refused(tmp_path):
    """A meta.json pointing its compiled file outside the directory is not followed."""
    import json

    import pytest

    from mnv3.backends import load
    from mnv3.errors import ModelError
    from mnv3.meta import ModelMeta, write_meta

    outside = tmp_path / "x.onnx"
    outside.write_bytes(b"not a model")
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    from mnv3.meta import sha256_file

    meta = ModelMeta(backend="onnxruntime", backend_version="x", quant_mode="force_float32",
                     shape_mutable=True, batch_size=1, compiled_file="../x.onnx",
                     compiled_sha256=sha256_file(outside), input_name="input",
                     output_name="logits", input_shape=["batch", 3, 8, 8],
                     output_shape=["batch", 10], num_classes=10)
    write_meta(meta, model_dir)
    with pytest.raises(ModelError, match="not a plain file name"):
        load(model_dir)
    data = json.loads((model_dir / "meta.json").read_text())
    data["compiled_file"], data["backend"] = "x.onnx", "tensorrt"
    (model_dir / "meta.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="backend 'tensorrt'"):
        load(model_dir)
