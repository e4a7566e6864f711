"""The torch backend (AOTInductor, issue 15): built from a checkpoint on the CPU, parity with
PyTorch eager, the package loads with torch alone, the same result files through infer as
ONNX Runtime, and clear errors for what it refuses (an ONNX source, int8, an emulated 16-bit
float, a GPU that is not there). CUDA paths run where a GPU is present and skip otherwise.

One CPU compile is shared by the module (AOTInductor takes ~40 CPU s for this network; minutes
of wall time on a busy 2-vCPU machine): the tests that need it are marked slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mnv3.backends import load  # noqa: E402
from mnv3.build_request import BuildRequest  # noqa: E402
from mnv3.errors import BackendUnavailable, BuildError, ModelError, UsageError  # noqa: E402
from mnv3.meta import PreprocessCfg, read_meta  # noqa: E402

SIZE = 32
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU (torch.cuda.is_available())")
no_cuda = pytest.mark.skipif(CUDA, reason="checks the errors of a machine without a GPU")


def _main(argv) -> int:
    from mnv3.cli.main import main

    return main(argv)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A checkpoint in the seed's layout, images, and its model built for the CPU by the CLI."""
    from ckpt_factory import write_checkpoint
    from tiny_onnx import write_images

    d = tmp_path_factory.mktemp("torch")
    net = write_checkpoint(d / "w.pth", "mobilenetv3-small", "seed", width_mult=0.35,
                           num_classes=10)
    write_images(d / "images", 12)
    common = ["--weights", str(d / "w.pth"), "--image-size", str(SIZE), "--shape-mutable",
              "false", "--batch-size", "2", "--calib-dir", str(d / "images"), "--no-progress"]
    assert _main(["build", *common, "--backend", "torch", "--quant-mode", "force_float32",
                  "--output", str(d / "torch")]) == 0
    assert _main(["build", *common, "--quant-mode", "force_float32",
                  "--output", str(d / "ort")]) == 0
    return {"dir": d, "net": net, "common": common}


def _eager(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


# ------------------------------------------------------------------ built on the CPU
@pytest.mark.slow
def test_cpu_build_matches_eager_and_records_what_it_compiled(work):
    meta = read_meta(work["dir"] / "torch")
    assert meta.backend == "torch" and meta.compiled_file == "model.pt2"
    assert meta.extra["device"] == "cpu" and meta.extra["dtype"] == "float32"
    assert meta.extra["compile_options"]["inductor_configs"] == {"freezing": True}
    assert meta.extra["compile_s"] > 0 and meta.source["arch"] == "mobilenetv3-small"
    assert set(meta.op_precisions.values()) == {"float32"} and "conv2d" in meta.op_precisions
    assert meta.fidelity["top1_agreement"] == 1.0  # against float32 ONNX Runtime
    x = np.random.default_rng(1).standard_normal((5, 3, SIZE, SIZE), dtype=np.float32)
    with load(work["dir"] / "torch") as session:
        got = session.predict(x)  # fixed batch 2: split and padded
        assert session.device_report() is None  # no device time on the CPU
    np.testing.assert_allclose(got, _eager(work["net"], x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_the_package_loads_with_torch_alone(work):
    """No mnv3 model code: mnv3 cannot even be imported in the process that runs it."""
    code = ("import sys; sys.modules['mnv3'] = None\n"
            "import torch\n"
            f"m = torch._inductor.aoti_load_package({str(work['dir'] / 'torch' / 'model.pt2')!r})\n"
            f"y = m(torch.zeros(2, 3, {SIZE}, {SIZE}))\n"
            "print(tuple((y[0] if isinstance(y, (list, tuple)) else y).shape))")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(work["dir"] / "kcache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(2, 10)"


@pytest.mark.slow
def test_infer_writes_the_same_results_as_onnxruntime(work):
    d = work["dir"]
    for name in ("torch", "ort"):
        assert _main(["infer", "--model", str(d / name), "--image-dir", str(d / "images"),
                      "--output-dir", str(d / f"res_{name}"), "--no-progress"]) == 0
    for f in ("eval_result_1.txt", "eval_result_5.txt"):
        assert (d / "res_torch" / f).read_text() == (d / "res_ort" / f).read_text()


@pytest.mark.slow
def test_bench_reports_a_torch_model_like_any_other(work, capsys):
    capsys.readouterr()
    assert _main(["bench", "--model", str(work["dir"] / "torch"), "--iterations", "5",
                  "--warmup", "1", "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["backend"] == "torch" and result["iterations"] == 5
    assert result["throughput_ips"] > 0 and "device" not in result  # no GPU view on a CPU


@pytest.mark.slow
def test_a_batch_outside_the_declared_range_is_a_model_error(work):
    with load(work["dir"] / "torch") as session:
        session.batch_range = [1, 2]  # what a mutable build records (1..256 by default)
        with pytest.raises(ModelError, match="compiled for batches 1..2, got 3"):
            session._run(np.zeros((3, 3, SIZE, SIZE), np.float32))


# ------------------------------------------------------------------ refused, clearly
@pytest.mark.slow
def test_an_onnx_source_is_refused_with_the_way_to_build_it(work, tmp_path, capsys):
    from tiny_onnx import export_tiny

    export_tiny(tmp_path / "t.onnx")
    assert _main(["build", "--onnx", str(tmp_path / "t.onnx"), "--backend", "torch",
                  "--quant-mode", "force_float32", "--shape-mutable", "false", "--batch-size",
                  "1", "--image-size", str(SIZE), "--calib-dir", str(work["dir"] / "images"),
                  "--no-progress", "--output", str(tmp_path / "m")]) == 2
    assert "--backend torch --weights CKPT" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.tmp-*"))


needs_torchao = pytest.mark.skipif(not __import__("importlib").util.find_spec("torchao"),
                                   reason='torchao is not installed (pip install -e ".[dev]")')


def test_int8_is_refused_where_it_cannot_be_built(monkeypatch):
    """int8 is torchao's PT2E on x86 CPUs: a GPU, or no torchao, is a clear refusal."""
    from mnv3.backends import get_backend
    from mnv3.backends import torch_aot
    from mnv3.quant_mode import QuantMode

    mode = QuantMode.INT8_FLOAT32
    with pytest.raises(UsageError, match="runs on the CPU .* on a GPU build force_float16"):
        torch_aot.torch_dtype(mode, torch.device("cuda"))
    monkeypatch.setattr(torch_aot, "has_torchao", lambda: False)
    with pytest.raises(BackendUnavailable, match=r"needs torchao .*mnv3\[torch-int8\]"):
        torch_aot.torch_dtype(mode, torch.device("cpu"))
    assert not get_backend("torch").runs_here(mode)
    BuildRequest(quant_mode=mode, shape_mutable=False, batch_size=1, backend="torch")
    with pytest.raises(UsageError, match="qint8_mixed_float16 is built only by .* not torch"):
        BuildRequest(quant_mode="qint8_mixed_float16", shape_mutable=False, batch_size=1,
                     backend="torch")


def test_each_backend_calibrates_its_own_default_way():
    """No --calib-method: the backend's first (torch: histogram search, measured better on
    Lite0; the others min/max); a float build records none."""
    def method(backend, mode="qint8_mixed_float32"):
        return BuildRequest(quant_mode=mode, shape_mutable=False, batch_size=1,
                            backend=backend).calib_method

    assert method("torch") == "entropy" and method("onnxruntime") == "minmax"
    assert method("torch", "force_float32") == "minmax"  # unused: nothing is calibrated
    with pytest.raises(UsageError, match="percentile is not offered by the torch backend"):
        BuildRequest(quant_mode="qint8_mixed_float32", shape_mutable=False, batch_size=1,
                     backend="torch", calib_method="percentile")


@pytest.mark.slow
@needs_torchao
def test_int8_is_pt2e_with_the_range_this_cpu_needs(work, tmp_path):
    """qint8_mixed_float32: int8 convolutions calibrated on the build's images, reduce_range
    where u8 x s8 saturates, held to the budget (an untrained network: measured and marked)."""
    from mnv3 import build
    from mnv3.sysinfo import int8_saturates

    meta = build(_onnx(work), tmp_path / "m", quant_mode="qint8_mixed_float32",
                 shape_mutable=False, batch_size=2, backend="torch",
                 preprocess=PreprocessCfg(resize=37, crop=SIZE), calib_dir=work["dir"] / "images",
                 source=_source(work), options={"progress": False, "speed_check": False})
    recipe = meta.extra["int8"]
    assert recipe["reduce_range"] == int8_saturates() and recipe["calibration_images"] > 0
    quantized, _, layers = recipe["int8_layers"].split()
    assert quantized == layers  # every convolution and linear layer
    assert "HistogramObserver" in recipe["activations"]  # torch's default --calib-method
    assert meta.calibration["method"] == "entropy"
    assert any("int8" in p or "uint8" in p for p in meta.op_precisions.values())
    x = np.random.default_rng(4).standard_normal((4, 3, SIZE, SIZE), dtype=np.float32)
    ref = _eager(work["net"], x)
    with load(tmp_path / "m") as session:
        got = session.predict(x)
    cosine = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    # measured 0.99974 (AVX2, reduce_range): int8 keeps the logits' direction
    assert cosine.min() > 0.999 and meta.fidelity["cosine_mean"] > 0.999


class _SamePadConv(torch.nn.Conv2d):
    """A subclass of nn.Conv2d padding TF-style in forward, as EfficientNet-Lite0's layers do."""

    def forward(self, x):
        return super().forward(torch.nn.functional.pad(x, (0, 1, 0, 1)))


def _subclass_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        _SamePadConv(3, 8, 3, stride=2), torch.nn.ReLU6(),
        _SamePadConv(8, 8, 3, groups=8), torch.nn.ReLU6(),
        torch.nn.Conv2d(8, 16, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(16, 10)).eval()


def _int8_of(net, folder: Path, **options):
    from tiny_onnx import write_images

    from mnv3.backends.torch_aot import quantize_int8

    cfg = SimpleNamespace(calib_files=write_images(folder, 4), calib_method="minmax",
                          preprocess=PreprocessCfg(resize=37, crop=SIZE), options=options)
    return quantize_int8(net, torch.randn(2, 3, SIZE, SIZE), cfg)


@needs_torchao
def test_int8_quantizes_subclassed_convolutions_and_says_how_many(tmp_path):
    """Every convolution and linear layer is int8, nn.Conv2d subclasses too (torchao's
    matcher alone left them float32: Lite0 had 1 of 50 layers int8), and the recipe says so."""
    converted, recipe = _int8_of(_subclass_net(), tmp_path / "images")
    assert recipe["int8_layers"] == "4 of 4"
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ref, got = _subclass_net()(x), converted(x)
    assert torch.nn.functional.cosine_similarity(got, ref).min() > 0.99  # still the network


@needs_torchao
@pytest.mark.parametrize("reduce_range", [True, False])
def test_int8_activation_range_can_be_chosen_for_measuring(tmp_path, reduce_range):
    """The ``reduce_range`` build option overrides this CPU's choice (benchmarks measure the
    other ISA class's setting with it); without it the CPU decides (the slow test above)."""
    _, recipe = _int8_of(_subclass_net(), tmp_path / "images", reduce_range=reduce_range)
    assert recipe["reduce_range"] is reduce_range


@needs_torchao
def test_int8_that_would_leave_every_layer_float_is_refused(tmp_path, monkeypatch):
    """A network the quantizer finds no layer of is not shipped as "int8"."""
    import mnv3.backends.torch_aot as ta

    net = torch.nn.Sequential(_SamePadConv(3, 8, 3), torch.nn.ReLU6()).eval()
    monkeypatch.setattr(ta, "expose_layers", lambda gm: gm)  # the quantizer's matcher alone
    try:
        _, recipe = _int8_of(net, tmp_path / "images")
    except BuildError as e:
        assert "quantized none of the network's 1 convolution / linear layers" in str(e)
        assert "build force_float32 instead" in str(e)
        return
    pytest.skip(f"torchao now finds nn.Conv2d subclasses itself ({recipe['int8_layers']})")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["force_float16", "force_bfloat16"])
def test_a_16_bit_float_the_cpu_would_emulate_is_refused(work, mode, tmp_path):
    from mnv3 import build
    from mnv3.backends import get_backend
    from mnv3.backends.torch_aot import cpu_computes
    from mnv3.quant_mode import QuantMode

    q = QuantMode.parse(mode)
    if cpu_computes(q.float_type):
        pytest.skip(f"this CPU computes {q.float_type}")
    assert not get_backend("torch").runs_here(q)
    with pytest.raises(BackendUnavailable, match=f"{mode} on the CPU needs .*--device cuda"):
        build(_onnx(work), tmp_path / "m", quant_mode=mode, shape_mutable=False,
              batch_size=1, backend="torch", preprocess=PreprocessCfg(resize=37, crop=SIZE),
              calib_dir=work["dir"] / "images", source=_source(work),
              options={"progress": False})
    assert not (tmp_path / "m").exists()


def _onnx(work) -> Path:
    """An ONNX export of the checkpoint (what the builder measures fidelity against)."""
    from mnv3 import export_onnx

    path = work["dir"] / "w.onnx"
    if not path.exists():
        export_onnx(work["net"], path, dynamic_batch=True, image_size=SIZE)
    return path


def _source(work) -> dict:
    meta = read_meta(work["dir"] / "torch")
    return {k: meta.source[k] for k in ("path", "sha256", "arch", "layout", "width_mult",
                                         "num_classes")}


@pytest.mark.parametrize("device, why", [
    ("gpu", "--device must be cpu, cuda or cuda:N"),
    ("cpu:1", "--device must be cpu, cuda or cuda:N"),
    ("cuda:x", "--device must be cpu, cuda or cuda:N"),
])
def test_a_malformed_device_is_a_usage_error(device, why):
    with pytest.raises(UsageError, match=why):
        BuildRequest(quant_mode="force_float32", shape_mutable=False, batch_size=1,
                     backend="torch", options={"device": device})


def test_a_cpu_only_backend_refuses_cuda_naming_the_one_that_builds_it():
    with pytest.raises(UsageError, match="onnxruntime backend builds for cpu only.*--backend "
                                         "torch"):
        BuildRequest(quant_mode="force_float32", shape_mutable=False, batch_size=1,
                     options={"device": "cuda"})


def test_the_device_is_part_of_what_defines_a_model():
    """A package compiled for a GPU is not the CPU's: reuse (mnv3 run, tune) and the replace
    check compare the device too; engines that record none ran on the CPU."""
    from mnv3.model_settings import differences, recorded

    def request(device):
        return BuildRequest(quant_mode="force_float32", shape_mutable=False, batch_size=1,
                            backend="torch", options={"device": device}).settings("0" * 64)

    assert request(None) == request("cpu") and request("cuda") == request("cuda:0")
    assert differences(request(None), request("cuda")) == ["device cpu -> cuda:0"]
    meta = SimpleNamespace(backend="torch", quant_mode="force_float32", shape_mutable=False,
                           batch_size=1, source={"sha256": "0" * 64},
                           preprocess=request(None)["preprocess"], calibration=None, extra={})
    assert recorded(meta) == request("cpu")
    meta.extra = {"device": "cuda:0"}
    assert recorded(meta) == request("cuda")


@pytest.mark.slow
@no_cuda
def test_cuda_on_a_machine_without_a_gpu_is_refused_before_compiling(work, tmp_path, capsys):
    capsys.readouterr()
    rc = _main(["build", *work["common"], "--backend", "torch", "--quant-mode",
                "force_float16", "--device", "cuda:0", "--output", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc != 0 and "needs an NVIDIA GPU" in err and "use --device cpu" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
@no_cuda
def test_a_model_built_for_cuda_on_a_machine_without_one_is_a_model_error(work, tmp_path):
    import shutil

    shutil.copytree(work["dir"] / "torch", tmp_path / "m")
    meta_file = tmp_path / "m" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["extra"]["device"] = "cuda:0"  # as a GPU build records it
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="compiled for cuda:0: .*needs an NVIDIA GPU"):
        load(tmp_path / "m")


@pytest.mark.slow
def test_a_cpu_model_is_not_moved_to_a_gpu(work):
    with pytest.raises(ModelError, match="compiled for cpu and cannot run on cuda"):
        load(work["dir"] / "torch", device="cuda")


def test_the_planner_builds_torch_only_in_the_modes_it_runs_here():
    """mnv3 run --backends torch: int8 is not its mode; fp16/bf16 only where the CPU computes
    them (else skipped, with a note, instead of failing the run at its build)."""
    from mnv3.backends.torch_aot import cpu_computes
    from mnv3.pipeline import _plan

    plan = _plan(("force_float32", "qint8_mixed_float16", "force_bfloat16"), (1,), False, 1, 1,
                 ("onnxruntime", "torch"))
    bf16 = [("torch", "force_bfloat16")] if cpu_computes("bfloat16") else []
    assert [(r.backend, r.quant_mode) for r in plan["models"]] == [
        ("onnxruntime", "force_float32"), ("onnxruntime", "qint8_mixed_float16"),
        ("torch", "force_float32"), *bf16]
    assert ("torch", "qint8_mixed_float16") in plan["skipped"]
    assert (("torch", "force_bfloat16") in plan["skipped"]) == (not bf16)
    if not cpu_computes("float16"):
        with pytest.raises(UsageError, match="nothing to build"):
            _plan(("force_float16",), (1,), False, 1, 1, ("torch",))


def test_an_exported_program_source_is_checked_before_compiling(tmp_path):
    """Any network reaches the backend as a torch.export program (gpu_check's Lite0): a
    missing, changed or foreign file is a clear error, before any compile."""
    from mnv3 import create_model
    from mnv3.backends.torch_aot import save_exported_program, source_module
    from mnv3.errors import BuildError
    from mnv3.meta import sha256_file

    net = create_model("mobilenetv3-small", "seed", width_mult=0.35, num_classes=10, seed=0)
    path = tmp_path / "net.pt2"
    source = save_exported_program(net, path, SIZE)
    assert source == {"exported_program": str(path), "exported_program_sha256": sha256_file(path)}
    module = source_module(source)
    x = torch.rand(5, 3, SIZE, SIZE)  # a batch other than the example's: the batch is free
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(UsageError, match="does not exist; write it with torch.export.save"):
        source_module({"exported_program": str(tmp_path / "none.pt2")})
    with pytest.raises(BuildError, match="changed since it was described"):
        source_module({"exported_program": str(path), "exported_program_sha256": "0" * 64})
    (tmp_path / "junk.pt2").write_bytes(b"not a program")
    with pytest.raises(UsageError, match="is not a torch.export program"):
        source_module({"exported_program": str(tmp_path / "junk.pt2")})


# ------------------------------------------------------------------ on a GPU (skipped here)
@needs_cuda
def test_a_bad_gpu_index_names_the_gpus_there():
    from mnv3.backends.torch_aot import torch_device

    with pytest.raises(UsageError, match="GPU\\(s\\), cuda:0"):
        torch_device(f"cuda:{torch.cuda.device_count()}")


@needs_cuda
@pytest.mark.parametrize("mode, dtype", [("force_float32", "float32"),
                                         ("force_float16", "float16"),
                                         ("force_bfloat16", "bfloat16")])
@pytest.mark.slow
def test_cuda_builds_run_in_their_precision_with_graphs_and_device_time(work, tmp_path, mode,
                                                                       dtype):
    assert _main(["build", *work["common"], "--backend", "torch", "--quant-mode", mode,
                  "--device", "cuda", "--output", str(tmp_path / "m")]) == 0
    meta = read_meta(tmp_path / "m")
    assert meta.extra["device"] == "cuda:0" and meta.extra["dtype"] == dtype
    assert meta.extra["gpu"]["name"]
    x = np.random.default_rng(2).standard_normal((8, 3, SIZE, SIZE), dtype=np.float32)
    ref = _eager(work["net"], x)
    with load(tmp_path / "m") as session:
        for _ in range(6):  # past the warm-up: the graph is captured and replayed
            got = session.predict(x)
        report = session.device_report()
    assert report["cuda_graphs"] and report["device_time"]["calls"] >= 6
    if dtype == "float32":
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)
    else:
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.75  # random net: small margins


@pytest.mark.slow
@needs_cuda
def test_cuda_streams_each_capture_their_graphs_and_agree_with_eager(work, tmp_path):
    """Several threads (bench streams, infer's batches in flight) on one mutable CUDA model:
    each captures its own graph per batch size, none disturbs another's results; float32 runs
    as IEEE float32 (TF32 off) and device time is kept per batch size."""
    from concurrent.futures import ThreadPoolExecutor

    common = [a for a in work["common"] if a not in ("false", "--shape-mutable")]
    assert _main(["build", *common, "--shape-mutable", "true", "--backend", "torch",
                  "--quant-mode", "force_float32", "--device", "cuda",
                  "--output", str(tmp_path / "m")]) == 0
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((n, 3, SIZE, SIZE), dtype=np.float32) for n in (1, 3, 1, 3)]
    with load(tmp_path / "m", cuda_graphs=True) as session:
        def calls(x):
            return [session.predict(x) for _ in range(8)]  # past the warm-up: replays

        with ThreadPoolExecutor(len(inputs)) as pool:
            results = list(pool.map(calls, inputs))
        report = session.device_report()
    for x, got in zip(inputs, results):
        for out in got:
            np.testing.assert_allclose(out, _eager(work["net"], x), rtol=1e-3, atol=1e-4)
    assert report["cuda_graphs"] and not report["tf32"] and not report["notes"]
    assert set(report["device_time_by_batch"]) == {1, 3}
    assert report["device_time"]["calls"] == 8 * len(inputs)


@pytest.mark.slow
@needs_cuda
def test_bench_on_cuda_prints_device_time_and_the_gpu(work, tmp_path, capsys):
    assert _main(["build", *work["common"], "--backend", "torch", "--quant-mode",
                  "force_float32", "--device", "cuda", "--output", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    assert _main(["bench", "--model", str(tmp_path / "m"), "--iterations", "20"]) == 0
    out = capsys.readouterr().out
    assert "device (ms)" in out and "CUDA graphs on" in out and "driver" in out


@pytest.mark.slow
def test_the_gpu_check_runs_its_code_on_the_cpu_in_a_dry_run(tmp_path, capsys, monkeypatch):
    """benchmarks/gpu_check.py --dry-run: the same builds, parity and table, on the CPU."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_check

    assert gpu_check.main(["--dry-run", "--work", str(tmp_path / "w"),
                           "--json", str(tmp_path / "g.json")]) == 0
    out = capsys.readouterr().out
    assert "a dry run: not GPU figures" in out and "x MLU370-X4" in out
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["dry_run"] and result["gpu"] is None and result["errors"] == []
    assert [(r["mode"], r["batch"], r["streams"]) for r in result["rows"]] == [
        ("force_float32", 1, 1), ("force_float32", 2, 1), ("force_float32", 2, 2)]
    assert all(r["images_per_s"] > 0 for r in result["rows"])
    assert all(r["max_rel_err"] <= 1e-3 for r in result["rows"] if r["streams"] == 1)
    # the yardstick stage: a torch.export program built by the backend, against eager
    [ref, fp32] = result["accuracy"]
    assert fp32["mode"] == "force_float32" and fp32["top1_agreement"] == 1.0
    e2e = result["end_to_end"]
    assert e2e["images"] == 2 * ref["images"] and e2e["decode_only_images_per_s"]
