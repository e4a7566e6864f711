"""Export: a standard, folded ONNX graph that provably matches PyTorch, or an error and no file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import mnv3
from ckpt_factory import write_checkpoint
from conftest import needs_imagenet_sample

from mnv3.cli.main import main
from mnv3.errors import ExportError, UsageError
from mnv3.export import export_onnx
from mnv3.models import create_model, load_checkpoint

CASES = [  # every layout x mode, each from a differently wrapped checkpoint
    ("seed", "mobilenetv3-small", "raw"), ("seed", "mobilenetv3-large", "module"),
    ("torchvision", "mobilenetv3-small", "state_dict"), ("torchvision", "mobilenetv3-large", "model")]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny batches: extra OpenMP threads only spin against the other jobs on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """(layout, arch) -> LoadedModel read back from a checkpoint written in that layout."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for layout, arch, wrap in CASES:
        path = root / f"{layout}-{arch}.pth"
        write_checkpoint(path, arch, layout, wrap, width_mult=0.35, num_classes=10)
        out[layout, arch] = load_checkpoint(path)
    return out


def ort_session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def rel_error(session, module, batch, size=224):
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    got = session.run(["logits"], {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = module(x).numpy()
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("dynamic", [False, True], ids=["fixed", "dynamic"])
@pytest.mark.parametrize(("layout", "arch"), [(c[0], c[1]) for c in CASES])
def test_export_is_standard_folded_and_matches_pytorch(loaded, tmp_path, layout, arch, dynamic):
    model = loaded[layout, arch]
    out = tmp_path / "m.onnx"
    report = export_onnx(model, out, batch_size=2, dynamic_batch=dynamic)

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert report.opset >= 17 and {o.version for o in proto.opset_import if o.domain == ""} == {17}
    (inp,), (outp,) = proto.graph.input, proto.graph.output
    assert (inp.name, outp.name) == ("input", "logits")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    batch = "batch" if dynamic else 2
    assert dims(inp) == [batch, 3, 224, 224] and dims(outp) == [batch, 10]
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"BatchNormalization", "Identity", "Constant", "Dropout"}  # all folded
    assert {"HardSwish", "HardSigmoid"} <= ops  # kept as single standard ops

    # The report's own checks, and an independent one here, both within 1e-4.
    batches = [1, 3, 8] if dynamic else [2]
    assert sorted({c.batch for c in report.checks}) == batches
    assert report.max_rel_error <= 1e-4
    session = ort_session(out)
    for b in batches:
        assert rel_error(session, model.module, b) <= 1e-4
    if not dynamic:  # a fixed graph refuses any other batch
        with pytest.raises(Exception, match="(?i)invalid dimensions|dimension"):
            session.run(None, {"input": np.zeros((3, 3, 224, 224), np.float32)})
    d = report.to_dict()
    assert d["source"]["layout"] == layout and d["num_params"] == model.num_params
    json.dumps(d)


def test_failed_verification_raises_and_leaves_nothing(loaded, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous export")
    # Real parity is ~1e-6; a 1e-12 tolerance must fail the same machinery a real mismatch would.
    with pytest.raises(ExportError, match=r"differs from PyTorch at batch 8 .*no file was written"):
        export_onnx(loaded["seed", "mobilenetv3-small"], out, dynamic_batch=True, tolerance=1e-12,
                    force=True)  # the previous file is not ours: force, then fail verification
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temp file left


def test_unexportable_model_is_an_export_error(tmp_path):
    class FFT(torch.nn.Module):
        def forward(self, x):
            return torch.fft.fft2(x).real.mean((2, 3))

    with pytest.raises(ExportError, match="fft"):
        export_onnx(FFT(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs", [{"opset": 16}, {"batch_size": 0}, {"image_size": 8},
                                    {"exporter": "tf2onnx"}, {"tolerance": 0}])
def test_bad_arguments_are_usage_errors(tmp_path, kwargs):
    with pytest.raises(UsageError):
        export_onnx(create_model("small", "seed", width_mult=0.35), tmp_path / "m.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_source_exports(tmp_path):
    model = create_model("mobilenetv3-large", "seed", width_mult=0.35, num_classes=4, seed=5)
    torch.jit.trace(model, torch.randn(2, 3, 128, 128)).save(str(tmp_path / "ts.pt"))
    report = export_onnx(load_checkpoint(tmp_path / "ts.pt"), tmp_path / "ts.onnx",
                         dynamic_batch=True, image_size=128)
    assert report.arch == "torchscript" and report.input_shape == ["batch", 3, 128, 128]
    assert rel_error(ort_session(tmp_path / "ts.onnx"), model, 3, size=128) <= 1e-4


@pytest.mark.slow
def test_dynamo_exporter_also_works(tmp_path):
    model = create_model("mobilenetv3-small", "torchvision", width_mult=0.35, seed=6)
    report = export_onnx(model, tmp_path / "d.onnx", dynamic_batch=True, exporter="dynamo")
    assert report.opset >= 18 and report.input_shape[0] == "batch"  # torch.export emits >= 18
    assert report.max_rel_error <= 1e-4 and "BatchNormalization" not in report.op_counts


@needs_imagenet_sample
def test_real_images_join_the_parity_check(loaded, tmp_path, imagenet_sample):
    files = sorted((imagenet_sample / "images").iterdir())[:3]
    report = export_onnx(loaded["torchvision", "mobilenetv3-small"], tmp_path / "m.onnx",
                         batch_size=4, verify_images=files)
    kinds = {c.inputs for c in report.checks}
    assert kinds == {"random", "images"} and report.max_rel_error <= 1e-4


def test_cli_full_size_seed_checkpoint(tmp_path, capsys):
    """The seed's deployment end to end: a full-size Small .pth.tar through `mnv3 export`."""
    ckpt = tmp_path / "mobilenetv3_small_67.4.pth.tar"
    write_checkpoint(ckpt, "mobilenetv3-small", "seed", "raw", width_mult=1.0)
    rc = main(["export", "--weights", str(ckpt), "--dynamic-batch", "--output",
               str(tmp_path / "m.onnx"), "--json", str(tmp_path / "r.json")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mobilenetv3-small (seed x1), 1000 classes, 2,938,368 params" in text
    assert "batch 1:" in text and "batch 8:" in text and str(tmp_path / "m.onnx") in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_params"] == 2_938_368 and report["max_rel_error"] <= 1e-4
    assert report["input_shape"] == ["batch", 3, 224, 224]


def test_cli_errors_exit_with_their_codes(tmp_path, capsys):
    (tmp_path / "bad.pth").write_bytes(b"junk")
    out = str(tmp_path / "m.onnx")
    assert main(["export", "--weights", str(tmp_path / "bad.pth"), "--output", out]) == 4
    write_checkpoint(tmp_path / "w.pth", "mobilenetv3-small", "seed", width_mult=0.35)
    assert main(["export", "--weights", str(tmp_path / "w.pth"), "--output", out,
                 "--batch-size", "0"]) == 2
    assert main(["export", "--weights", str(tmp_path / "w.pth"), "--output", out,
                 "--layout", "torchvision"]) == 4
    err = capsys.readouterr().err
    assert err.count("mnv3 export: error:") == 3 and "--layout seed" in err
    assert not (tmp_path / "m.onnx").exists()


# -------------------------------------------------- issue 13: --output, --demo-weights
def test_output_that_is_not_an_mnv3_export_is_kept_unless_forced(loaded, tmp_path):
    """export --output replaced any file without a word; now only an earlier mnv3 export."""
    model = loaded["seed", "mobilenetv3-small"]
    out = tmp_path / "m.onnx"
    out.write_text("my notes, not a model")
    with pytest.raises(UsageError, match=r"m\.onnx exists and is not an ONNX file exported by "
                                         r"mnv3; pass --force"):
        export_onnx(model, out, image_size=64)
    assert out.read_text() == "my notes, not a model"
    assert export_onnx(model, out, image_size=64, force=True).replaced
    rep = export_onnx(model, out, image_size=64)  # ours now: replaced like a rebuild
    assert rep.replaced and not rep.untrained
    with pytest.raises(UsageError, match="is a folder"):
        export_onnx(model, tmp_path, image_size=64)


def test_demo_weights_export_is_marked_untrained_through_build_infer_and_eval(tmp_path, capsys):
    """Issue 13: 'mnv3 infer' printed an accuracy of a random-weights model with no note."""
    from mnv3.meta import read_meta
    from mnv3.provenance import onnx_marks

    onnx_path = tmp_path / "m.onnx"
    assert main(["export", "--demo-weights", "--width-mult", "0.35", "--num-classes", "10",
                 "--image-size", "64", "--dynamic-batch", "--output", str(onnx_path)]) == 0
    out = capsys.readouterr()
    assert "UNTRAINED" in out.out and "warning: --demo-weights" in out.err
    assert onnx_marks(onnx_path)["mnv3.random_seed"] == "0"
    model = tmp_path / "model"
    assert main(["build", "--onnx", str(onnx_path), "--quant-mode", "force_float32",
                 "--shape-mutable", "false", "--batch-size", "2", "--image-size", "64",
                 "--no-progress", "--output", str(model)]) == 0
    assert "note: UNTRAINED model" in capsys.readouterr().out
    src = read_meta(model).source
    assert src["random_seed"] == 0 and src["untrained"] is True
    images = tmp_path / "images"
    images.mkdir()
    from mnv3.data.datasets import demo_dir

    for i, p in enumerate(sorted((demo_dir() / "images").iterdir())[:3]):
        (images / p.name).write_bytes(p.read_bytes())
    (tmp_path / "labels.txt").write_text("".join(
        f"{p.name} {i}\n" for i, p in enumerate(sorted(images.iterdir()))))
    res = tmp_path / "res"
    assert main(["infer", "--model", str(model), "--image-dir", str(images), "--label-file",
                 str(tmp_path / "labels.txt"), "--output-dir", str(res), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    acc = next(i for i, ln in enumerate(lines) if ln.startswith("top5 accuracy"))
    assert lines[acc + 1].startswith("note: UNTRAINED model (random weights, seed 0")
    assert main(["eval", "--result-label-file", str(res / "eval_labels.txt"), "--result-1-file",
                 str(res / "eval_result_1.txt"), "--result-5-file",
                 str(res / "eval_result_5.txt")]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("top1 accuracy: ")  # the seed's lines, unchanged on stdout
    assert out.err.startswith("mnv3 eval: warning: UNTRAINED model")


def test_a_trained_checkpoint_is_not_marked(loaded, tmp_path):
    from mnv3.provenance import onnx_marks, source_fields

    export_onnx(loaded["seed", "mobilenetv3-small"], tmp_path / "t.onnx", image_size=64)
    assert onnx_marks(tmp_path / "t.onnx") == {"mnv3.exported_by": f"mnv3 {mnv3.__version__}"}
    assert source_fields(tmp_path / "t.onnx") == {}
