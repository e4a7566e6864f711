"""Stage 4: top-1 / top-5 accuracy, from arrays (``topk_correct``) or from result files.

The result files are the seed's: ``eval_labels.txt`` holds ``filename label`` per image,
``eval_result_1.txt`` ``filename top1`` per image and ``eval_result_5.txt`` five lines
``filename index`` per image (one per top-5 candidate). ``evaluate_files`` recomputes accuracy
from them with the seed's ``compute_top1_and_top5.py`` rule: an image is top-k correct when its
label line also appears among the top-k result lines. Output is the seed's two lines,
``top1 accuracy: 0.886000`` / ``top5 accuracy: 0.976000``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mnv3.atomic import atomic_write_text
from mnv3.data.files import MAX_BYTES, read_text
from mnv3.errors import DataError


def topk_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """int64 [N, k]: the k highest-scoring classes per row, best first; ties go to the lower index."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, classes], got shape {logits.shape}")
    k = min(int(k), logits.shape[1])
    # A stable sort of the negated scores keeps equal scores in index order (deterministic).
    return np.argsort(-logits, axis=1, kind="stable")[:, :k].astype(np.int64)


def topk_correct(logits: np.ndarray, labels, ks=(1, 5)) -> dict[int, np.ndarray]:
    """Per image, whether its label is among the top-k classes: ``{k: bool [N]}`` for each k.

    ``sum()`` of an entry is the count of correct images, ``mean()`` the accuracy.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    top = topk_indices(logits, max(ks))
    if top.shape[0] != labels.shape[0]:
        raise ValueError(f"{top.shape[0]} rows of logits but {labels.shape[0]} labels")
    return {k: (top[:, :k] == labels[:, None]).any(axis=1) for k in ks}


@dataclass
class EvalResult:
    """Accuracy recomputed from result files."""

    total: int
    top1_correct: int
    top5_correct: int
    top1: float
    top5: float
    missing: int  # labelled images with no line in the top-1 file (counted as wrong, as the seed does)

    def lines(self) -> str:
        """The seed's output: two lines, six decimals."""
        return format_accuracy(self.top1, self.top5)

    def to_dict(self) -> dict:
        return asdict(self)


def format_accuracy(top1: float, top5: float) -> str:
    return f"top1 accuracy: {top1:f}\ntop5 accuracy: {top5:f}\n"


def evaluate_files(label_file: str | os.PathLike, result_1_file: str | os.PathLike,
                   result_5_file: str | os.PathLike,
                   out_file: str | os.PathLike | None = None) -> EvalResult:
    """Top-1 / top-5 from the seed's three result files; writes the two lines to ``out_file``.

    Lines are compared without their line ending (the seed compared raw lines, so a last line
    with no newline never matched); blank lines are ignored.
    """
    labels = _lines(label_file, "label file")
    if not labels:
        raise DataError(f"label file {label_file} has no lines; nothing to evaluate")
    top1_lines = Counter(_lines(result_1_file, "top-1 result file"))
    top5_lines = Counter(_lines(result_5_file, "top-5 result file"))
    top1_names = {line.rsplit(None, 1)[0] for line in top1_lines}
    c1 = sum(top1_lines[line] for line in labels)
    c5 = sum(top5_lines[line] for line in labels)
    missing = sum(1 for line in labels if line.rsplit(None, 1)[0] not in top1_names)
    n = len(labels)
    result = EvalResult(n, c1, c5, c1 / n, c5 / n, missing)
    if out_file is not None:
        atomic_write_text(out_file, result.lines())
    return result


def _lines(path: str | os.PathLike, what: str) -> list[str]:
    path = Path(path)
    if not os.path.lexists(path):
        raise DataError(f"{what} {path} does not exist; pass the files 'mnv3 infer' wrote "
                        "(eval_labels.txt, eval_result_1.txt, eval_result_5.txt)")
    text = read_text(path, what, DataError, MAX_BYTES["result file"])  # regular, capped (issue 19)
    return [line.rstrip("\r\n") for line in text.splitlines() if line.strip()]
