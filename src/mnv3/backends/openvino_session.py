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
    """

    def __init__(self, meta: ModelMeta, compiled, threads, streams, cache_dir: str | None):
        super().__init__(meta)
        self.compiled = compiled
        self.threads = threads
        self.streams = streams
        self.cache_dir = cache_dir
        self.loaded_from_cache = bool(compiled.get_property("LOADED_FROM_CACHE"))
        # idle (request, the array its input points at, or None)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        per_stream = int(compiled.get_property("INFERENCE_NUM_THREADS")) // max(
            1, int(compiled.get_property("NUM_STREAMS")))
        self._async = per_stream > 1
        n = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        for _ in range(max(1, n)):
            self._free.put((compiled.create_infer_request(), None))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            request, bound = self._free.get_nowait()
        except queue.Empty:
            request, bound = self.compiled.create_infer_request(), None
        try:
            if bound is not batch:
                # A caller that refills one array (mnv3 bench, a camera loop) binds it once,
                # as benchmark_app fills its requests once: no new tensor and re-binding per
                # call. Holding the array keeps its address from being reused by another
                # array; in-place writes are seen, as the tensor shares its memory.
                request.set_input_tensor(ov.Tensor(batch, shared_memory=True))
                bound = batch
            if self._async:  # the stream's own threads run it (see the class docstring)
                request.start_async()
                request.wait()
            else:
                request.infer()
            return request.get_output_tensor().data.copy()
        finally:
            self._free.put((request, bound))

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
