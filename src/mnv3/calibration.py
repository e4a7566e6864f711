"""Calibration data for int8, for every engine: which images, decoded how, and which are held out.

Every image goes through ``mnv3.data.preprocess.preprocess_image``, the function inference and
evaluation use: calibrating on differently preprocessed images would calibrate the wrong
activation ranges (DESIGN.md practice 8). Images are decoded lazily, one batch at a time.

Subset choice: the folder's image files sorted by name, then a seeded sample of ``num`` of them
(sorted again), so the same folder and count always give the same calibration set; the rest
is held out for the build's fidelity check. If ``num`` exceeds the folder, all images are used
(and the build notes it) rather than refusing, so small demo folders still build.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from mnv3.data.datasets import walk_images
from mnv3.data.files import shown
from mnv3.data.preprocess import preprocess_image
from mnv3.errors import UsageError
from mnv3.meta import PreprocessCfg

CALIB_SEED = 0


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files under ``folder`` (``mnv3.data.datasets.walk_images``: recursive, so
    the dataset layout's ``images/`` and an ImageFolder tree both work).

    Entries named like images that are not regular files (a FIFO, a device, a broken link) are
    kept, folders named like images too: ``decodable`` skips them with the reason, or refuses
    them under --strict (issue 19).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"calibration folder {shown(folder)} does not exist; pass --calib-dir DIR")
    return [folder / rel for rel in walk_images(folder)]


def regular_images(folder: str | os.PathLike) -> list[Path]:
    """``list_images`` without the entries that are not regular files (a FIFO, a folder named
    like an image): for ``verify`` and ``compare``, which sample images and do not skip."""
    return [f for f in list_images(folder) if f.is_file()]


def split_calibration(files: Sequence[Path], num: int) -> tuple[list[Path], list[Path]]:
    """(calibration subset, held-out rest): a seeded sample of ``num`` files, both sorted."""
    files = sorted(files)
    if num >= len(files):
        return list(files), []
    chosen = set(random.Random(CALIB_SEED).sample(range(len(files)), num))
    return ([f for i, f in enumerate(files) if i in chosen],
            [f for i, f in enumerate(files) if i not in chosen])


def decodable(files: Sequence[Path], cfg: PreprocessCfg, strict: bool = False
              ) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(the files that decode, [(file, reason), ...] for those that do not), in order.

    Decoded by the loader ``mnv3 infer`` uses, with the same rule: an undecodable image is
    skipped and counted, or with ``strict`` a DataError at the first one (issue 13). The
    engines then decode the good files again as they calibrate, one batch at a time, so
    memory stays bounded for any --calib-num.
    """
    from mnv3.data.datasets import Sample
    from mnv3.data.loader import iter_batches

    loader = iter_batches([Sample(Path(f)) for f in files], cfg, batch_size=16, strict=strict)
    good = [Path(s.path) for batch in loader for s in batch.samples]
    return good, [(Path(s.path), reason) for s, reason in loader.skipped]


def files_sha256(files: Sequence[Path]) -> str:
    """Hash of the file list (names, in order): identifies the calibration set in meta.json."""
    h = hashlib.sha256()
    for f in files:
        h.update(os.fsencode(Path(f).name) + b"\n")  # bytes: a name need not be UTF-8
    return h.hexdigest()


def decode_batches(files: Sequence[Path], cfg: PreprocessCfg, batch: int) -> Iterator[np.ndarray]:
    """Preprocessed float32 arrays of ``batch`` files, decoded lazily on this thread (one batch
    in memory at a time); an undecodable file raises. (``mnv3.data.loader.iter_batches`` is the
    threaded loader that skips such files and yields ``Batch`` objects.)"""
    for start in range(0, len(files), batch):
        yield np.stack([preprocess_image(f, cfg) for f in files[start:start + batch]])
