"""infer's result files: per-image lines streamed to disk, published whole at the end.

``ResultWriter`` turns each batch's logits into the seed's result lines and writes them at once
to hidden temporary files inside the output folder (``.eval_result_1.txt.XXXX.tmp``), so memory
does not grow with the number of images (issue 19: it grew by about 1.2 KB per image when the
lines were kept until the end). ``commit`` renames them into place, ``eval_result.txt`` last
and any old one removed first, so a crash or Ctrl-C never leaves an accuracy that does not match
the other files; ``discard`` removes the temporary files. ``output_folder`` is the folder's
lifecycle around a run: created if missing, checked writable before any work, and removed again
(with what the run wrote) when the run fails and the folder is new.

The local path (``mnv3.inference``) and the Ray path (``mnv3.ray_engine``) both write through
this module, so their files are the same byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mnv3.atomic import atomic_write_text, normal_mode
from mnv3.data.datasets import Sample
from mnv3.errors import UsageError
from mnv3.evaluation import format_accuracy, topk_indices

RESULT_FILES = ("eval_labels.txt", "eval_result_1.txt", "eval_result_5.txt", "results.jsonl",
                "skipped.txt", "infer.json", "eval_result.txt")
# The per-image files, streamed while the run goes on (the others are small, written at the end).
STREAMED = ("eval_labels.txt", "eval_result_1.txt", "eval_result_5.txt", "results.jsonl")


class ResultWriter:
    """Streams the per-image result lines into ``out``; counts what accuracy needs."""

    def __init__(self, out: Path, names: dict[Path, str], class_names: list[str] | None):
        self.out, self.names, self.class_names = out, names, class_names
        self.correct1 = self.correct5 = self.labeled = self.count = 0
        self._tmp: dict[str, Path] = {}
        self._files = {}
        try:
            for name in STREAMED:
                fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
                self._tmp[name] = Path(tmp)
                normal_mode(fd)  # mkstemp's 0600 is for the temporary file, not the result
                self._files[name] = os.fdopen(fd, "w", encoding="utf-8", newline="")
        except OSError as e:
            self.discard()
            raise _write_error(out, e) from None
        except BaseException:
            self.discard()
            raise

    def add(self, samples: list[Sample], logits: np.ndarray) -> list[tuple[str, int, float]]:
        """Write the lines of one batch; returns each image's (name, top-1 index, probability)."""
        logits = np.asarray(logits, dtype=np.float64)
        top = topk_indices(logits, 5)
        probs = softmax(logits)
        labels, top1, top5, jsonl, firsts = [], [], [], [], []
        for i, s in enumerate(samples):
            name, idx = self.names[s.path], [int(v) for v in top[i]]
            p = [float(probs[i, j]) for j in idx]
            top1.append(f"{name} {idx[0]}\n")
            top5.extend(f"{name} {j}\n" for j in idx)
            if s.label is not None:
                self.labeled += 1
                labels.append(f"{name} {s.label}\n")
                self.correct1 += idx[0] == s.label
                self.correct5 += s.label in idx
            jsonl.append(json.dumps({
                "file": name, "label": s.label, "top5": idx,
                "names": [self.class_name(j) for j in idx], "probs": [round(v, 6) for v in p],
            }) + "\n")
            firsts.append((name, idx[0], p[0]))
        self._write({"eval_labels.txt": labels, "eval_result_1.txt": top1,
                     "eval_result_5.txt": top5, "results.jsonl": jsonl})
        self.count += len(samples)
        return firsts

    def class_name(self, idx: int) -> str:
        if self.class_names and idx < len(self.class_names):
            return self.class_names[idx]
        return str(idx)

    def _write(self, lines: dict[str, list[str]]) -> None:
        try:
            for name, chunk in lines.items():
                self._files[name].writelines(chunk)
        except OSError as e:  # disk full, or the folder removed meanwhile
            raise _write_error(self.out, e) from None

    def commit(self, skipped: list[tuple[str, str]], summary: dict,
               top1: float | None, top5: float | None) -> None:
        """Publish every result file, each atomically; eval_result.txt removed first, written
        last. ``summary`` is infer.json's content."""
        out = self.out
        try:
            for f in self._files.values():
                f.close()  # flushes: a full disk shows here
            (out / "eval_result.txt").unlink(missing_ok=True)
            (out / "skipped.txt").unlink(missing_ok=True)
            for name in STREAMED:
                if name == "eval_labels.txt" and not self.labeled:
                    (out / name).unlink(missing_ok=True)  # no labels: no stale labels file
                    continue
                os.replace(self._tmp.pop(name), out / name)
            if skipped:
                atomic_write_text(out / "skipped.txt", "".join(f"{n}\t{r}\n" for n, r in skipped))
            atomic_write_text(out / "infer.json", json.dumps(summary, indent=2) + "\n")
            if top1 is not None:
                atomic_write_text(out / "eval_result.txt", format_accuracy(top1, top5))
        except OSError as e:  # eval_result.txt is absent, so no accuracy is left to mislead
            raise _write_error(out, e) from None
        finally:
            self.discard()

    def discard(self) -> None:
        """Close and remove the temporary files that were not published (idempotent)."""
        for f in self._files.values():
            with contextlib.suppress(OSError):
                f.close()
        for tmp in self._tmp.values():
            tmp.unlink(missing_ok=True)
        self._files, self._tmp = {}, {}


def _write_error(out: Path, e: OSError) -> UsageError:
    return UsageError(f"cannot write the result files in {out} ({e.strerror or e}); "
                      "free space or choose another --output-dir")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (float64): the probabilities results.jsonl and mnv3 serve report."""
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@contextlib.contextmanager
def output_folder(out: Path):
    """Create ``out`` (and missing parents) and check it is writable before any work; when the
    body fails (an error or Ctrl-C), remove the folder again if this run created it."""
    created = _make_output_dir(out)
    try:
        _check_writable(out)  # now, not after decoding every image
        yield out
    except BaseException:
        _remove_new_output(out, created)
        raise


def _make_output_dir(out: Path) -> list[Path]:
    """Create ``out`` and its missing parents; return those created, deepest first."""
    created = [d for d in (out, *out.parents) if not d.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, a read-only place: the user's to fix
        raise UsageError(f"cannot create output folder {out} ({e.strerror or e}); "
                         "choose a writable --output-dir") from None
    return created


def _remove_new_output(out: Path, created: list[Path]) -> None:
    """After a failed run, remove the output folder if this run created it (and the parents it
    created), with what the run wrote there: result files, annotated copies. A folder that
    already existed is left as it is: its earlier results are the user's."""
    if not created:
        return
    for name in RESULT_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "images", ignore_errors=True)  # new with the folder: only this run's copies
    for d in created:
        try:
            d.rmdir()
        except OSError:  # something else appeared in it meanwhile: not ours to delete
            return


def _check_writable(out: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UsageError(f"cannot write into output folder {out} ({e.strerror or e}); "
                         "choose a writable --output-dir") from None


class AnnotatedCopies:
    """``--save-images``: copies with the top-1 class drawn, saved on a thread into a hidden
    staging folder and moved into ``out/images`` only by ``publish`` (a failed run into an
    existing folder leaves the earlier copies as they were)."""

    def __init__(self, out: Path):
        from concurrent.futures import ThreadPoolExecutor

        self.staging = Path(tempfile.mkdtemp(prefix=".images.partial-", dir=out))
        self.dest = out / "images"
        self._saver = ThreadPoolExecutor(1, thread_name_prefix="mnv3-save")
        self._saves = []

    def add(self, sample: Sample, name: str, text: str) -> None:
        from mnv3.data.annotate import save_annotated
        from mnv3.errors import DataError

        dest = self.staging / name
        if not dest.resolve().is_relative_to(self.staging.resolve()):
            raise DataError(f"refusing to write {dest}: outside the output folder")
        self._saves.append(self._saver.submit(save_annotated, sample.path, dest, text))
        pending = []
        for f in self._saves:  # re-raise a failed save early, and keep the list short
            f.result() if f.done() else pending.append(f)
        self._saves = pending

    def finish(self) -> None:
        """Wait for every save; re-raise a failed one here, not silently."""
        self._saver.shutdown(wait=True)
        for f in self._saves:
            f.result()

    def publish(self) -> None:
        """Move the finished copies into place (same filesystem: renames, no copies)."""
        try:
            for path in sorted(self.staging.rglob("*")):
                if path.is_file():
                    target = self.dest / path.relative_to(self.staging)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, target)
        except OSError as e:
            raise UsageError(f"cannot move the annotated images into {self.dest} "
                             f"({e.strerror or e}); free space or choose another --output-dir"
                             ) from None

    def close(self) -> None:
        """Drop queued saves (on error or Ctrl-C) and remove the staging folder."""
        self._saver.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.staging, ignore_errors=True)
