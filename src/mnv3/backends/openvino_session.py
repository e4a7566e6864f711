"""A compiled OpenVINO model at run time: its infer-request pool, compile settings, blob cache.

Imported by ``OpenVinoBackend.open`` only (it needs the engine installed).
"""

from __future__ import annotations

import os
import queue
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from mnv3.backends.base import Session
from mnv3.meta import ModelMeta

CACHE_DIR_NAME = ".ov_cache"


class OpenVinoSession(Session):
    """A compiled OpenVINO model with a pool of infer requests.

    ``_run`` takes a free request (creating one when every request is busy, so S threads end up
    with S requests), points its input at the caller's array (no copy; skipped when the request
    already points at that very array), runs it (OpenVINO
    releases the GIL) and copies the logits out before returning the request.

    How it runs was measured (MobileNetV3-Large, 2 vCPUs, interleaved): with several threads
    per stream, ``infer()`` on the calling Python thread was 1.4-3x slower than handing the
    request to the stream's own pinned threads (``start_async(); wait()``, what benchmark_app
    does); with one thread per stream the synchronous call was as fast or faster.

    ``split=S``: a call takes S requests, one per stream, starts each on its share of the
    batch and waits for all; the logits are those of the whole batch, in order.
    """

    def __init__(self, meta: ModelMeta, compiled, threads, streams, cache_dir: str | None,
                 split: int = 1):
        super().__init__(meta)
        self.compiled = compiled
        self.threads = threads
        self.streams = streams
        self.split = split
        self.cache_dir = cache_dir
        self.loaded_from_cache = bool(compiled.get_property("LOADED_FROM_CACHE"))
        # idle (its S requests, the array their inputs point at or None)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        per_stream = int(compiled.get_property("INFERENCE_NUM_THREADS")) // max(
            1, int(compiled.get_property("NUM_STREAMS")))
        self._async = per_stream > 1 or split > 1
        n = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) // split
        for _ in range(max(1, n)):
            self._free.put((self._new_group(), None))

    def _new_group(self) -> list:
        return [self.compiled.create_infer_request() for _ in range(self.split)]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            group, bound = self._free.get_nowait()
        except queue.Empty:
            group, bound = self._new_group(), None
        # a shape-mutable model may get fewer images than parts: one part per image then
        requests = group[:min(len(group), batch.shape[0])]
        try:
            if bound is not batch:
                # A caller that refills one array (mnv3 bench, a camera loop) binds it once,
                # as benchmark_app fills its requests once: no new tensor and re-binding per
                # call. Holding the array keeps its address from being reused by another
                # array; in-place writes are seen, as the tensors share its memory.
                parts = np.array_split(batch, len(requests))  # views: rows are contiguous
                for request, part in zip(requests, parts):
                    request.set_input_tensor(ov.Tensor(part, shared_memory=True))
                bound = batch
            if self._async:  # the streams' own threads run them (see the class docstring)
                for request in requests:
                    request.start_async()
                for request in requests:
                    request.wait()
            else:
                requests[0].infer()
            if len(requests) == 1:
                return requests[0].get_output_tensor().data.copy()
            return np.concatenate([r.get_output_tensor().data for r in requests])
        finally:
            self._free.put((group, bound))

    def config(self) -> dict[str, str]:
        """The settings OpenVINO actually chose (hint, streams, threads, precision)."""
        keys = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS",
                "INFERENCE_PRECISION_HINT", "OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        return {k: str(self.compiled.get_property(k)) for k in keys}

    def close(self) -> None:
        self._free = queue.SimpleQueue()
        self.compiled = None


def compile_config(meta: ModelMeta, precision: str, threads, streams, hint) -> dict[str, Any]:
    if hint is None:
        hint = "latency" if int(meta.batch_size) == 1 else "throughput"
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint.upper(),
                              "INFERENCE_PRECISION_HINT": precision}
    # Session.run is synchronous: one caller keeps one stream busy, and the throughput hint's
    # own choice (one stream per core) would leave a lone caller on one core. Concurrent
    # callers (mnv3 bench --streams S) say so with streams=S.
    config["NUM_STREAMS"] = int(streams or 1)
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads) * int(streams or 1)
    return config


def cache_dir(model_dir: Path, requested) -> str | None:
    """Where compiled blobs are cached: ``requested``, else ``<model_dir>/.ov_cache``, else the
    user cache (read-only model directories); "" disables caching. OpenVINO keys each blob by
    model, device and settings, so one folder serves every configuration safely."""
    if requested == "" or requested is False:
        return None
    if not requested and model_dir.name.startswith("."):
        # mnv3.build's temporary directory (".<name>.tmp-*", opened to measure fidelity):
        # OpenVINO keys blobs by the model's path, so they would be orphaned by the rename.
        return None
    candidates = [Path(requested)] if requested else [
        model_dir / CACHE_DIR_NAME,
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnv3" / "openvino"]
    for path in candidates:
        try:
            path.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=path).close()  # writable?
            return str(path)
        except OSError:
            continue
    return None
