"""Fixtures of the reliability suite: a tiny built model and an in-process CLI runner."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tiny_onnx import export_tiny, write_images

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
def tiny(tmp_path_factory) -> dict:
    """A tiny ONNX classifier (32x32, 10 classes), 6 calibration images, a built model
    (force_float32, fixed batch 2)."""
    import mnv3

    d = tmp_path_factory.mktemp("rel_tiny")
    export_tiny(d / "tiny.onnx", dynamic=True)
    write_images(d / "images", 6)
    mnv3.build(d / "tiny.onnx", d / "model", quant_mode="force_float32", shape_mutable=False,
               batch_size=2, preprocess=CFG, calib_dir=d / "images",
               options={"progress": False})
    return {"onnx": d / "tiny.onnx", "images": d / "images", "model": d / "model"}


@pytest.fixture
def model_copy(tiny, tmp_path) -> Path:
    """A private copy of the built model, free to damage."""
    dst = tmp_path / "model"
    shutil.copytree(tiny["model"], dst)
    return dst
