"""Bad checkpoints through ``mnv3 export`` (and ``mnv3 build --weights``): exit 4, no file written,
and never any code run: pickles go through ``torch.load(weights_only=True)``."""

from __future__ import annotations

import pickle

import pytest
import torch

from .badfiles import SIDE_EFFECT, RunsCode, make_code_pickle, make_code_torchscript_lookalike
from ckpt_factory import write_checkpoint
from .helpers import PRE_FLAGS, assert_user_error, spawn, tree

WIDTH, CLASSES = 0.35, 10
NOT_READABLE = (r"is not a readable PyTorch checkpoint", r"expected a file written by torch\.save")
PASS = (r"pass a state dict saved with torch\.save \(a \.pth, \.pth\.tar or \.pt file\) or a "
        r"TorchScript file saved with torch\.jit\.save")
NEITHER = (r"is not a PyTorch checkpoint: it is neither a torch zip archive nor a pickle written "
           r"by torch\.save")
PROTOCOL_DO = r"re-save the weights with torch\.save's default protocol \(2\): torch\.save\("
MISMATCH = (r"does not match any known MobileNetV3", r"pass --arch/--layout/--width-mult")


def _good_state(folder):
    write_checkpoint(folder / "good.pth", "mobilenetv3-small", "seed", width_mult=WIDTH,
                     num_classes=CLASSES)
    return torch.load(folder / "good.pth", weights_only=True)


def _text(p):
    p.write_text("epoch 12, top-1 67.4\n")


def _csv(p):
    p.write_text("file,label\nimg_000.png,3\n")


def _zero(p):
    p.write_bytes(b"")


def _truncated(p):
    write_checkpoint(p.with_name("full.pth"), width_mult=WIDTH, num_classes=CLASSES)
    data = p.with_name("full.pth").read_bytes()
    p.write_bytes(data[: len(data) // 2])
    p.with_name("full.pth").unlink()


def _wrong_layout(p):
    torch.save({f"backbone.{k}": v for k, v in _good_state(p.parent).items()}, p)


def _wrong_shape(p):
    state = _good_state(p.parent)
    state["features.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(state, p)


def _empty_state(p):
    torch.save({"state_dict": {}, "epoch": 3}, p)


def _a_list(p):
    torch.save([torch.zeros(3)], p)


def _raw_code_pickle(p):
    with open(p, "wb") as f:
        pickle.dump({"w": RunsCode(p.parent)}, f, protocol=4)


def _plain_pickle_of_weights(p):
    """What a user gets by pickling a state dict with ``pickle`` instead of ``torch.save``."""
    state = _good_state(p.parent)
    with open(p, "wb") as f:
        pickle.dump(state, f, protocol=4)


def _torch_save_protocol_4(p):
    torch.save(_good_state(p.parent), p, pickle_protocol=4)


def _onnx_as_weights(p, tiny):
    p.write_bytes(tiny["onnx"].read_bytes())


# case -> (writer, regex what, regex do)
CASES = {
    "not_a_checkpoint_text": (_text, NEITHER + r" \(it starts with b'epoch 12, top-1 '\)", PASS),
    "csv_renamed_pth": (_csv, NEITHER + r" \(it starts with b'file,label\\nimg_0'\)", PASS),
    "zero_bytes": (_zero, r"is not a PyTorch checkpoint: the file is empty \(0 bytes\)", PASS),
    "truncated": (_truncated, *NOT_READABLE),
    "onnx_file_as_weights": (_onnx_as_weights, r"is an ONNX model, not a PyTorch checkpoint",
                             r"build it with 'mnv3 build --onnx \S+"),
    "wrong_layout": (_wrong_layout, MISMATCH[0] + r".*unexpected keys \(first: backbone\.", MISMATCH[1]),
    "one_tensor_wrong_shape": (_wrong_shape, r"features\.0\.0\.weight is \[8, 3, 3, 3\] in the "
                               r"checkpoint, \[16, 3, 3, 3\] in the network", MISMATCH[1]),
    "empty_state_dict": (_empty_state, r"is not a state dict: it is empty", r"expected a dict of tensors"),
    "a_list_not_a_dict": (_a_list, r"holds a list, expected a state dict", r"a dict of tensors"),
    "pickle_that_runs_code_torch_save": (make_code_pickle, r"refused to load .*weights_only=True",
                                         r"re-save only the weights"),
    # pickle.dump frames its data (protocol 4+), which torch's safe unpickler cannot read
    "pickle_that_runs_code_raw_pickle": (_raw_code_pickle, r"is a pickle of protocol 4, which "
                                         r"torch\.load\(weights_only=True\) cannot read",
                                         PROTOCOL_DO),
    "plain_pickle_protocol_4": (_plain_pickle_of_weights, r"weights\.pth is a pickle of protocol "
                                r"4, which torch\.load\(weights_only=True\) cannot read",
                                PROTOCOL_DO),
    "torch_save_protocol_4": (_torch_save_protocol_4, r"is a torch zip archive pickled with "
                              r"protocol 4, which torch\.load\(weights_only=True\) cannot read",
                              PROTOCOL_DO),
    "torchscript_lookalike_with_code": (make_code_torchscript_lookalike,
                                        r"looks like TorchScript but torch\.jit\.load failed",
                                        r"TorchScript"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_checkpoint_export(cli, tiny, tmp_path, monkeypatch, recwarn, case):
    monkeypatch.chdir(tmp_path)  # a payload writing to the cwd would land here
    writer, what, do = CASES[case]
    ck = tmp_path / "ck" / "weights.pth"
    ck.parent.mkdir()
    writer(ck, tiny) if writer is _onnx_as_weights else writer(ck)
    before = tree(tmp_path)
    recwarn.clear()  # what torch.save said while writing the file is not the user's concern
    res = cli("export", "--weights", ck, "--output", tmp_path / "out" / "m.onnx")
    assert_user_error(res, 4, what, do)
    # only mnv3's line: no torch warning printed above it (e.g. "Detected pickle protocol 4")
    assert not recwarn.list, [f"{w.category.__name__}: {w.message}" for w in recwarn]
    assert tree(tmp_path) == before  # nothing written: no onnx, no folder, no temp file
    assert not list(tmp_path.rglob(SIDE_EFFECT))  # no code ran


def test_missing_checkpoint(cli, tmp_path):
    res = cli("export", "--weights", tmp_path / "nope.pth", "--output", tmp_path / "m.onnx")
    assert_user_error(res, 4, r"checkpoint \S+nope.pth does not exist", r"expected a \.pth")
    assert not (tmp_path / "m.onnx").exists()


def test_wrong_hint_says_what_the_file_is(cli, tmp_path):
    write_checkpoint(tmp_path / "small.pth", "mobilenetv3-small", "seed", width_mult=WIDTH,
                     num_classes=CLASSES)
    res = cli("export", "--weights", tmp_path / "small.pth", "--arch", "mobilenetv3-large",
              "--output", tmp_path / "m.onnx")
    assert_user_error(res, 4, MISMATCH[0],
                      r"Detected without hints: --layout seed --arch mobilenetv3-small "
                      r"--width-mult 0.35 --num-classes 10")
    assert not (tmp_path / "m.onnx").exists()


def test_build_from_code_pickle_runs_nothing(cli, tmp_path, monkeypatch):
    """``mnv3 build --weights`` goes through the same safe loader: exit 4, no model dir."""
    monkeypatch.chdir(tmp_path)
    ck = make_code_pickle(tmp_path / "evil.pth")
    out = tmp_path / "model"
    res = cli("build", "--weights", ck, "--quant-mode", "force_float32", "--shape-mutable",
              "false", "--batch-size", "1", *PRE_FLAGS, "--no-progress", "--output", out)
    assert_user_error(res, 4, r"refused to load", r"re-save only the weights")
    assert not out.exists() and not list(tmp_path.rglob(SIDE_EFFECT))


def test_plain_pickle_cli_stderr_is_only_mnv3s_line(tmp_path):
    """The real command in a fresh interpreter, every warning shown (``-W always``): stderr is
    mnv3's one error line, without torch's "Detected pickle protocol 4" warning above it."""
    ck = tmp_path / "weights.pth"
    _plain_pickle_of_weights(ck)
    proc = spawn(["-W", "always", "-m", "mnv3.cli.main", "export", "--weights", ck,
                  "--output", tmp_path / "m.onnx"])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err
    assert err.splitlines() == [err.strip()] and err.startswith("mnv3 export: error: "), err
    assert "is a pickle of protocol 4" in err and not (tmp_path / "m.onnx").exists()
