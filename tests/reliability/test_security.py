"""Security by default: user files are data, never code.

* checkpoints: always ``torch.load(weights_only=True)`` (checked by spying on torch.load and by
  scanning the source); malicious pickles are in test_bad_checkpoints.py;
* ONNX files are parsed by onnx / ONNX Runtime only; a pickle or an unknown custom op named
  .onnx is a BuildError, and no payload runs;
* no eval/exec/os.system/shell=True/pickle.load anywhere in the package (AST scan);
* names from users (backend names in meta.json, file names with shell syntax) are looked up or
  passed as arguments, never interpreted.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

import mnv3
from ckpt_factory import write_checkpoint

from .badfiles import SIDE_EFFECT, make_code_pickle
from .helpers import assert_user_error, build_argv

SRC = Path(mnv3.__file__).resolve().parent


def test_checkpoints_are_loaded_with_weights_only(tmp_path, monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    write_checkpoint(tmp_path / "w.pth", width_mult=0.35, num_classes=10)
    mnv3.load_checkpoint(tmp_path / "w.pth")
    assert calls == [True]


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else (
                f"{getattr(f.value, 'id', getattr(f.value, 'attr', '?'))}.{f.attr}"
                if isinstance(f, ast.Attribute) else "?")
            yield name, node


FORBIDDEN = {"eval", "exec", "os.system", "os.popen", "pickle.load", "pickle.loads",
             "marshal.loads", "yaml.load", "shelve.open", "dill.load", "joblib.load"}


def test_source_has_no_code_execution_paths():
    """AST scan of src/mnv3: no eval/exec/system/pickle.load; torch.load always weights_only=True;
    no subprocess with shell=True."""
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        for name, node in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(SRC)}:{node.lineno} {name}"
            kw = {k.arg: k.value for k in node.keywords}
            if name in FORBIDDEN:
                problems.append(where)
            if name == "torch.load" and not (isinstance(kw.get("weights_only"), ast.Constant)
                                             and kw["weights_only"].value is True):
                problems.append(where + " without weights_only=True")
            if "shell" in kw and not (isinstance(kw["shell"], ast.Constant)
                                      and kw["shell"].value is False):
                problems.append(where + " with shell=")
    assert problems == []


def test_pickle_named_onnx_is_not_run(cli, tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake = make_code_pickle(tmp_path / "model.onnx")
    out = tmp_path / "m"
    argv = build_argv(tiny, out)
    argv[argv.index("--onnx") + 1] = fake
    res = cli(*argv)
    assert_user_error(res, 6, r"model\.onnx is not an ONNX model: it looks like a PyTorch "
                      r"checkpoint", r"pass it with --weights")
    assert not out.exists() and not list(tmp_path.rglob(SIDE_EFFECT))


def test_onnx_with_unknown_custom_op(cli, tiny, tmp_path):
    """A graph asking for a Python custom op (onnxruntime-extensions' PyOp domain) is refused
    by ONNX Runtime as an unknown op: a BuildError, nothing executed, nothing published."""
    node = helper.make_node("PyOp", ["input"], ["logits"], domain="ai.onnx.contrib")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.contrib", 1)])
    onnx.save(model, tmp_path / "custom.onnx")
    out = tmp_path / "m"
    argv = build_argv(tiny, out)
    argv[argv.index("--onnx") + 1] = tmp_path / "custom.onnx"
    res = cli(*argv)
    assert_user_error(res, 6, r"cannot load the model .*PyOp.* is not a registered", r"use standard ONNX ops")
    assert not out.exists()


@pytest.mark.parametrize("backend", ["os", "subprocess", "mnv3.backends.onnxruntime", "../x"])
def test_backend_name_from_meta_is_looked_up_not_imported(cli, model_copy, tmp_path, backend):
    meta = json.loads((model_copy / "meta.json").read_text())
    meta["backend"] = backend
    (model_copy / "meta.json").write_text(json.dumps(meta))
    res = cli("infer", "--model", model_copy, "--output-dir", tmp_path / "out", "--no-progress")
    assert_user_error(res, 7, rf"built for backend '{re.escape(backend)}'", r"upgrade mnv3 or rebuild")


def test_file_names_with_shell_syntax_are_just_names(cli, tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = [f"a;touch {SIDE_EFFECT};.png", f"$(touch {SIDE_EFFECT}2).png", "`id`.png"]
    for n in names:
        shutil.copy(tiny["images"] / "img_000.png", folder / n)
    out = tmp_path / "out"
    res = cli("infer", "--model", tiny["model"], "--image-dir", folder, "--output-dir", out,
              "--no-progress", "--save-images")
    assert res.code == 0, res.err
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(names)
    assert not list(tmp_path.rglob(f"{SIDE_EFFECT}*"))
