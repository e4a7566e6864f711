"""Threaded decoding with a bounded prefetch queue, yielding preprocessed batches in order.

Pillow releases the GIL while it decodes and resizes, so a few threads decode images in parallel
while the caller runs the model on the previous batch: decoding overlaps inference. At most
``prefetch`` images are decoded ahead (memory stays bounded however large the dataset), and
batches come out in the order of ``samples`` whatever order the threads finish in.

Images that cannot be decoded are skipped and recorded in ``loader.skipped`` (or, with
``strict=True``, raise DataError at once); batches are filled with the next good images, so every
batch but the last is full.

    loader = iter_batches(samples, meta.preprocess, batch_size=8)
    for batch in loader:
        logits = session.predict(batch.images)     # batch.samples: the Sample of each row
    print(loader.skipped)                            # [(Sample, reason), ...]
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np

from mnv3.data import heap, native_decode
from mnv3.data.datasets import Sample
from mnv3.data.fast_decode import check_decode, preprocess_fast_bytes
from mnv3.data.files import shown, start_read
from mnv3.data.preprocess import decode_bytes, preprocess_image
from mnv3.errors import DataError, UsageError
from mnv3.meta import PreprocessCfg


# Hand the decode threads' freed memory back to the system every TRIM_EVERY images (glibc only;
# mnv3.data.heap says why; 0: never, as benchmarks/decode_memory.py measures without it).
TRIM_EVERY = 1000


class Batch(NamedTuple):
    """float32 images [n, 3, crop, crop] and the Sample of each row (unpacks as a pair)."""

    images: np.ndarray
    samples: list[Sample]


def default_workers() -> int:
    """Decode threads when not given: one per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class BatchLoader:
    """Iterable of ``Batch``; ``skipped`` lists ``(Sample, reason)`` for undecodable images."""

    def __init__(self, samples: Sequence[Sample], cfg: PreprocessCfg, batch_size: int,
                 workers: int | None = None, strict: bool = False, prefetch: int | None = None,
                 decode: str = "exact"):
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        self.samples = list(samples)
        self.cfg = cfg
        self.batch_size = int(batch_size)
        self.workers = default_workers() if workers is None else int(workers)
        if self.workers < 1:
            raise UsageError(f"workers must be at least 1, got {workers}")
        # Enough in flight to keep every thread busy and one batch ready ahead of the model.
        self.prefetch = (max(2 * self.batch_size, 4 * self.workers) if prefetch is None
                         else int(prefetch))
        if self.prefetch < 1:
            raise UsageError(f"prefetch must be at least 1, got {prefetch}")
        self.strict = strict
        self.decode = check_decode(decode)  # "fast": mnv3.data.fast_decode, other pixels
        if decode == "native":  # the C++ decoder, loaded and checked before any image is read
            native_decode.decoder(cfg)
        self.skipped: list[tuple[Sample, str]] = []

    def __len__(self) -> int:
        """Upper bound on the number of batches (exact when nothing is skipped)."""
        return -(-len(self.samples) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        self.skipped = []
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mnv3-decode")
        pending: deque[tuple[Sample, Future]] = deque()
        todo = iter(self.samples)
        trim_at = TRIM_EVERY if TRIM_EVERY > 0 and heap.glibc() else None
        try:
            images: list[np.ndarray] = []
            done: list[Sample] = []
            while True:
                for sample in todo:  # top the queue up to `prefetch` images in flight
                    # its read starts now (read ahead, with the deadline), its decode in turn
                    read = start_read(sample.path, "image")
                    pending.append((sample, pool.submit(self._decode, sample, read)))
                    if len(pending) >= self.prefetch:
                        break
                if not pending:
                    break
                sample, future = pending.popleft()
                try:
                    images.append(future.result())
                    done.append(sample)
                except DataError as e:
                    if self.strict:
                        raise DataError(f"{e} (--strict: stopping at the first bad image; drop "
                                        "--strict to skip bad images)") from None
                    self.skipped.append((sample, str(e)))
                if len(images) == self.batch_size:
                    yield Batch(np.stack(images), done)
                    images, done = [], []
                if trim_at is not None:
                    trim_at -= 1
                    if trim_at == 0:  # between images: the threads' freed pages go back
                        heap.malloc_trim()
                        trim_at = TRIM_EVERY
            if images:
                yield Batch(np.stack(images), done)
        finally:
            # On break, error or Ctrl-C: drop queued work, let running decodes finish (ms).
            pool.shutdown(wait=True, cancel_futures=True)

    def _decode(self, sample: Sample, read: Callable[[], bytes]) -> np.ndarray:
        # read(): the bytes, with the checks and errors of a path given to preprocess_image
        return preprocess_bytes(read(), shown(sample.path), self.cfg, self.decode)


def preprocess_bytes(data: bytes, name: str, cfg: PreprocessCfg, decode: str = "exact",
                     out: np.ndarray | None = None) -> np.ndarray:
    """An image file's bytes -> float32 [3, crop, crop] the ``decode`` way (exact, fast or
    native, which ``native_decode.decoder(cfg)`` must have checked); ``name`` is the file in
    errors, ``out`` as ``preprocess_image``'s (not for fast)."""
    if decode == "native":
        return native_decode.decoder(cfg).bytes(data, name, out)
    if decode == "fast":
        return preprocess_fast_bytes(data, cfg, name)
    return preprocess_image(decode_bytes(data, name), cfg, out=out)


def iter_batches(samples: Sequence[Sample], cfg: PreprocessCfg, batch_size: int,
                 workers: int | None = None, strict: bool = False,
                 prefetch: int | None = None, decode: str = "exact") -> BatchLoader:
    """Preprocessed batches of ``samples`` in order, decoded on ``workers`` threads.

    ``prefetch`` bounds how many images are decoded ahead (default: the larger of two batches
    and four per thread); ``decode="fast"`` takes ``mnv3.data.fast_decode``'s path,
    ``"native"`` ``mnv3.data.native_decode``'s (the same pixels as the default). Returns a
    ``BatchLoader``: iterate it, then read ``.skipped``.
    """
    return BatchLoader(samples, cfg, batch_size, workers=workers, strict=strict,
                       prefetch=prefetch, decode=decode)
