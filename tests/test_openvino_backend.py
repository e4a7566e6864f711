"""OpenVINO backend: every mode builds, loads and predicts like fp32; cache; refusals; corruption.

Runs when openvino (and nncf) are installed (CI installs ``.[dev,openvino]``) and skips with the
reason otherwise, except the install-hint test, which simulates the missing package.
The shared tiny MobileNet-like net (conftest.py's tiny_model) on 32x32 images keeps it fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import threading

import numpy as np
import pytest

from mnv3.backends import get_backend, load
from mnv3.builder import build
from mnv3.errors import BackendUnavailable, ModelError, UsageError
from mnv3.meta import PreprocessCfg
from mnv3.quant_mode import QuantMode

PP = PreprocessCfg(resize=36, crop=32)
# over ~10 s (pytest --durations on 2 vCPUs): force_float32 is the module's first OpenVINO build
SLOW_MODES = ("force_float32", "qint8_mixed_float32")
MODES = ("force_float32", "force_float16", "force_bfloat16", "qint8_mixed_float32",
         "qint8_mixed_float16")


def test_missing_openvino_gives_install_hint(monkeypatch):
    """Without the package, --backend openvino says how to install it (simulated ImportError)."""
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes 'import openvino' raise
    monkeypatch.delitem(sys.modules, "mnv3.backends.openvino", raising=False)
    with pytest.raises(BackendUnavailable, match=r'pip install "mnv3\[openvino\]"'):
        get_backend("openvino")


HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(
    not HAVE_OPENVINO, reason="openvino is not installed (pip install -e '.[openvino]')")
ovb = importlib.import_module("mnv3.backends.openvino") if HAVE_OPENVINO else None


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """tiny.onnx with a dynamic batch, 8 calibration/held-out PNGs, the fp32 reference."""
    return tiny_model(dynamic=True, export_batch=2, images=8)


def _build(tiny, tmp_path, mode, mutable=False, batch=2, **options):
    out = tmp_path / f"{mode}_{mutable}_{batch}"
    # these tests check what each build contains: keep int8 where the tiny net's int8 is
    # slower than float32 (tests/test_gate.py tests that fallback)
    build(tiny.onnx, out, quant_mode=mode, shape_mutable=mutable, batch_size=batch,
          preprocess=PP, calib_dir=tiny.images, calib_num=6, backend="openvino",
          options={"progress": False, "speed_check": False, **options})
    return out


def _cosine(a, b):
    return float(np.min((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


@needs_openvino
@pytest.mark.parametrize("mode", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW_MODES
                                  else m for m in MODES])
def test_every_mode_builds_loads_and_predicts_like_fp32(tiny, tmp_path, mode):
    if mode == "force_bfloat16" and "BF16" not in ovb.cpu_capabilities():
        pytest.skip("this CPU has no bf16 (the refusal is tested below)")
    model = _build(tiny, tmp_path, mode)
    meta = json.loads((model / "meta.json").read_text())
    assert meta["backend"] == "openvino" and meta["compiled_file"] == "model.xml"
    assert meta["extra"]["bin_sha256"] and meta["op_precisions"]
    x = np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32)
    ref = tiny.logits(x)
    with load(model) as session:
        for n in (1, 3, 5):  # fixed batch 2: split and pad by the base Session
            y = session.predict(x[:n])
            assert y.shape == (n, 10) and y.dtype == np.float32
            np.testing.assert_allclose(y, session.predict(x)[:n], rtol=0, atol=1e-6)
        y = session.predict(x)
    if mode == "force_float32":
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    else:  # 16-bit floats or int8: close in direction, same top-1 on these inputs
        assert _cosine(y, ref) > (0.999 if mode.startswith("force") else 0.99)
        assert (y.argmax(1) == ref.argmax(1)).all()
    if mode.startswith("qint8"):
        assert meta["op_precisions"]["Convolution"].startswith("int8")
        assert meta["extra"]["quantization"]["calibration_images"] == 6
        # the classifier's Linear stays float by default (DEFAULTS["ignored_types"])
        assert meta["extra"]["quantization"]["float_ends"] == []
        assert len(meta["extra"]["float_layers"]) == 1
        assert meta["op_precisions"]["FullyConnected"] in ("f32", "bf16", "f16")


@needs_openvino
def test_mutable_batch_model_takes_any_batch(tiny, tmp_path):
    model = _build(tiny, tmp_path, "force_float32", mutable=True, batch=1)
    x = np.random.default_rng(2).standard_normal((7, 3, 32, 32)).astype(np.float32)
    with load(model) as session:
        assert session.fixed_batch is None
        np.testing.assert_allclose(session.run(x), tiny.logits(x), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(session.run(x[:1]), tiny.logits(x[:1]), rtol=1e-4, atol=1e-4)


@needs_openvino
def test_one_array_refilled_in_place_gives_each_fill_its_own_result(tiny, tmp_path):
    """run() binds an array to the request once (bench, camera loops refill one buffer): what
    the caller writes into it before the next call is what that call computes."""
    model = _build(tiny, tmp_path, "force_float32")
    rng = np.random.default_rng(5)
    fills = [rng.standard_normal((2, 3, 32, 32)).astype(np.float32) for _ in range(3)]
    buffer = np.empty_like(fills[0])
    with load(model) as session:
        for fill in fills + fills[:1]:
            buffer[...] = fill
            np.testing.assert_allclose(session.run(buffer), tiny.logits(fill), rtol=1e-4, atol=1e-4)
            other = fill[::-1].copy()  # a different array between two uses of the buffer
            np.testing.assert_allclose(session.run(other), tiny.logits(other), rtol=1e-4, atol=1e-4)


@needs_openvino
@pytest.mark.slow
def test_second_load_comes_from_the_compiled_model_cache(tiny, tmp_path):
    model = _build(tiny, tmp_path, "force_float32")
    assert not (model / ".ov_cache").exists()  # the build's fidelity run leaves no orphan blobs
    assert not load(model).loaded_from_cache and load(model).loaded_from_cache  # default cache
    cache = tmp_path / "cache"
    first = load(model, cache_dir=str(cache))
    assert not first.loaded_from_cache and any(cache.iterdir())
    second = load(model, cache_dir=str(cache))
    assert second.loaded_from_cache
    x = np.zeros((2, 3, 32, 32), np.float32)
    np.testing.assert_array_equal(first.run(x), second.run(x))
    assert not load(model, cache_dir="").loaded_from_cache  # "" disables the cache


@needs_openvino
def test_bf16_is_refused_on_a_cpu_without_bf16(tiny, tmp_path, monkeypatch):
    no_bf16 = frozenset({"FP32", "INT8", "BIN"})
    if "BF16" in ovb.cpu_capabilities():
        built = _build(tiny, tmp_path, "force_bfloat16")  # built here, loaded "elsewhere"
    monkeypatch.setattr(ovb, "cpu_capabilities", lambda: no_bf16)
    with pytest.raises(BackendUnavailable, match="bfloat16"):
        _build(tiny, tmp_path / "refused", "force_bfloat16")
    left = [p.name for p in (tmp_path / "refused").iterdir()]
    assert left == []  # nothing half-built left behind
    if "built" in locals():
        with pytest.raises(BackendUnavailable, match="bfloat16"):
            load(built)
        monkeypatch.undo()
        mixed = _build(tiny, tmp_path, "qint8_mixed_float16")  # bf16 for its float ops here
        monkeypatch.setattr(ovb, "cpu_capabilities", lambda: no_bf16)
        with load(mixed) as session:  # elsewhere they fall back to f32 instead of failing
            assert "float32" in session.config()["INFERENCE_PRECISION_HINT"]
    # fp16 modes on a CPU without fp16 arithmetic: f32 (float16) or bf16 (int8 + 16-bit float)
    assert ovb.inference_precision(QuantMode("force_float16"), no_bf16) == "f32"
    assert ovb.inference_precision(QuantMode("qint8_mixed_float16"), frozenset({"BF16"})) == "bf16"
    assert ovb.inference_precision(QuantMode("force_float16"), frozenset({"FP16", "BF16"})) == "f16"
    assert ovb.inference_precision(QuantMode("force_float32"), frozenset({"FP16", "BF16"})) == "f32"


def test_bf16_is_an_openvino_only_mode(tiny, tmp_path):
    with pytest.raises(UsageError, match="openvino"):
        build(tiny.onnx, tmp_path / "m", quant_mode="force_bfloat16", shape_mutable=False,
              batch_size=1, preprocess=PP, backend="onnxruntime")


@needs_openvino
def test_corrupted_weights_file_is_a_clear_error(tiny, tmp_path):
    model = _build(tiny, tmp_path, "force_float32")
    data = bytearray((model / "model.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (model / "model.bin").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"model\.bin.*sha256.*rebuild"):
        load(model)
    (model / "model.bin").unlink()
    with pytest.raises(ModelError, match=r"lacks its weights file model\.bin"):
        load(model)


@needs_openvino
def test_run_is_safe_from_several_threads(tiny, tmp_path):
    """mnv3 bench --streams S calls one session from S threads: each gets its own request."""
    model = _build(tiny, tmp_path, "force_float32")
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((2, 3, 32, 32)).astype(np.float32) for _ in range(4)]
    with load(model, threads=1, streams=2) as session:
        assert session.config()["NUM_STREAMS"] == "2"
        expected = [session.run(x) for x in inputs]
        results: dict[int, list] = {i: [] for i in range(4)}

        def worker(i):
            for _ in range(25):
                results[i].append(session.run(inputs[i]))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    for i in range(4):
        for y in results[i]:
            np.testing.assert_array_equal(y, expected[i])


@needs_openvino
@pytest.mark.slow
def test_accuracy_control_records_its_metric_and_float_layers(tiny, tmp_path):
    model = _build(tiny, tmp_path, "qint8_mixed_float32", max_drop=0.0)
    extra = json.loads((model / "meta.json").read_text())["extra"]
    control = extra["quantization"]["accuracy_control"]
    assert extra["quantization"]["max_drop"] == 0.0
    assert control["agreement"] == 100.0  # within a zero-point budget on the validation images
    assert isinstance(extra["float_layers"], list)


@needs_openvino
def test_percentile_calibration_is_refused_with_the_alternatives(tiny, tmp_path):
    with pytest.raises(UsageError, match="minmax or entropy"):
        build(tiny.onnx, tmp_path / "m", quant_mode="qint8_mixed_float32", shape_mutable=False,
              batch_size=1, preprocess=PP, calib_dir=tiny.images, calib_method="percentile",
              backend="openvino", options={"progress": False})
    assert not (tmp_path / "m").exists()


@needs_openvino
def test_cli_build_infer_bench_with_the_openvino_backend(tiny, tmp_path, capsys):
    """`mnv3 build/infer/bench --backend openvino` through the shared CLI, --max-drop included."""
    from mnv3.cli.main import main

    model = tmp_path / "m"
    assert main(["build", "--onnx", str(tiny.onnx), "--backend", "openvino",
                 "--quant-mode", "qint8_mixed_float16", "--shape-mutable", "false",
                 "--batch-size", "2", "--calib-dir", str(tiny.images), "--calib-num", "6",
                 "--resize", "36", "--crop", "32", "--max-drop", "1.0", "--no-progress",
                 "--keep-slower-int8", "--output", str(model)]) == 0
    meta = json.loads((model / "meta.json").read_text())
    assert meta["backend"] == "openvino" and meta["extra"]["quantization"]["max_drop"] == 1.0
    assert meta["extra"]["inference_precision"] == "f32"  # the budget was checked in f32
    assert main(["infer", "--model", str(model), "--image-dir", str(tiny.images),
                 "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 0
    bench = tmp_path / "bench.json"
    assert main(["bench", "--model", str(model), "--streams", "2", "--iterations", "20",
                 "--json", str(bench)]) == 0
    result = json.loads(bench.read_text())
    assert result["backend"] == "openvino" and result["streams"] == 2
    assert result["iterations"] == 20 and result["throughput_ips"] > 0
    # --max-drop budgets a reduced precision: for the float32 reference it is a usage error
    assert main(["build", "--onnx", str(tiny.onnx), "--quant-mode", "force_float32",
                 "--shape-mutable", "false", "--batch-size", "1", "--max-drop", "0.2",
                 "--output", str(tmp_path / "ort")]) == 2
    assert "force_float32 is the reference" in capsys.readouterr().err


@needs_openvino
def test_int8_without_nncf_says_how_to_install_it(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)  # openvino present, NNCF missing
    with pytest.raises(BackendUnavailable, match=r'pip install "mnv3\[openvino\]"'):
        _build(tiny, tmp_path, "qint8_mixed_float32")
    _build(tiny, tmp_path, "force_float32")  # float modes need no NNCF



@needs_openvino
@pytest.mark.slow
def test_float_ends_keep_the_first_and_last_convolutions_float(tiny, tmp_path):
    from mnv3.meta import read_meta

    out = _build(tiny, tmp_path, "qint8_mixed_float32", float_first=1, float_last=1)
    meta = read_meta(out)
    ends = meta.extra["quantization"]["float_ends"]
    assert len(ends) == 2
    # the two convolutions and the classifier's Linear run float, the rest int8
    assert len(meta.extra["float_layers"]) == 3
    assert "int8" in meta.op_precisions["Convolution"]


def _activation_fq_channels(model_dir) -> list[int]:
    """Channels of each activation FakeQuantize's range in an int8 IR (1: per tensor)."""
    import openvino as ov

    model = ov.Core().read_model(str(model_dir / "model.xml"))
    counts = []
    for op in model.get_ordered_ops():
        data = op.input_value(0).get_node() if op.get_type_name() == "FakeQuantize" else None
        if data is not None and data.get_type_name() != "Constant" \
                and not (data.get_type_name() == "Convert"
                         and data.input_value(0).get_node().get_type_name() == "Constant"):
            counts.append(int(np.prod(op.input_value(1).get_partial_shape().to_shape())))
    return counts


@needs_openvino
@pytest.mark.slow
def test_activations_are_quantized_per_tensor_unless_asked(tiny, tmp_path):
    """NNCF's default gives a depthwise convolution's input per-channel scales, which clip
    unseen images (Lite0: logit cosine 0.98735 against 0.99017 per tensor); mnv3 asks for
    per-tensor activations, and records the choice."""
    from mnv3.meta import read_meta

    default = _build(tiny, tmp_path / "default", "qint8_mixed_float32")
    counts = _activation_fq_channels(default)
    assert counts and set(counts) == {1}
    assert read_meta(default).extra["quantization"]["per_channel_activations"] is False
    nncf_way = _build(tiny, tmp_path / "nncf", "qint8_mixed_float32",
                      per_channel_activations=True)
    assert max(_activation_fq_channels(nncf_way)) == 16  # the depthwise convolution's input


@needs_openvino
def test_split_batch_gives_the_whole_batchs_logits_in_order(tiny, tmp_path):
    """split=S runs each call's batch as S sub-batches at once (a fixed batch compiled at
    batch / S; a shape-mutable one split as it comes): the logits are the whole batch's."""
    fixed = _build(tiny, tmp_path, "force_float32", batch=4)
    mutable = _build(tiny, tmp_path, "force_float32", mutable=True, batch=4)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    with load(fixed, split=2) as session:
        assert session.split == 2 and session.fixed_batch == 4
        assert session.config()["NUM_STREAMS"] == "2"
        assert session.config()["INFERENCE_NUM_THREADS"] == "2"  # 1 thread per stream
        np.testing.assert_allclose(session.run(x), tiny.logits(x), rtol=1e-4, atol=1e-4)
        buffer = x.copy()  # one array refilled in place: each fill gets its own answer
        for fill in (x[::-1].copy(), x):
            buffer[...] = fill
            np.testing.assert_allclose(session.run(buffer), tiny.logits(fill), rtol=1e-4,
                                       atol=1e-4)
        y = rng.standard_normal((7, 3, 32, 32)).astype(np.float32)  # predict pads to 4s
        np.testing.assert_allclose(session.predict(y), tiny.logits(y), rtol=1e-4, atol=1e-4)
    with load(mutable, split=2) as session:
        for n in (1, 3, 4):  # 1 image: one part; 3: parts of 2 and 1
            np.testing.assert_allclose(session.run(x[:n]), tiny.logits(x[:n]), rtol=1e-4,
                                       atol=1e-4)


@needs_openvino
def test_split_that_cannot_run_is_refused_with_what_to_do(tiny, tmp_path):
    model = _build(tiny, tmp_path, "force_float32", batch=2)
    with pytest.raises(UsageError, match="does not divide the fixed batch"):
        load(model, split=4)
    with pytest.raises(UsageError, match="does not combine with several requests"):
        load(model, split=2, streams=2)
    with pytest.raises(UsageError, match="at least 1"):
        load(model, split=0)


def test_split_is_refused_on_an_engine_that_runs_one_request(tiny_model, tmp_path):
    tiny = tiny_model(dynamic=True, export_batch=2, images=2)
    model = tmp_path / "ort"
    build(tiny.onnx, model, quant_mode="force_float32", shape_mutable=False, batch_size=2,
          preprocess=PP, options={"progress": False})
    with pytest.raises(UsageError, match="onnxruntime backend runs one call as one request"):
        load(model, split=2)


@needs_openvino
def test_bench_runs_a_tuned_split_and_says_so(tiny, tmp_path, capsys):
    """A model whose tuned settings split its batch: bench, load and infer use the split."""
    from mnv3.cli.main import main
    from mnv3.meta import read_meta, write_meta

    model = _build(tiny, tmp_path, "force_float32", batch=4)
    meta = read_meta(model)
    meta.extra["tuned"] = {"objective": "latency", "threads": 1, "streams": 1, "split": 2}
    write_meta(meta, model)
    with load(model) as session:
        assert session.split == 2
    with load(model, threads=2) as session:  # the caller's settings win
        assert session.split == 1
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(model), "--iterations", "10", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["split"] == 2 and result["streams"] == 1 and result["threads"] == 1
    assert any("split into 2" in n for n in result["notes"])
    assert "split into 2 sub-batches run at once" in capsys.readouterr().out
    assert main(["bench", "--model", str(model), "--iterations", "10", "--split", "1"]) == 0
    text = capsys.readouterr().out
    assert "sub-batches" not in text and "not the settings 'mnv3 tune' chose" in text
    assert main(["infer", "--model", str(model), "--image-dir", str(tiny.images),
                 "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "each batch split in 2 at once" in capsys.readouterr().out
