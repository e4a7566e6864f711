"""mnv3.build: every mode x mutable builds and loads, fixed batches, atomicity, clear errors."""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import numpy as np
import pytest

import mnv3
from mnv3 import builder as build_mod
from mnv3.backends.onnxruntime import OnnxRuntimeBackend
from mnv3.errors import BuildError, ModelError, UsageError
from mnv3.meta import PreprocessCfg, read_meta
from mnv3.quant_mode import SEED_MODES
from mnv3.data.preprocess import preprocess_batch
from tiny_onnx import SIZE

CFG = PreprocessCfg(resize=36, crop=SIZE)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return tiny_model(dynamic=False, images=12)  # fixed batch 1: re-batching is tested


def _build(tiny, out, mode="force_float32", mutable=False, batch=4, options=None, **kw):
    kw.setdefault("calib_dir", tiny.images)
    kw.setdefault("calib_num", 6)
    # these tests check what an int8 build contains: keep int8 even where the tiny net's int8
    # is slower than float32 (test_gate.py tests that fallback)
    options = {"progress": False, "speed_check": False, **(options or {})}
    return mnv3.build(tiny.onnx, out, quant_mode=mode, shape_mutable=mutable,
                      batch_size=batch, preprocess=CFG, options=options, **kw)


# tolerance of each mode against the float PyTorch model (tiny net, random weights)
TOL = {"force_float32": 1e-4, "force_float16": 2e-2, "qint8_mixed_float32": 0.2,
       "qint8_mixed_float16": 0.2}


@pytest.mark.parametrize("mode", SEED_MODES)
@pytest.mark.parametrize("mutable", [True, False])
def test_every_mode_builds_loads_and_predicts(tiny, tmp_path, mode, mutable):
    meta = _build(tiny, tmp_path / "m", mode, mutable, batch=4)
    assert meta.quant_mode == mode and meta.shape_mutable is mutable
    assert read_meta(tmp_path / "m") == meta  # meta.json round trip
    assert meta.input_shape == ["batch" if mutable else 4, 3, SIZE, SIZE]
    assert meta.fidelity["count"] > 0 and meta.op_precisions
    if mode.startswith("qint8"):
        assert meta.op_precisions.get("QLinearConv") == "int8"  # the convs really run int8
        assert meta.calibration["count"] == 6
    x = preprocess_batch(tiny.files[:5], CFG)
    with mnv3.load(tmp_path / "m", threads=1) as s:
        y = s.predict(x)
    ref = tiny.logits(x)
    assert y.shape == ref.shape and np.abs(y - ref).max() < TOL[mode]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.tmp")]


@pytest.mark.parametrize("n", [1, 3, 11])
def test_fixed_batch_predicts_any_count(tiny, tmp_path_factory, n):
    out = tmp_path_factory.getbasetemp() / "fixed4"
    if not out.exists():
        _build(tiny, out, batch=4)
    x = np.random.default_rng(n).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)
    with mnv3.load(out) as s:
        np.testing.assert_allclose(s.predict(x), tiny.logits(x), atol=1e-4)
        with pytest.raises(ModelError, match="fixed batch of 4"):
            s.run(x)  # run() is exactly one engine call: it never splits or pads


def test_forced_spelling_and_default_name(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    meta = mnv3.build(tiny.onnx, quant_mode="forced_float32", shape_mutable=False,
                      batch_size=2, preprocess=CFG)
    assert meta.quant_mode == "force_float32"
    assert (tmp_path / "data/models/force_float32_false_2/meta.json").is_file()


def test_failure_mid_build_leaves_nothing(tiny, tmp_path, monkeypatch):
    def boom(self, onnx_path, out_dir, cfg):
        (out_dir / "model.onnx").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(OnnxRuntimeBackend, "build_compiled", boom)
    with pytest.raises(KeyboardInterrupt):
        _build(tiny, tmp_path / "m")
    assert [p.name for p in tmp_path.iterdir()] == []  # no lock file either (issue 13)


def test_failed_rebuild_keeps_old_model_and_rebuild_replaces(tiny, tmp_path, monkeypatch):
    old = _build(tiny, tmp_path / "m")
    real = OnnxRuntimeBackend.build_compiled
    monkeypatch.setattr(OnnxRuntimeBackend, "build_compiled",
                        lambda *a: (_ for _ in ()).throw(BuildError("injected")))
    with pytest.raises(BuildError, match="injected"):
        _build(tiny, tmp_path / "m", mode="force_float16", force=True)  # another mode: force
    assert read_meta(tmp_path / "m") == old
    mnv3.load(tmp_path / "m").predict(np.zeros((1, 3, SIZE, SIZE), np.float32))
    monkeypatch.setattr(OnnxRuntimeBackend, "build_compiled", real)
    new = _build(tiny, tmp_path / "m", mode="force_float16", force=True)
    assert read_meta(tmp_path / "m") == new and new.quant_mode == "force_float16"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["meta.json", "model.onnx"]


def test_concurrent_build_to_same_path_refuses(tiny, tmp_path):
    from mnv3.atomic import build_lock

    (tmp_path / "m").parent.mkdir(exist_ok=True)
    with build_lock(tmp_path / "m"):
        err = []
        t = threading.Thread(target=lambda: err.append(_catch(lambda: _build(tiny, tmp_path / "m"))))
        t.start()
        t.join()
    assert isinstance(err[0], BuildError) and "another build" in str(err[0])
    assert not (tmp_path / "m").exists()


def _catch(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - returned for the assertion
        return e


def test_corrupted_compiled_file_is_a_clear_error(tiny, tmp_path):
    _build(tiny, tmp_path / "m")
    with open(tmp_path / "m" / "model.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ModelError, match="sha256"):
        mnv3.load(tmp_path / "m")


def test_unbatchable_source_is_a_clear_error(tiny_model, tmp_path):
    baked = tiny_model(dynamic=False, bake_batch=True, images=0).onnx
    with pytest.raises(BuildError, match="export batch"):
        mnv3.build(baked, tmp_path / "m", quant_mode="force_float32",
                   shape_mutable=True, batch_size=1, preprocess=CFG)
    assert not (tmp_path / "m").exists()
    # its own batch still works
    mnv3.build(baked, tmp_path / "m1", quant_mode="force_float32",
               shape_mutable=False, batch_size=1, preprocess=CFG)


def test_a_source_that_bakes_its_batch_builds_int8_at_that_batch(tiny, tiny_model, tmp_path):
    """A fixed-batch export (torch bakes batch 1 into a Reshape) crashed the int8 build with a
    traceback: calibration fed it batches of 8. It now calibrates in batches of its own."""
    baked = tiny_model(dynamic=False, bake_batch=True, images=0).onnx
    meta = mnv3.build(baked, tmp_path / "m", quant_mode="qint8_mixed_float32",
                      shape_mutable=False, batch_size=1, preprocess=CFG,
                      calib_dir=tiny.images, calib_num=8,
                      options={"progress": False, "speed_check": False})
    assert meta.extra["quantization"]["calibration_batch"] == 1
    assert any(p == "int8" for p in meta.op_precisions.values())
    x = np.zeros((3, 3, CFG.crop, CFG.crop), np.float32)
    with mnv3.load(tmp_path / "m") as session:
        assert session.predict(x).shape[0] == 3


def test_bad_arguments_are_usage_errors(tiny, tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="crops 224"):
        mnv3.build(tiny.onnx, tmp_path / "m", quant_mode="force_float32",
                   shape_mutable=True, batch_size=1)
    with pytest.raises(UsageError, match="batch size"):
        _build(tiny, tmp_path / "m", batch=0)
    with pytest.raises(UsageError, match="quant mode"):
        _build(tiny, tmp_path / "m", mode="int4")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a model"):
        _build(tiny, tmp_path / "mine")
    # max_drop is the budget of a reduced precision: meaningless for the float32 reference
    for backend, mode, drop, match in [
            ("onnxruntime", "force_float32", 0.3, "reference"),
            ("openvino", "force_float32", 0.3, "reference"),
            ("openvino", "qint8_mixed_float32", -1, ">= 0"),
            ("onnxruntime", "qint8_mixed_float32", "1", ">= 0")]:
        with pytest.raises(UsageError, match=match):
            mnv3.build(tiny.onnx, tmp_path / "m", quant_mode=mode, shape_mutable=True,
                       batch_size=1, preprocess=CFG, backend=backend,
                       options={"max_drop": drop})
    monkeypatch.setattr(build_mod, "_demo_dir", lambda: None)
    with pytest.raises(UsageError, match="--calib-dir"):
        _build(tiny, tmp_path / "m", mode="qint8_mixed_float32", calib_dir=None)
    assert not (tmp_path / "m").exists()


def test_calib_num_larger_than_folder_uses_all_and_says_so(tiny, tmp_path):
    meta = _build(tiny, tmp_path / "m", mode="qint8_mixed_float32", calib_num=500)
    assert meta.calibration["count"] == len(tiny.files)
    assert any("--calib-num 500" in n for n in meta.notes)
    assert "also used for calibration" in meta.fidelity["inputs"]


def test_cli_build(tiny, tmp_path, capsys):
    from mnv3.cli.main import main

    rc = main(["build", "--onnx", str(tiny.onnx), "--quant-mode", "force_float32",
               "--shape-mutable", "true", "--batch-size", "2", "--crop", str(SIZE),
               "--calib-dir", str(tiny.images), "--output", str(tmp_path / "m"),
               "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "top-1 agreement 100.00%" in out
    assert (tmp_path / "r.json").is_file()
    assert read_meta(tmp_path / "m").preprocess.resize == 37  # round(32 / 0.875)
    rc = main(["build", "--onnx", str(tiny.onnx), "--quant-mode", "int3",
               "--shape-mutable", "true", "--batch-size", "2"])
    assert rc == 2
    assert os.path.exists(tmp_path / "m")


def test_bad_calibration_image_is_skipped_or_with_strict_an_error(tiny, tmp_path):
    """Like infer (issue 13): skipped and counted; strict=True: a DataError, nothing left."""
    import shutil

    from mnv3.errors import DataError, Mnv3Warning

    folder = tmp_path / "calib"
    shutil.copytree(tiny.images, folder)
    (folder / "img_000.png").write_bytes(b"not a png")  # sorted first: always in the subset
    with pytest.raises(DataError, match="img_000.png"):
        _build(tiny, tmp_path / "m", mode="qint8_mixed_float32", calib_dir=folder, calib_num=12,
               strict=True)
    assert list(tmp_path.iterdir()) == [folder]  # no model, no temp folder, no lock
    with pytest.warns(Mnv3Warning, match=r"skipped 1 calibration image.*img_000\.png"):
        meta = _build(tiny, tmp_path / "m", mode="qint8_mixed_float32", calib_dir=folder,
                      calib_num=12)
    n = len(list(folder.iterdir()))
    assert meta.calibration["count"] == min(12, n) - 1
    assert [s.split(":")[0] for s in meta.calibration["skipped"]] == ["img_000.png"]


def test_lock_file_is_removed_and_a_late_opener_takes_the_new_one(tmp_path):
    """Issue 13: no .NAME.lock stays beside a model. A builder that opened the old lock file
    just before its holder removed it must not count as holding the lock."""
    import fcntl

    from mnv3.atomic import build_lock

    target = tmp_path / "m"
    lock = tmp_path / ".m.lock"
    with build_lock(target):
        assert lock.is_file()
        late = open(lock, "a+")  # a second builder, between its open() and its flock()
    assert not lock.exists()
    fcntl.flock(late, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it gets the lock of a removed file...
    try:
        with build_lock(target):  # ...yet a third builder is not shut out by it, and
            assert lock.is_file()  # the lock it holds is the file at the path
            assert os.stat(lock).st_ino != os.fstat(late.fileno()).st_ino
    finally:
        late.close()
    assert list(tmp_path.iterdir()) == []


def test_lock_taken_on_a_file_just_removed_is_retaken_on_the_new_one(tmp_path):
    """The race the removal opens: our flock lands on a file its holder removed meanwhile."""
    import fcntl
    import types

    from mnv3.atomic import _lock

    lock = tmp_path / ".m.lock"
    calls = []

    def flock(f, op):  # the holder removes the file right as we lock it, once
        calls.append(op)
        if len(calls) == 1:
            os.unlink(lock)
        fcntl.flock(f, op)

    fake = types.SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB)
    f = _lock(fake, tmp_path / "m", lock)
    try:
        assert len(calls) == 2 and os.stat(lock).st_ino == os.fstat(f.fileno()).st_ino
    finally:
        f.close()


def test_image_size_alone_sets_crop_and_resize_by_the_network_ratio(tiny, tmp_path, capsys):
    """Issue 13: 'build --image-size 160' alone failed ('pass --crop with the same value')."""
    import torch

    from mnv3.cli.main import main
    from mnv3.models import create_model

    ck = tmp_path / "w.pth"
    torch.save(create_model("mobilenetv3-small", width_mult=0.35, seed=0).state_dict(), ck)
    common = ["--quant-mode", "force_float32", "--shape-mutable", "false", "--batch-size", "1",
              "--calib-dir", str(tiny.images), "--no-progress"]
    assert main(["build", "--weights", str(ck), "--image-size", "64", *common,
                 "--output", str(tmp_path / "w")]) == 0, capsys.readouterr().err
    meta = read_meta(tmp_path / "w")
    assert (meta.preprocess.crop, meta.preprocess.resize) == (64, 73)  # 64 * 256 / 224
    assert meta.input_shape == [1, 3, 64, 64]
    assert main(["build", "--onnx", str(tiny.onnx), "--image-size", str(SIZE), *common,
                 "--output", str(tmp_path / "o")]) == 0, capsys.readouterr().err
    pre = read_meta(tmp_path / "o").preprocess
    assert (pre.crop, pre.resize) == (SIZE, 37)
    capsys.readouterr()
    assert main(["build", "--onnx", str(tiny.onnx), "--image-size", str(SIZE), "--crop", "40",
                 *common, "--output", str(tmp_path / "x")]) == 2
    assert "--image-size 32 and --crop 40 disagree" in capsys.readouterr().err


# ------------------------------------------------ issue 13: one naming rule, --force
def test_default_path_is_runs_rule_and_other_settings_need_force(tiny, tmp_path, monkeypatch,
                                                                  capsys):
    """build and run overwrote each other's models at data/models/<name>; now a non-default
    backend goes to data/models/<backend>/<name> for both, and a model built with other
    settings is replaced only with force (the CLI then says what it replaced)."""
    from mnv3.builder import default_output
    from mnv3.cli.main import main
    from mnv3.pipeline import _subdir

    monkeypatch.chdir(tmp_path)
    name = "force_float32_false_4"
    assert default_output("onnxruntime", name) == build_mod.DEFAULT_MODELS_DIR / name
    assert default_output("openvino", name) == build_mod.DEFAULT_MODELS_DIR / "openvino" / name
    assert _subdir("openvino", name) == "openvino/" + name  # run: the same rule

    first = _build(tiny, None)
    where = tmp_path / "data" / "models" / name
    assert read_meta(where) == first
    again = _build(tiny, None)  # the same settings: a rebuild replaces it, nothing to ask
    assert read_meta(where) == again
    other = PreprocessCfg(resize=36, crop=SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    with pytest.raises(UsageError, match=r"holds a model built with other settings \(preprocess "
                                         r"resize 36 .* -> .*mean \(0\.5, 0\.5, 0\.5\).*\); "
                                         r"pass --force"):
        mnv3.build(tiny.onnx, None, quant_mode="force_float32", shape_mutable=False,
                   batch_size=4, preprocess=other, calib_dir=tiny.images,
                   options={"progress": False})
    assert read_meta(where) == again  # untouched
    capsys.readouterr()
    argv = ["build", "--onnx", str(tiny.onnx), "--quant-mode", "force_float32",
            "--shape-mutable", "false", "--batch-size", "4", "--resize", "36", "--crop",
            str(SIZE), "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--calib-dir",
            str(tiny.images), "--no-progress"]
    assert main(argv) == 2 and "pass --force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    out = capsys.readouterr().out
    assert f"built {Path('data/models') / name}" in out
    assert "replaced the model built there with other settings: preprocess resize 36" in out
    assert read_meta(where).preprocess.mean == (0.5, 0.5, 0.5)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                    reason="openvino is not installed (pip install -e '.[openvino]')")
def test_openvino_build_to_the_default_path_leaves_the_onnxruntime_model(tiny, tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    ort_meta = _build(tiny, None)
    ov_meta = _build(tiny, None, backend="openvino")
    models = tmp_path / "data" / "models"
    assert read_meta(models / "force_float32_false_4") == ort_meta
    assert read_meta(models / "openvino" / "force_float32_false_4") == ov_meta
