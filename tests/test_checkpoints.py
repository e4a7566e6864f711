"""Checkpoint loading: every layout x mode x wrapping, detection, clear errors, no code execution."""

from __future__ import annotations

import pickle

import pytest
import torch
from ckpt_factory import write_checkpoint

from mnv3.errors import CheckpointError, UsageError
from mnv3.meta import sha256_file
from mnv3.models import create_model, load_checkpoint

LAYOUTS = ("seed", "torchvision")
ARCHS = ("mobilenetv3-small", "mobilenetv3-large")
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("wrap", ["raw", "module", "state_dict", "model"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_mode_and_wrapping_loads_strictly(tmp_path, layout, arch, wrap):
    path = tmp_path / "weights.pth.tar"
    original = write_checkpoint(path, arch, layout, wrap, width_mult=0.35, num_classes=10)
    loaded = load_checkpoint(path)
    assert (loaded.layout, loaded.arch, loaded.width_mult, loaded.num_classes) == (
        layout, arch, 0.35, 10)
    assert loaded.source_path == str(path) and loaded.source_sha256 == sha256_file(path)
    assert not loaded.module.training
    with torch.no_grad():
        assert torch.equal(loaded.module(X), original(X))


@pytest.mark.parametrize(("layout", "arch", "width"), [
    ("seed", "mobilenetv3-small", 1.0), ("seed", "mobilenetv3-large", 0.75),
    ("torchvision", "mobilenetv3-small", 0.5), ("torchvision", "mobilenetv3-large", 1.25)])
def test_width_and_classes_are_detected(tmp_path, layout, arch, width):
    write_checkpoint(tmp_path / "w.pt", arch, layout, width_mult=width, num_classes=1000)
    loaded = load_checkpoint(tmp_path / "w.pt")
    assert (loaded.arch, loaded.width_mult, loaded.num_classes) == (arch, width, 1000)


def test_hints_are_honoured(tmp_path):
    write_checkpoint(tmp_path / "w.pth", "mobilenetv3-small", "seed", width_mult=0.35)
    loaded = load_checkpoint(tmp_path / "w.pth", arch="small", layout="seed", width_mult=0.35,
                             num_classes=1000, preprocess="torchvision-large-v2")
    assert loaded.arch == "mobilenetv3-small" and loaded.preprocess.resize == 232


def test_wrong_layout_hint_names_closest_and_what_the_file_is(tmp_path):
    write_checkpoint(tmp_path / "w.pth", "mobilenetv3-small", "seed", width_mult=0.35)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "w.pth", layout="torchvision")
    msg = str(err.value)
    assert "closest is layout=torchvision arch=mobilenetv3-small" in msg
    assert "missing keys (first: features.1.block" in msg
    assert "unexpected keys (first: features.1.conv.0.weight" in msg
    assert "--layout seed --arch mobilenetv3-small --width-mult 0.35" in msg


def test_renamed_key_is_reported_as_missing_and_unexpected(tmp_path):
    sd = create_model("mobilenetv3-small", "torchvision", width_mult=0.35, seed=0).state_dict()
    sd["classifier.3.kernel"] = sd.pop("classifier.3.weight")
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "w.pth")
    msg = str(err.value)
    assert "closest is layout=torchvision arch=mobilenetv3-small width_mult=0.35" in msg
    assert "1 missing keys (first: classifier.3.weight)" in msg
    assert "1 unexpected keys (first: classifier.3.kernel)" in msg
    assert "Pass --arch/--layout/--width-mult/--num-classes" in msg


def test_wrong_shape_is_reported(tmp_path):
    sd = create_model("mobilenetv3-large", "seed", width_mult=0.35, seed=0).state_dict()
    sd["features.3.conv.3.weight"] = torch.zeros(32, 1, 5, 5)  # a 5x5 depthwise where 3x3 belongs
    torch.save({"state_dict": sd}, tmp_path / "w.pth.tar")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "w.pth.tar")
    msg = str(err.value)
    assert "closest is layout=seed arch=mobilenetv3-large width_mult=0.35" in msg
    assert "features.3.conv.3.weight is [32, 1, 5, 5] in the checkpoint, [32, 1, 3, 3]" in msg


def test_explicit_num_classes_mismatch_is_a_shape_error(tmp_path):
    write_checkpoint(tmp_path / "w.pth", "mobilenetv3-small", "seed", num_classes=10)
    with pytest.raises(CheckpointError, match=r"classifier.1.weight is \[10, 1280\]"):
        load_checkpoint(tmp_path / "w.pth", num_classes=1000)


class _Evil:
    """Pickles to "call open(marker, 'w')": any unpickler that runs code creates the marker."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    sd = create_model("mobilenetv3-small", "seed", width_mult=0.35).state_dict()
    torch.save({"state_dict": sd, "payload": _Evil(marker)}, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="weights_only=True") as err:
        load_checkpoint(tmp_path / "evil.pth")
    assert "never run code" in str(err.value) or "can never run code" in str(err.value)
    assert not marker.exists()
    # Sanity: the payload is live - plain pickle would have run it.
    with pytest.raises(Exception):
        pickle.loads(pickle.dumps(_Evil(tmp_path / "no_such_dir" / "x")))


@pytest.mark.parametrize(("content", "match"), [
    (b"", r"not a PyTorch checkpoint: the file is empty \(0 bytes\)"),
    (b"not a checkpoint at all", r"not a PyTorch checkpoint: it is neither a torch zip archive "
                                 r"nor a pickle written by torch\.save \(it starts with "
                                 r"b'not a checkpoint'\)"),
    # a damaged pickle: torch's reason, without its advice to load with weights_only=False
    (b"\x80\x02\xff garbage", r"not a readable PyTorch checkpoint \(UnpicklingError: "
                              r"Unsupported operand 255\); expected a file written by torch\.save$"),
])
def test_garbage_files_are_checkpoint_errors(tmp_path, content, match):
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "bad.pth")


def test_missing_file_and_non_state_dicts(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        load_checkpoint(tmp_path / "list.pth")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint(tmp_path / "meta.pth")


def test_unknown_arch_hint_is_a_usage_error(tmp_path):
    write_checkpoint(tmp_path / "w.pth", "mobilenetv3-small", "seed")
    with pytest.raises(UsageError, match="unknown arch"):
        load_checkpoint(tmp_path / "w.pth", arch="resnet50")


def test_missing_batchnorm_counters_are_tolerated(tmp_path):
    model = create_model("mobilenetv3-small", "seed", width_mult=0.35, seed=1)
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pth")  # checkpoints from PyTorch < 0.4.1 have none
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path / "old.pth").module(X), model(X))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.* are deprecated, still used
@pytest.mark.parametrize("how", ["trace", "script"])
def test_torchscript_is_a_model_source(tmp_path, how):
    model = create_model("mobilenetv3-small", "torchvision", width_mult=0.35, num_classes=5, seed=2)
    scripted = torch.jit.trace(model, X) if how == "trace" else torch.jit.script(model)
    scripted.save(str(tmp_path / "ts.pt"))
    loaded = load_checkpoint(tmp_path / "ts.pt")
    assert (loaded.arch, loaded.layout, loaded.num_classes) == ("torchscript", "torchscript", 5)
    assert loaded.preprocess == model.preprocess
    with torch.no_grad():
        assert torch.allclose(loaded.module(X), model(X), atol=1e-6)
