"""Stage 3: run a built model over a dataset; per-image top-1 / top-5 and the seed's result files.

    result = infer("data/models/force_float32_false_8", demo_dataset(), "out/")
    print(result.top1, result.images_per_s)

Files written in ``output_dir`` (names are the images' paths relative to the dataset folder; a
name that is not valid UTF-8 is written with each undecodable byte as ``\\xNN``, ``caf\\xe9.JPEG``,
the form a label file uses to name it: ``mnv3.data.files.escape_name``, issue 19):

* ``eval_labels.txt``   ``filename label``       (labelled images only)
* ``eval_result_1.txt`` ``filename top1``
* ``eval_result_5.txt`` ``filename index``, five lines per image (the seed's layout)
* ``eval_result.txt``   ``top1 accuracy: x`` / ``top5 accuracy: y`` (labelled images only)
* ``results.jsonl``     per image: top-5 indices, class names, probabilities
* ``skipped.txt``       ``filename<TAB>reason`` for images that could not be decoded (if any)
* ``infer.json``        this summary (``InferResult``), e.g. for ``mnv3 eval`` to know that the
                        model was never trained
* ``images/``           with ``save_images``: copies with the top-1 class and probability drawn
                        (staged, moved in only when the run succeeds)

Every file is written whole at the end (temporary file + rename), ``eval_result.txt`` last and
any old one removed first, so a crash or Ctrl-C never leaves an accuracy that does not match the
other files.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from mnv3.atomic import atomic_write_text
from mnv3.data.annotate import save_annotated
from mnv3.data.datasets import Sample, demo_dir, load_class_names
from mnv3.data.files import escape_name, shown
from mnv3.data.loader import iter_batches
from mnv3.errors import DataError, UsageError
from mnv3.evaluation import format_accuracy, topk_indices
from mnv3.provenance import untrained_note

RESULT_FILES = ("eval_labels.txt", "eval_result_1.txt", "eval_result_5.txt", "results.jsonl",
                "skipped.txt", "infer.json", "eval_result.txt")


@dataclass
class InferResult:
    """What ``infer`` did: counts, accuracy (None when nothing was labelled) and speed."""

    images: int  # asked for (after image_num)
    processed: int  # decoded and predicted
    skipped: int  # could not be decoded (listed in skipped.txt)
    labeled: int  # processed images that had a label
    top1_correct: int | None
    top5_correct: int | None
    top1: float | None
    top5: float | None
    seconds: float  # end to end: decoding, preprocessing, engine, post-processing
    engine_seconds: float  # inside the engine calls only
    images_per_s: float  # end to end
    engine_images_per_s: float  # processed / engine_seconds
    batch_size: int
    workers: int
    output_dir: str
    model: str
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    # set when the model's network has random weights: its accuracy is noise (issue 13)
    untrained: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def infer(model, samples: Sequence[Sample], output_dir: str | os.PathLike, *,
          batch_size: int | None = None, image_num: int | None = None,
          workers: int | None = None, strict: bool = False, save_images: bool = False,
          class_names: list[str] | None = None, progress: bool = True) -> InferResult:
    """Predict every sample with ``model`` (a Session from ``mnv3.load`` or a model folder).

    ``image_num`` keeps the first N samples; ``strict`` makes an undecodable image an error
    instead of a skip; ``class_names`` defaults to the model's, else the bundled ImageNet names
    for a 1000-class model.
    """
    session, owned = _open(model)
    try:
        meta = session.meta
        samples = _select(samples, image_num)
        _check_labels(samples, meta.num_classes)
        names = _display_names(samples)
        class_names = class_names or meta.class_names or _imagenet_names(meta.num_classes)
        bs = int(batch_size or meta.default_batch)
        loader = iter_batches(samples, meta.preprocess, bs, workers=workers, strict=strict)
        label = meta.name if not isinstance(model, (str, os.PathLike)) else str(model)
        out = Path(output_dir)
        created = _make_output_dir(out)
        try:
            return _run(session, loader, samples, names, class_names, out, batch_size=bs,
                        save_images=save_images, progress=progress, label=label,
                        untrained=untrained_note(meta))
        except BaseException:  # an error or Ctrl-C: a folder this run made must not stay behind
            _remove_new_output(out, created)
            raise
    finally:
        if owned:
            session.close()


def _open(model):
    """(Session, whether we opened it and must close it)."""
    from mnv3.backends.base import Session

    if isinstance(model, Session):
        return model, False
    if isinstance(model, (str, os.PathLike)):
        from mnv3.backends import load

        return load(model, spin=False), True  # ORT: no spin-wait, decoding needs the CPU
    raise UsageError(f"model must be a Session (mnv3.load) or a model folder, got {type(model).__name__}")


def _run(session, loader, samples, names, class_names, out: Path, *, batch_size: int,
         save_images: bool, progress: bool, label: str, untrained: str | None) -> InferResult:
    """Predict every batch into ``out`` (which exists) and write the result files."""
    _check_writable(out)  # now, not after decoding every image
    # Annotated copies go to a hidden staging folder and replace images/ only once the run has
    # succeeded: a failed run into an existing folder leaves the earlier copies as they were.
    staging = Path(tempfile.mkdtemp(prefix=".images.partial-", dir=out)) if save_images else None
    try:
        result = _predict_all(session, loader, samples, names, class_names, out, staging,
                              batch_size=batch_size, progress=progress, label=label,
                              untrained=untrained)
        if staging is not None:
            _publish_images(staging, out / "images")
        return result
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _predict_all(session, loader, samples, names, class_names, out: Path, staging: Path | None,
                 *, batch_size: int, progress: bool, label: str,
                 untrained: str | None) -> InferResult:
    """The prediction loop, then the result files; annotated copies go into ``staging``."""
    collect = _Collector(names, class_names, staging)
    engine = 0.0
    bar = _progress(len(samples), progress)
    start = time.perf_counter()
    try:
        for batch in loader:
            t0 = time.perf_counter()
            logits = session.predict(batch.images)
            engine += time.perf_counter() - t0
            collect.add(batch.samples, logits)
            bar.update(collect.count + len(loader.skipped) - bar.n)
        elapsed = time.perf_counter() - start
        collect.finish_images()
    finally:
        bar.close()
        collect.close()  # on error or Ctrl-C: drop queued image saves
    skipped = [(names[s.path], reason) for s, reason in loader.skipped]
    if not collect.count:  # not a run with a few bad files: nothing usable at all
        raise DataError(f"none of the {len(samples)} images could be decoded (first: "
                        f"{skipped[0][1]}); check that the folder holds valid images")
    result = _summary(collect, skipped, len(samples), elapsed, engine, batch_size,
                      loader.workers, out, label)
    result.untrained = untrained
    try:
        _write_files(out, collect, skipped, result)
    except OSError as e:  # disk full or folder removed meanwhile; eval_result.txt is absent
        raise UsageError(f"cannot write the result files in {out} ({e.strerror or e}); "
                         "free space or choose another --output-dir") from None
    return result


def _publish_images(staging: Path, dest: Path) -> None:
    """Move this run's annotated copies into ``dest`` (same filesystem: renames, no copies)."""
    try:
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                target = dest / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    except OSError as e:
        raise UsageError(f"cannot move the annotated images into {dest} ({e.strerror or e}); "
                         "free space or choose another --output-dir") from None


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


def _select(samples: Sequence[Sample], image_num: int | None) -> list[Sample]:
    samples = list(samples)
    if image_num is not None:
        if image_num < 1:
            raise UsageError(f"--image-num must be at least 1, got {image_num}")
        samples = samples[:image_num]
    if not samples:
        raise DataError("no images to run; the dataset is empty")
    return samples


def _check_labels(samples: list[Sample], num_classes: int) -> None:
    bad = next((s for s in samples if s.label is not None
                and not 0 <= s.label < num_classes), None)
    if bad is not None:
        raise DataError(f"{shown(bad.path)} has label {bad.label} but the model has {num_classes} "
                        f"classes (0..{num_classes - 1}); check the label file")


def _display_names(samples: list[Sample]) -> dict[Path, str]:
    """Each image's path relative to the folder all of them share (always inside it: no '..')."""
    root = Path(os.path.commonpath([str(Path(s.path).parent) for s in samples]))
    names = {}
    for s in samples:
        rel = PurePosixPath(Path(s.path).relative_to(root).as_posix())
        names[s.path] = escape_name(str(rel))  # not UTF-8: \xNN escapes (issue 19)
    if len(set(names.values())) != len(names):
        raise DataError("two samples have the same file name; each image must appear once")
    return names


def _imagenet_names(num_classes: int) -> list[str] | None:
    synsets = demo_dir() / "synsets.txt"
    return load_class_names(synsets) if num_classes == 1000 and synsets.is_file() else None


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=not enabled, file=sys.stderr, leave=False,
                dynamic_ncols=True)


class _Collector:
    """Turns logits into result lines as batches arrive; optionally saves annotated copies."""

    def __init__(self, names: dict[Path, str], class_names: list[str] | None,
                 image_dir: Path | None):
        self.names, self.class_names = names, class_names
        self.labels: list[str] = []
        self.top1: list[str] = []
        self.top5: list[str] = []
        self.jsonl: list[str] = []
        self.correct1 = self.correct5 = self.labeled = self.count = 0
        self.image_dir = image_dir
        self._saver = ThreadPoolExecutor(1, thread_name_prefix="mnv3-save") if image_dir else None
        self._saves = []

    def add(self, samples: list[Sample], logits: np.ndarray) -> None:
        logits = np.asarray(logits, dtype=np.float64)
        top = topk_indices(logits, 5)
        probs = _softmax(logits)
        for i, s in enumerate(samples):
            name, idx = self.names[s.path], [int(v) for v in top[i]]
            p = [float(probs[i, j]) for j in idx]
            self.top1.append(f"{name} {idx[0]}")
            self.top5.extend(f"{name} {j}" for j in idx)
            if s.label is not None:
                self.labeled += 1
                self.labels.append(f"{name} {s.label}")
                self.correct1 += idx[0] == s.label
                self.correct5 += s.label in idx
            self.jsonl.append(json.dumps({
                "file": name, "label": s.label, "top5": idx,
                "names": [self._class_name(j) for j in idx], "probs": [round(v, 6) for v in p],
            }))
            if self._saver:
                dest = self.image_dir / name
                if not dest.resolve().is_relative_to(self.image_dir.resolve()):
                    raise DataError(f"refusing to write {dest}: outside the output folder")
                self._saves.append(self._saver.submit(
                    save_annotated, s.path, dest,
                    f"{self._class_name(idx[0])} {p[0]:.1%}"))
        self.count += len(samples)

    def _class_name(self, idx: int) -> str:
        if self.class_names and idx < len(self.class_names):
            return self.class_names[idx]
        return str(idx)

    def finish_images(self) -> None:
        if self._saver:
            self._saver.shutdown(wait=True)
            for f in self._saves:
                f.result()  # re-raise a failed save here, not silently

    def close(self) -> None:
        if self._saver:
            self._saver.shutdown(wait=True, cancel_futures=True)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _summary(c: _Collector, skipped, images: int, elapsed: float, engine: float, bs: int,
             workers: int, out: Path, model: str) -> InferResult:
    lab = c.labeled
    return InferResult(
        images=images, processed=c.count, skipped=len(skipped), labeled=lab,
        top1_correct=c.correct1 if lab else None, top5_correct=c.correct5 if lab else None,
        top1=c.correct1 / lab if lab else None, top5=c.correct5 / lab if lab else None,
        seconds=elapsed, engine_seconds=engine,
        images_per_s=c.count / elapsed if elapsed > 0 else 0.0,
        engine_images_per_s=c.count / engine if engine > 0 else 0.0,
        batch_size=bs, workers=workers, output_dir=str(out), model=model,
        skipped_files=skipped,
    )


def _write_files(out: Path, c: _Collector, skipped, result: InferResult) -> None:
    """All result files, each atomically; eval_result.txt removed first and written last."""
    (out / "eval_result.txt").unlink(missing_ok=True)
    (out / "skipped.txt").unlink(missing_ok=True)

    def text(lines):
        return "".join(line + "\n" for line in lines)

    if c.labeled:
        atomic_write_text(out / "eval_labels.txt", text(c.labels))
    else:
        (out / "eval_labels.txt").unlink(missing_ok=True)
    atomic_write_text(out / "eval_result_1.txt", text(c.top1))
    atomic_write_text(out / "eval_result_5.txt", text(c.top5))
    atomic_write_text(out / "results.jsonl", text(c.jsonl))
    if skipped:
        atomic_write_text(out / "skipped.txt", text(f"{n}\t{r}" for n, r in skipped))
    atomic_write_text(out / "infer.json", json.dumps(result.to_dict(), indent=2) + "\n")
    if result.top1 is not None:
        atomic_write_text(out / "eval_result.txt", format_accuracy(result.top1, result.top5))
