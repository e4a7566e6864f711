"""Threaded loader: order, batching, bounded prefetch, skipping and --strict."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest

import mnv3.data.loader as loader_mod
from mnv3.data.datasets import Sample, demo_dataset
from mnv3.data.files import shown
from mnv3.data.loader import iter_batches
from mnv3.data.preprocess import preprocess_image
from mnv3.errors import DataError, UsageError
from mnv3.meta import PreprocessCfg

CFG = PreprocessCfg(resize=40, crop=32)  # small crop keeps the tests fast


@pytest.fixture(scope="module")
def demo():
    return demo_dataset()[:10]


def test_batches_in_order_and_equal_to_single_images(demo):
    loader = iter_batches(demo, CFG, batch_size=4, workers=3)
    batches = list(loader)
    assert [len(b.samples) for b in batches] == [4, 4, 2]
    assert [s for b in batches for s in b.samples] == demo
    images = np.concatenate([b.images for b in batches])
    assert images.dtype == np.float32 and images.shape == (10, 3, 32, 32)
    expected = np.stack([preprocess_image(s.path, CFG) for s in demo])
    np.testing.assert_array_equal(images, expected)
    assert loader.skipped == []


def test_order_is_deterministic_whatever_finishes_first(demo, monkeypatch):
    """Later images finishing first must not reorder the output."""
    real = loader_mod.decode_bytes

    def slow_first(data, name):
        if name == shown(demo[0].path):
            time.sleep(0.2)
        return real(data, name)

    monkeypatch.setattr(loader_mod, "decode_bytes", slow_first)
    got = [s for b in iter_batches(demo, CFG, 3, workers=4) for s in b.samples]
    assert got == demo


def test_bad_images_are_skipped_and_batches_stay_full(demo, tmp_path):
    bad = []
    for name, data in (("zero.JPEG", b""), ("text.JPEG", b"hello, I am not a JPEG\n")):
        (tmp_path / name).write_bytes(data)
        bad.append(Sample(tmp_path / name, 1))
    samples = [demo[0], bad[0], demo[1], demo[2], bad[1], demo[3]]
    loader = iter_batches(samples, CFG, batch_size=2, workers=2)
    batches = list(loader)
    assert [len(b.samples) for b in batches] == [2, 2]
    assert [s for b in batches for s in b.samples] == [demo[0], demo[1], demo[2], demo[3]]
    assert [s for s, _ in loader.skipped] == bad
    assert all("cannot decode" in reason for _, reason in loader.skipped)


def test_strict_raises_on_first_bad_image(demo, tmp_path):
    (tmp_path / "zero.JPEG").write_bytes(b"")
    samples = [demo[0], Sample(tmp_path / "zero.JPEG", 0), demo[1]]
    with pytest.raises(DataError, match="zero.JPEG.*--strict"):
        list(iter_batches(samples, CFG, 2, strict=True))


def test_prefetch_bounds_images_in_flight(demo, monkeypatch):
    started, lock = [], threading.Lock()
    real = loader_mod.decode_bytes

    def counting(data, name):
        with lock:
            started.append(name)
        return real(data, name)

    monkeypatch.setattr(loader_mod, "decode_bytes", counting)
    from mnv3.data import files

    reads, real_read = [], files._read_file
    monkeypatch.setattr(files, "_read_file", lambda path, *a: reads.append(path) or
                        real_read(path, *a))
    it = iter(iter_batches(demo, CFG, batch_size=1, workers=2, prefetch=3))
    next(it)
    time.sleep(0.2)  # give the threads every chance to run ahead
    assert len(started) <= 1 + 3  # the one consumed plus at most `prefetch` in flight
    assert len(reads) <= 1 + 3  # files are read ahead as far, no further
    it.close()


def _decode_threads() -> int:
    """Threads but the reader threads of mnv3.data.deadline (long-lived by design, reused)."""
    return sum(not t.name.startswith("mnv3-read") for t in threading.enumerate())


def test_early_stop_shuts_the_pool_down(demo):
    before = _decode_threads()
    for _ in iter_batches(demo * 3, CFG, batch_size=2, workers=3):
        break
    time.sleep(0.05)
    assert _decode_threads() <= before


def test_files_are_read_ahead_on_the_reader_threads(demo, monkeypatch):
    """Each file's read is started when its decode is queued (read ahead, on the deadline's
    reader threads), so a decode thread finds its bytes read; the images are the same."""
    from mnv3.data import files

    readers, real = set(), files._read_file

    def read(path, *args):
        readers.add(threading.current_thread().name)
        return real(path, *args)

    monkeypatch.setattr(files, "_read_file", read)
    monkeypatch.delenv("MNV3_READ_TIMEOUT", raising=False)
    images = np.concatenate([b.images for b in iter_batches(demo, CFG, 4, workers=2)])
    assert readers and all(name.startswith("mnv3-read") for name in readers)
    np.testing.assert_array_equal(images, np.stack([preprocess_image(s.path, CFG)
                                                    for s in demo]))


def test_bad_arguments(demo):
    with pytest.raises(UsageError):
        iter_batches(demo, CFG, batch_size=0)
    with pytest.raises(UsageError):
        iter_batches(demo, CFG, batch_size=2, workers=0)
    with pytest.raises(UsageError):
        iter_batches(demo, CFG, batch_size=2, prefetch=0)


def test_missing_file_is_skipped(demo, tmp_path):
    shutil.copy(demo[0].path, tmp_path / "x.JPEG")
    samples = [Sample(tmp_path / "x.JPEG", 0), Sample(tmp_path / "gone.JPEG", 0)]
    loader = iter_batches(samples, CFG, 4)
    assert sum(len(b.samples) for b in loader) == 1
    assert "does not exist" in loader.skipped[0][1]


# ------------------------------------------------ malloc arenas of the decode threads (issue 19)
def test_loader_trims_malloc_every_trim_every_images(demo, monkeypatch):
    """The loader hands the decode threads' freed memory back every TRIM_EVERY images
    (mnv3.data.heap); counted, not timed: the figures are benchmarks/decode_memory.py's."""
    from mnv3.data import heap

    calls = []
    monkeypatch.setattr(loader_mod, "TRIM_EVERY", 3)
    monkeypatch.setattr(heap, "malloc_trim", lambda: calls.append(1) or True)
    monkeypatch.setattr(heap, "glibc", lambda: object())
    assert sum(len(b.samples) for b in iter_batches(demo, CFG, 4, workers=2)) == 10
    assert len(calls) == 3  # after images 3, 6 and 9
    monkeypatch.setattr(loader_mod, "TRIM_EVERY", 0)
    list(iter_batches(demo, CFG, 4, workers=2))
    assert len(calls) == 3


def test_infer_trims_through_the_loader(demo, tmp_path, monkeypatch):
    """mnv3 infer decodes through the loader, so every infer run trims."""
    from conftest import FakeSession, fake_meta
    from mnv3.data import heap
    from mnv3.inference import infer

    calls = []
    monkeypatch.setattr(loader_mod, "TRIM_EVERY", 4)
    monkeypatch.setattr(heap, "malloc_trim", lambda: calls.append(1) or True)
    monkeypatch.setattr(heap, "glibc", lambda: object())
    result = infer(FakeSession(fake_meta(batch=4)), demo, tmp_path, progress=False)
    assert result.processed == 10 and len(calls) == 2


def test_heap_guard_off_glibc(monkeypatch):
    """Where the C library is not glibc (musl, macOS), the malloc calls do nothing."""
    import platform

    from mnv3.data import heap

    heap.glibc.cache_clear()
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("musl", "1.2"))
    try:
        assert heap.glibc() is None
        assert heap.malloc_trim() is False
        assert heap.mallopt(heap.M_ARENA_MAX, 2) is False
    finally:
        heap.glibc.cache_clear()


def test_heap_on_glibc():
    import platform

    from mnv3.data import heap

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert heap.glibc() is not None
    heap.malloc_trim()  # runs; whether it freed anything depends on the heap
