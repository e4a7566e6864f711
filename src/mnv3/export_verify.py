"""Export's self-check: ONNX Runtime against PyTorch eager on the same inputs, batch by batch.

The inputs are seeded random tensors plus, when given, real images preprocessed exactly as at
inference (``--verify-images``). ``judge`` turns the worst relative error into an
``ExportError`` when it exceeds the tolerance, so a graph that computes something else is never
written.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mnv3.data.files import shown
from mnv3.engine_errors import ort_errors
from mnv3.errors import DataError, ExportError, Mnv3Warning, UsageError
from mnv3.meta import PreprocessCfg

INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class ParityCheck:
    """One comparison of ONNX Runtime against PyTorch eager on the same batch."""

    batch: int
    inputs: str  # "random" or "images"
    max_abs_error: float
    max_rel_error: float  # max|onnx - torch| / max|torch|


def images_for_verify(source, cfg: PreprocessCfg, image_size: int, limit: int) -> np.ndarray | None:
    """Up to ``limit`` images as one float32 NCHW array, preprocessed exactly as at inference."""
    if source is None:
        return None
    from mnv3.data.datasets import IMAGE_EXTENSIONS, walk_images

    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.is_dir():
            raise UsageError(f"--verify-images {shown(root)} is not a folder of images")
        files = [root / rel for rel in walk_images(root)]
    else:
        files = sorted(Path(p) for p in source)
    if not files:
        raise UsageError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in "
                         f"{shown(source) if isinstance(source, (str, os.PathLike)) else 'the list'}")
    if cfg.crop != image_size:  # keep the recipe's resize/crop ratio at the exported size
        cfg = PreprocessCfg(**(cfg.to_dict() | {"crop": image_size, "mean": cfg.mean, "std": cfg.std,
                                                "resize": round(cfg.resize * image_size / cfg.crop)}))
    return _decode_some(files, cfg, limit)


def _decode_some(files: list[Path], cfg: PreprocessCfg, limit: int) -> np.ndarray:
    """The first ``limit`` files that decode; the others (corrupt, a FIFO named .jpg: issue 19)
    are skipped with a warning, as infer skips them. None decoding is an error."""
    from mnv3.data.preprocess import preprocess_image

    arrays, skipped = [], []
    for f in files:
        if len(arrays) == limit:
            break
        try:
            arrays.append(preprocess_image(f, cfg))
        except DataError as e:
            skipped.append(str(e))
    if not arrays:
        raise UsageError(f"none of the --verify-images could be read (first: {skipped[0]}); "
                         "pass a folder of valid images")
    if skipped:
        warnings.warn(f"--verify-images: skipped {len(skipped)} image(s) that could not be read "
                      f"(first: {skipped[0]})", Mnv3Warning, stacklevel=3)
    return np.stack(arrays)


def verify_onnx(module: nn.Module, onnx_path, batches, image_size: int,
                images: np.ndarray | None = None) -> list[ParityCheck]:
    """Run ``onnx_path`` in ONNX Runtime and ``module`` in PyTorch on the same inputs, per batch."""
    from mnv3.onnx_source import cpu_session

    session = cpu_session(onnx_path)  # one thread: small batches; be polite to a shared machine
    gen = torch.Generator().manual_seed(1)
    checks = []
    for b in batches:
        inputs = [("random", torch.randn(b, 3, image_size, image_size, generator=gen))]
        if images is not None:
            idx = np.arange(b) % len(images)  # cycle the images to fill the batch
            inputs.append(("images", torch.from_numpy(images[idx])))
        for kind, x in inputs:
            try:
                got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
            except ort_errors() as e:  # e.g. InvalidArgument: the graph's batch is not b
                raise ExportError(f"the exported graph cannot run batch {b}: "
                                  f"{str(e).splitlines()[0]}") from e
            with torch.no_grad():
                ref = module(x).float().numpy()
            err = float(np.abs(got.astype(np.float64) - ref).max()) if got.shape == ref.shape else float("inf")
            scale = float(np.abs(ref).max()) or 1.0
            checks.append(ParityCheck(b, kind, err, err / scale))
    return checks


def judge(checks: list[ParityCheck], tolerance: float) -> None:
    worst = max(checks, key=lambda c: c.max_rel_error)
    if not worst.max_rel_error <= tolerance:
        raise ExportError(
            f"ONNX output '{OUTPUT_NAME}' differs from PyTorch at batch {worst.batch} "
            f"({worst.inputs} inputs): max relative error {worst.max_rel_error:.3g} > tolerance "
            f"{tolerance:g} (max abs error {worst.max_abs_error:.3g}); no file was written")
