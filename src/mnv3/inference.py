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

The per-image lines are streamed to hidden temporary files in ``output_dir`` as batches arrive
(memory does not grow with the number of images) and every file appears whole at the end
(rename), ``eval_result.txt`` last and any old one removed first, so a crash or Ctrl-C never
leaves an accuracy that does not match the other files (``mnv3.results``). ``engine="ray"``
runs the same over a Ray cluster (``mnv3.ray_engine``) and writes the same files.
"""

from __future__ import annotations

import collections
import itertools
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

from mnv3.data.datasets import Sample, demo_dir, load_class_names
from mnv3.data.files import escape_name, shown
from mnv3.data.fast_decode import check_decode, tuned_decode
from mnv3.data.loader import iter_batches
from mnv3.errors import DataError, UsageError
from mnv3.provenance import untrained_note
from mnv3.results import RESULT_FILES, AnnotatedCopies, ResultWriter, output_folder  # noqa: F401


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
    engine: str = "python"  # or "cpp", "ray" (there workers counts model actors, not threads)
    decode: str = "exact"  # "fast" (fast_decode: other pixels, measured top-1), "native"
    # --shard K/N: which slice of which image list this run took (mnv3.shards.take_shard)
    shard: dict | None = None
    # mnv3 merge: the shards merged (their folders, slices and speeds); seconds above are summed
    shards: list | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def infer(model, samples: Sequence[Sample], output_dir: str | os.PathLike, *,
          batch_size: int | None = None, image_num: int | None = None,
          workers: int | None = None, strict: bool = False, save_images: bool = False,
          class_names: list[str] | None = None, progress: bool = True,
          engine: str = "python", address: str | None = None,
          threads_per_worker: int | None = None, decode: str | None = None,
          shard=None) -> InferResult:
    """Predict every sample with ``model`` (a Session from ``mnv3.load`` or a model folder).

    ``image_num`` keeps the first N samples; ``strict`` makes an undecodable image an error
    instead of a skip; ``class_names`` defaults to the model's, else the bundled ImageNet names
    for a 1000-class model. ``engine="ray"`` runs on a Ray cluster (``address``: "local", the
    default, starts one on this machine; "auto" or host:port joins one): ``model`` must then be
    a model folder, ``workers`` is the number of model actors and ``threads_per_worker`` their
    engine threads (``mnv3.ray_engine``). ``decode="fast"`` decodes by
    ``mnv3.data.fast_decode`` (other pixels), ``"native"`` by ``mnv3.data.native_decode`` (the
    exact pixels in C++; ``mnv3 build-cpp`` builds it; python and ray engines), recorded in
    infer.json. The default is what ``mnv3 tune`` chose for the model
    (``fast_decode.tuned_decode``), else ``exact``.
    ``shard="K/N"`` runs only the K-th of N contiguous slices of the images, named as in the
    whole run, for ``mnv3.shards.merge`` to join with the others (``mnv3.shards``).
    """
    if decode is not None:
        check_decode(decode, engine)
    if engine == "ray":
        from mnv3.ray_engine import infer_ray

        return infer_ray(model, samples, output_dir, batch_size=batch_size, image_num=image_num,
                         workers=workers, strict=strict, save_images=save_images,
                         class_names=class_names, progress=progress, address=address,
                         threads_per_worker=threads_per_worker, shard=shard,
                         decode=decode or "exact")
    if engine != "python":
        raise UsageError(f"engine must be 'python' or 'ray', got {shown(engine)}")
    session, owned = _open(model)
    try:
        meta = session.meta
        samples, names, record = select_samples(samples, image_num, meta, shard)
        bs = int(batch_size or meta.default_batch)
        decode = decode or tuned_decode(meta)
        loader = iter_batches(samples, meta.preprocess, bs, workers=workers, strict=strict,
                              decode=decode)
        label = meta.name if not isinstance(model, (str, os.PathLike)) else str(model)
        return write_predictions(_LocalPredictions(session, loader), samples, meta, output_dir,
                                 class_names=class_names, batch_size=bs,
                                 save_images=save_images, progress=progress, label=label,
                                 decode=decode, names=names, shard=record)
    finally:
        if owned:
            session.close()


class _LocalPredictions:
    """(samples, logits, engine seconds) per batch from ``loader`` through ``session``, with
    ``session.in_flight`` batches in the engine at once (what ``mnv3 tune`` measured fastest;
    1 unless tuned), in sample order. Engine seconds count the time at least one batch was in
    the engine, so overlapping calls are not counted twice."""

    def __init__(self, session, loader):
        self.session, self.loader, self.workers = session, loader, loader.workers
        self._lock = threading.Lock()
        self._active, self._since, self._busy = 0, 0.0, 0.0

    @property
    def skipped(self) -> list[tuple[Sample, str]]:
        return self.loader.skipped

    def __iter__(self):
        depth = max(1, int(getattr(self.session, "in_flight", 1)))
        if depth == 1:
            for batch in self.loader:
                t0 = time.perf_counter()
                logits = self.session.predict(batch.images)
                yield batch.samples, logits, time.perf_counter() - t0
            return
        with ThreadPoolExecutor(depth, thread_name_prefix="mnv3-request") as pool:
            pending: collections.deque = collections.deque()
            counted = 0.0
            # None marks the end: drain what is in flight (the loader stays a stream)
            for batch in itertools.chain(self.loader, [None]):
                if batch is not None:
                    pending.append((batch.samples, pool.submit(self._predict, batch.images)))
                while pending and (batch is None or len(pending) == depth):
                    samples, future = pending.popleft()
                    logits = future.result()
                    yield samples, logits, self._busy - counted
                    counted = self._busy

    def _predict(self, images):
        with self._lock:
            if self._active == 0:
                self._since = time.perf_counter()
            self._active += 1
        try:
            return self.session.predict(images)
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self._busy += time.perf_counter() - self._since


def select_samples(samples: Sequence[Sample], image_num: int | None, meta, shard
                   ) -> tuple[list[Sample], dict, dict | None]:
    """(the samples to run, every sample's display name, the shard record or None): the first
    ``image_num``, labels checked, then the shard's slice, named as the whole list names them."""
    from mnv3.shards import take_shard

    samples = _select(samples, image_num)
    _check_labels(samples, meta.num_classes)
    names = _display_names(samples)
    samples, record = take_shard(samples, names, shard, meta)
    return samples, names, record


def write_predictions(predictions, samples: list[Sample], meta, output_dir, *,
                      class_names: list[str] | None, batch_size: int, save_images: bool,
                      progress: bool, label: str, engine: str = "python",
                      decode: str = "exact", names: dict | None = None,
                      shard: dict | None = None) -> InferResult:
    """Drive ``predictions`` (iterable of ``(samples, logits, engine_seconds)`` in sample order,
    with ``.skipped`` and ``.workers``) into the result files of ``output_dir``: the one driver
    loop of every engine, so all write the same files the same way. ``names``: the display
    names (default: computed from ``samples``); ``shard``: infer.json's shard record."""
    names = names or _display_names(samples)
    class_names = class_names or meta.class_names or _imagenet_names(meta.num_classes)
    out = Path(output_dir)
    with output_folder(out):
        writer = ResultWriter(out, names, class_names)
        copies = AnnotatedCopies(out) if save_images else None
        try:
            result = _predict_all(predictions, writer, copies, len(samples), names, out,
                                  batch_size=batch_size, progress=progress, label=label)
            result.untrained, result.engine = untrained_note(meta), engine
            result.decode, result.shard = decode, shard
            writer.commit(result.skipped_files, result.to_dict(), result.top1, result.top5)
            if copies is not None:
                copies.publish()
            return result
        finally:
            writer.discard()
            if copies is not None:
                copies.close()


def _open(model):
    """(Session, whether we opened it and must close it)."""
    from mnv3.backends.base import Session

    if isinstance(model, Session):
        return model, False
    if isinstance(model, (str, os.PathLike)):
        return open_for_infer(model), True
    raise UsageError(f"model must be a Session (mnv3.load) or a model folder, got {type(model).__name__}")


# A model folder run over images with no settings given and none tuned: this many batches in
# the engine at once, each on cores / UNTUNED_IN_FLIGHT engine threads. The decode threads
# share the cores; one that preempts a thread of a multi-thread call stalls the whole call,
# while single-thread streams go on (`python benchmarks/infer_speed.py --splits 1x2 --no-spin
# --rounds 7 --images 400`, MobileNetV3-Large force_float32 batch 8, 2 cores, AVX2: end to end
# 108.0 images/s with 2 batches of 1 thread each against 97.2 with one 2-thread batch at a time;
# measured on 2 cores only).
UNTUNED_IN_FLIGHT = 2


def open_for_infer(model_dir, threads: int | None = None):
    """Load a model folder to run over images beside the decode threads: no spin-waiting
    engine threads (ORT), and ``threads`` if given, else what ``mnv3 tune`` recorded, else
    ``UNTUNED_IN_FLIGHT`` batches in flight sharing the usable cores."""
    from mnv3.backends import load
    from mnv3.data.loader import default_workers
    from mnv3.meta import read_meta

    cores = default_workers()  # the CPUs this process may use
    if threads is None and cores >= UNTUNED_IN_FLIGHT and not read_meta(model_dir).tuned:
        return load(model_dir, threads=cores // UNTUNED_IN_FLIGHT, streams=UNTUNED_IN_FLIGHT,
                    spin=False)
    return load(model_dir, threads=threads, spin=False)


def _predict_all(predictions, writer: ResultWriter, copies: AnnotatedCopies | None, total: int,
                 names, out: Path, *, batch_size: int, progress: bool,
                 label: str) -> InferResult:
    """The prediction loop: result lines streamed by ``writer``, annotated copies queued."""
    engine = 0.0
    bar = _progress(total, progress)
    start = time.perf_counter()
    try:
        for batch_samples, logits, seconds in predictions:
            engine += seconds
            firsts = writer.add(batch_samples, logits)
            if copies is not None:
                for s, (name, idx, p) in zip(batch_samples, firsts):
                    copies.add(s, name, f"{writer.class_name(idx)} {p:.1%}")
            bar.update(writer.count + len(predictions.skipped) - bar.n)
        elapsed = time.perf_counter() - start
        if copies is not None:
            copies.finish()
    finally:
        bar.close()
    skipped = [(names[s.path], reason) for s, reason in predictions.skipped]
    if not writer.count:  # not a run with a few bad files: nothing usable at all
        raise DataError(f"none of the {total} images could be decoded (first: "
                        f"{skipped[0][1]}); check that the folder holds valid images")
    return _summary(writer, skipped, total, elapsed, engine, batch_size, predictions.workers,
                    out, label)


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


def _summary(c: ResultWriter, skipped, images: int, elapsed: float, engine: float, bs: int,
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
