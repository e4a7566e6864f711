"""Fixtures of the reliability suite: a tiny built model and an in-process CLI runner."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .helpers import CFG, CliResult


@pytest.fixture
def cli(capsys):
    """``cli("build", "--onnx", ...)`` -> CliResult; argparse's SystemExit becomes a code."""
    from mnv3.cli.main import main

    def run(*argv) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse usage errors
            code = e.code if isinstance(e.code, int) else 2
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run


@pytest.fixture(scope="session")
def tiny(tiny_model, tmp_path_factory) -> dict:
    """A tiny ONNX classifier (32x32, 10 classes), 6 calibration images, a built model
    (force_float32, fixed batch 2)."""
    import mnv3

    src = tiny_model(dynamic=True, images=6)
    model = tmp_path_factory.mktemp("rel_tiny") / "model"
    mnv3.build(src.onnx, model, quant_mode="force_float32", shape_mutable=False,
               batch_size=2, preprocess=CFG, calib_dir=src.images,
               options={"progress": False})
    return {"onnx": src.onnx, "images": src.images, "model": model}


@pytest.fixture
def model_copy(tiny, tmp_path) -> Path:
    """A private copy of the built model, free to damage."""
    dst = tmp_path / "model"
    shutil.copytree(tiny["model"], dst)
    return dst
