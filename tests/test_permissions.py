"""Issue 13, item 7: what mnv3 writes gets the mode a plain write would give (umask applies).

Temporary files from mkstemp (0600) and folders from mkdtemp (0700) are renamed into place as
results, reports, the exported ONNX and model folders; they must not stay private.
"""

from __future__ import annotations

import os
import stat

import pytest

import mnv3
from mnv3.meta import PreprocessCfg
from tiny_onnx import SIZE

CFG = PreprocessCfg(resize=36, crop=SIZE)


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _modes(root) -> dict[str, int]:
    """Every path under ``root`` (root included) -> its permission bits."""
    paths = [root, *root.rglob("*")]
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.lstat().st_mode) for p in paths}


def _assert_plain(root, umask: int) -> None:
    for path, mode in _modes(root).items():
        full = root.parent / path
        want = (0o777 if full.is_dir() else 0o666) & ~umask
        assert mode == want, f"{path}: mode {mode:o}, a plain write gives {want:o}"


def test_build_infer_and_report_outputs_get_plain_modes(tiny_model, tmp_path, umask):
    from test_report import make_report

    src = tiny_model(dynamic=True, images=4)
    out = tmp_path / "out"
    out.mkdir()
    mnv3.build(src.onnx, out / "model", quant_mode="force_float32",
               shape_mutable=False, batch_size=2, preprocess=CFG, calib_dir=src.images,
               options={"progress": False})
    _assert_plain(out / "model", umask)
    from mnv3.data.datasets import load_dataset

    mnv3.infer(out / "model", load_dataset(src.images), out / "results", progress=False,
               save_images=True)
    _assert_plain(out / "results", umask)
    from mnv3.report import write_report

    write_report(make_report(), out / "report")
    _assert_plain(out / "report", umask)


def test_exported_onnx_gets_a_plain_mode(tmp_path, umask):
    from mnv3.models import create_model

    model = create_model("mobilenetv3-small", width_mult=0.35, seed=0)
    mnv3.export_onnx(model, tmp_path / "onnx" / "m.onnx", image_size=64)
    _assert_plain(tmp_path / "onnx", umask)
