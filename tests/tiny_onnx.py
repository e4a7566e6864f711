"""Tiny MobileNetV3-like ONNX classifiers for build/backend tests (made in seconds, no data).

Tests get them through conftest.py's ``tiny_model`` factory; this is the one generator behind it: a stem conv + hardswish, a depthwise
conv, a squeeze-excite block with hardsigmoid, a pointwise conv and a linear head, on 32x32
images, exported with torch.onnx (dynamic or fixed batch, or with the batch baked into a
Reshape, the trap that makes a graph impossible to re-batch).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
NUM_CLASSES = 10


def tiny_module(seed: int = 0, bake_batch: bool = False, num_classes: int = NUM_CLASSES):
    import torch
    from torch import nn

    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

        def forward(self, x):
            y = torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))
            return x * nn.functional.hardsigmoid(self.fc2(y))

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish())
            self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16),
                                    nn.Hardswish())
            self.se, self.pw = SE(16), nn.Conv2d(16, 24, 1)
            self.fc = nn.Linear(24, num_classes)

        def forward(self, x):
            x = nn.functional.hardswish(self.pw(self.se(self.dw(self.stem(x)))))
            x = x.mean((2, 3))
            if bake_batch:
                x = x.reshape(1, -1)  # what a batch-1 export without dynamic axes can leave
            return self.fc(x)

    torch.manual_seed(seed)
    model = Tiny()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def export_tiny(path: Path, dynamic: bool = True, batch: int = 1, bake_batch: bool = False,
                seed: int = 0, num_classes: int = NUM_CLASSES):
    """Write a tiny classifier to ``path``; returns the torch module (the float reference)."""
    import torch

    model = tiny_module(seed, bake_batch, num_classes)
    x = torch.randn(batch, 3, SIZE, SIZE)
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    return model


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` small random-but-smooth RGB images (PNG), varied sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = rng.integers(36, 60, size=2)
        base = rng.random((4, 4, 3)) * 255
        img = Image.fromarray(base.astype(np.uint8)).resize((int(w), int(h)), Image.BILINEAR)
        p = folder / f"img_{i:03d}.png"
        img.save(p)
        paths.append(p)
    return paths


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()

