"""Real accuracy: EfficientNet-Lite0 (ImageNet weights) built per mode meets its targets.

A compact version of benchmarks/fidelity_lite0.py (which also measures the int8 recipe
variants): calibrate on 100 images of the ImageNet sample, build with the product's defaults
(accuracy budget and its fallback included), evaluate on the other 400, and assert the
thresholds. Where the default budget refuses int8 (on CPUs without VNNI Lite0's ONNX Runtime
int8 measured an expected agreement of 98.91% against the 99% budget), the test checks the
refusal and builds int8 again as its message says a user may: with a lower budget
(``LOWER_BUDGET``); the shipped int8 is held to the same unseen-image promises either way.
Skips without the sample or the weights package. A few minutes on 2 cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import mnv3
from conftest import needs_lite0
from mnv3 import calibration as cal
from mnv3.data.datasets import load_dataset
from mnv3.data.preprocess import preprocess_image
from mnv3.errors import BuildError
from mnv3.gate import Budget

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

LOWER_BUDGET = 98.5  # percent top-1 agreement: what a user passes after a refusal
pytestmark = [needs_lite0, pytest.mark.slow]  # the module fixture: ~12 min on a busy 2-vCPU machine


@pytest.fixture(scope="module")
def lite0_logits(imagenet_sample, tmp_path_factory):
    import lite0
    import torch

    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("lite0")
    eager = lite0.load_lite0()
    onnx_path = lite0.export_lite0(work / "lite0.onnx", eager)
    samples = load_dataset(imagenet_sample / "images", imagenet_sample / "labels.txt")
    calib, held = cal.split_calibration([s.path for s in samples], 100)
    sessions, metas = {}, {"refusals": {}}
    for mode in ("force_float32", "force_float16", "qint8_mixed_float32"):
        def build(**options):
            return mnv3.build(onnx_path, work / mode, quant_mode=mode, shape_mutable=True,
                              batch_size=8, preprocess=lite0.PREPROCESS,
                              calib_dir=imagenet_sample / "images", calib_num=100,
                              options={"progress": False, **options})

        try:
            meta = build()
        except BuildError as e:
            if mode != "qint8_mixed_float32":
                raise
            metas["refusals"][mode] = (str(e), (work / mode).exists())
            meta = build(min_agreement=LOWER_BUDGET)
        metas[mode] = meta
        if meta.calibration:  # the build calibrated on exactly the images we hold out from
            assert meta.calibration["files_sha256"] == cal.files_sha256(calib)
        sessions[mode] = mnv3.load(work / mode, threads=1)
    out = {k: [] for k in [*sessions, "eager"]}
    for i in range(0, len(held), 25):
        x = np.stack([preprocess_image(f, lite0.PREPROCESS) for f in held[i:i + 25]])
        with torch.inference_mode():
            out["eager"].append(eager(torch.from_numpy(x)).numpy())
        for k, s in sessions.items():
            out[k].append(s.predict(x))
    label_of = {s.path: s.label for s in samples}
    labels = np.array([label_of[f] for f in held])
    return {k: np.concatenate(v).argmax(1) for k, v in out.items()}, labels, metas


def test_float32_matches_pytorch_eager_on_every_image(lite0_logits):
    top1, _, _ = lite0_logits
    assert len(top1["eager"]) == 400
    assert (top1["force_float32"] == top1["eager"]).all()


def test_float16_agrees_with_float32(lite0_logits):
    top1, _, _ = lite0_logits
    assert (top1["force_float16"] == top1["force_float32"]).mean() >= 0.995


def test_every_reduced_build_met_its_budget_on_its_held_out_images(lite0_logits):
    _, _, metas = lite0_logits
    for mode in ("force_float16", "qint8_mixed_float32"):
        f = metas[mode].fidelity
        assert f["within_budget"] is True and "below_budget" not in f, mode
        budget = Budget(f["budget"]["min_agreement"], f["budget"]["min_cosine"])
        assert budget.shortfalls(f) == [], mode  # the gate's judgement, re-checked here


def test_a_refused_int8_build_says_why_and_writes_nothing(lite0_logits):
    _, _, metas = lite0_logits
    for mode, (message, written) in metas["refusals"].items():
        assert not written, mode
        assert "misses its accuracy budget" in message and "Nothing was written" in message
        assert "--min-agreement" in message  # what to do
    if not metas["refusals"]:
        pytest.skip("the default budget shipped int8 on this CPU: nothing was refused")


def test_int8_agrees_with_float32_on_unseen_images(lite0_logits):
    top1, _, _ = lite0_logits
    agreement = (top1["qint8_mixed_float32"] == top1["force_float32"]).mean()
    assert agreement >= 0.98, f"int8 top-1 agreement {agreement:.2%} < 98%"


def test_int8_loses_at_most_0_4_points(lite0_logits):
    top1, labels, _ = lite0_logits
    drop = 100 * ((top1["force_float32"] == labels).mean()
                  - (top1["qint8_mixed_float32"] == labels).mean())
    assert drop <= 0.4, f"int8 loses {drop:.2f} top-1 points > 0.4"
