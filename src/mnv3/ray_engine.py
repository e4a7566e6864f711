"""``mnv3 infer --engine ray``: batch inference over a Ray cluster, the same files (issue 18).

    mnv3.infer("data/models/force_float32_false_8", samples, "out/", engine="ray", workers=2)

The driver (this process) hands Ray Data the image list only (index and path per image, never
the pixels); map tasks decode and preprocess (``mnv3.data.preprocess``, as locally); a pool of
``workers`` actors runs the model, each loading the model folder once through ``mnv3.load``
(so the sha256 check of meta.json holds there too). The logits stream back to the driver in
image order (Ray Data's ``preserve_order``) and go through the same writer as the local path
(``mnv3.inference.write_predictions``): the same files, byte for byte, published atomically.

The model folder is shipped to the actors through Ray's object store (its regular files, read
once on the driver after the driver's own sha256-checked load), so the workers need not see the
driver's disk for it: an actor writes the files to a private temporary folder and loads that.
The images are read where the map tasks run, so they must be on a path every node can read
(shared storage); an image a worker cannot open is skipped and listed like any unreadable image.

Failures: an actor whose process dies is restarted by Ray and its batch retried (Ray Data's
actor pool default), so the results stay complete and identical; an undecodable image is
skipped and listed in skipped.txt exactly as locally (``strict`` stops at it); an error or
Ctrl-C leaves no partial result files (``mnv3.results``); an address that cannot be reached is
a one-line UsageError naming it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mnv3.data.files import clip, quote
from mnv3.errors import BackendUnavailable, DataError, UsageError

RAY_HINT = 'pip install "mnv3[ray]"'
CONNECT_TIMEOUT_S = 5.0


def infer_ray(model, samples, output_dir, *, batch_size: int | None = None,
              image_num: int | None = None, workers: int | None = None, strict: bool = False,
              save_images: bool = False, class_names: list[str] | None = None,
              progress: bool = False, address: str | None = None,
              threads_per_worker: int | None = None, shard=None, decode: str = "exact"):
    """``mnv3.infer(..., engine="ray")``: see the module docstring. Returns an InferResult.

    ``decode="native"``: the decode tasks use ``mnv3.data.native_decode`` (checked here, on
    the driver, first); a worker on another machine without the library decodes the exact
    way, which gives the same pixels."""
    from mnv3.backends import load
    from mnv3.inference import select_samples, write_predictions

    if not isinstance(model, (str, os.PathLike)):
        raise UsageError("engine='ray' needs the model folder (its actors load it), not a "
                         "loaded Session")
    workers, threads = _positive(workers, "--workers", 2), _positive(
        threads_per_worker, "--threads-per-worker", 1)
    model_dir = Path(model)
    with load(model_dir, threads=1) as session:  # the driver's check: a clear error, early
        meta = session.meta
    if decode == "native":
        from mnv3.data.native_decode import decoder

        decoder(meta.preprocess)  # not built / other pixels: the clear error, before the cluster
    samples, names, record = select_samples(samples, image_num, meta, shard)
    bs = int(batch_size or meta.default_batch)
    with ray_cluster(address, cpus_needed=workers * threads) as ray:
        predictions = RayPredictions(ray, samples, meta, _pack_model(model_dir), batch_size=bs,
                                     workers=workers, threads=threads, strict=strict,
                                     decode=decode)
        return write_predictions(predictions, samples, meta, output_dir,
                                 class_names=class_names, batch_size=bs,
                                 save_images=save_images, progress=progress,
                                 label=str(model_dir), engine="ray", names=names,
                                 shard=record, decode=decode)


def _positive(value: int | None, flag: str, default: int) -> int:
    if value is None:
        return default
    if value < 1:
        raise UsageError(f"{flag} must be at least 1, got {value}")
    return int(value)


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is the 'data' extra of ray)
    except ImportError as e:
        raise BackendUnavailable(f"--engine ray needs Ray with Ray Data ({e.name or e} is not "
                                 f"installed); {RAY_HINT}") from None
    return ray


@contextmanager
def ray_cluster(address: str | None, cpus_needed: int):
    """Ray, initialised for this run: joined at ``address`` ("auto", host:port) or started on
    this machine (None or "local"); shut down afterwards if this call started it. A Ray already
    initialised in this process (e.g. by a caller or a test) is used as it is."""
    ray = import_ray()
    address = address or "local"
    if address not in ("local", "auto"):
        _check_reachable(address)
    if ray.is_initialized():
        if address not in ("local", "auto"):
            raise UsageError(f"Ray is already initialised in this process, so it cannot also "
                             f"join {address}; call ray.shutdown() first or drop the address")
        _check_cpus(ray, cpus_needed)
        yield ray
        return
    if address == "local":
        # The actors' CPUs are counted on top of the cores, which stay the decode tasks': on
        # one machine decode and engine take turns on the same cores, as in the local path.
        kwargs = {"num_cpus": (os.cpu_count() or 1) + cpus_needed}
    else:
        kwargs = {}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", configure_logging=True, **kwargs)
    except ConnectionError as e:
        raise UsageError(f"cannot connect to the Ray cluster at {clip(address)} "
                         f"({clip(str(e).splitlines()[0] if str(e) else type(e).__name__)}); "
                         "start it with 'ray start --head' or use --address local") from None
    try:
        _check_cpus(ray, cpus_needed)
        yield ray
    finally:
        ray.shutdown()


def _check_cpus(ray, needed: int) -> None:
    """The actors hold their CPUs for the whole run: decoding needs at least one more, or the
    pipeline would wait forever."""
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < needed + 1:
        raise UsageError(f"the Ray cluster has {cpus:g} CPUs, and {needed} model actor threads "
                         f"need {needed + 1} (one left for decoding); use fewer --workers or "
                         "--threads-per-worker")


def _check_reachable(address: str) -> None:
    """A quick TCP connect to host:port (Ray alone may retry for a minute before it fails)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--address must be local, auto or host:port, got {quote(address)}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UsageError(f"cannot reach the Ray cluster at {clip(address)} ({e.strerror or e}); "
                         "start it with 'ray start --head' or use --address local") from None


def _pack_model(model_dir: Path) -> dict[str, bytes]:
    """The model folder's regular files (not hidden caches), to ship through the object store."""
    return {p.name: p.read_bytes() for p in sorted(model_dir.iterdir())
            if p.is_file() and not p.name.startswith(".")}


class RayPredictions:
    """``(samples, logits, engine_seconds)`` per batch, in sample order, from a Ray Data
    pipeline; ``skipped`` lists ``(Sample, reason)`` as they come (as the local loader does)."""

    def __init__(self, ray, samples, meta, files: dict[str, bytes], *, batch_size: int,
                 workers: int, threads: int, strict: bool, decode: str = "exact"):
        self.ray, self.samples, self.meta, self.strict = ray, samples, meta, strict
        self.decode = decode
        self.files, self.batch_size = files, batch_size
        self.workers, self.threads = workers, threads
        self.skipped: list = []

    def dataset(self):
        """image list -> decode map tasks -> model actor pool."""
        ctx = self.ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # results in image order
        ctx.enable_progress_bars = False  # ours is tqdm's, on the driver
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its plan and timings are noise here
        rows = [{"i": i, "path": os.fsencode(s.path)} for i, s in enumerate(self.samples)]
        # Blocks of a few batches: small enough to spread, large enough to amortise a task;
        # at least one per actor where there are images enough.
        blocks = max(min(len(rows), self.workers), -(-len(rows) // (4 * self.batch_size)))
        ds = self.ray.data.from_items(rows, override_num_blocks=blocks)
        # Decode tasks retry a dead worker's block a few times. Given as a function, their
        # remote args also keep Ray Data from fusing decoding into the model actors: tasks
        # spread decoding over every CPU of the cluster, the actors only run the model.
        with warnings.catch_warnings():  # deprecated from 2.60; the extra pins Ray below 2.64
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ds.map_batches(decode_batch,
                                fn_kwargs={"cfg": self.meta.preprocess,
                                           "shape": tuple(self.meta.input_shape[1:]),
                                           "decode": self.decode},
                                batch_size=None, batch_format="numpy", num_cpus=1,
                                ray_remote_args_fn=_decode_task_args)
        # Inside a list, so the actor fetches it itself (a top-level ObjectRef argument would
        # make Ray warn that a restarted actor may lose it); self keeps it alive for restarts.
        self._model_ref = self.ray.put(self.files)
        pool = self.ray.data.ActorPoolStrategy(size=self.workers)
        return ds.map_batches(ModelActor, fn_constructor_kwargs={"files": [self._model_ref],
                                                                 "threads": self.threads},
                              batch_size=self.batch_size, batch_format="numpy", compute=pool,
                              num_cpus=self.threads)

    def __iter__(self):
        expected = 0
        for batch in self.dataset().iter_batches(batch_size=None, batch_format="numpy"):
            idx = [int(i) for i in batch["i"]]
            if idx != list(range(expected, expected + len(idx))):  # preserve_order broke: a bug
                raise RuntimeError(f"Ray returned images out of order at {expected}: {idx[:5]}")
            expected += len(idx)
            good = self._take_errors(idx, batch["error"])
            if good:
                yield ([self.samples[idx[k]] for k in good], batch["logits"][good],
                       float(batch["engine_s"].sum()))
        if expected != len(self.samples):
            raise RuntimeError(f"Ray returned {expected} of {len(self.samples)} images")

    def _take_errors(self, idx: list[int], errors) -> list[int]:
        """Record the undecodable images of a batch; the positions of the good ones."""
        good = []
        for k, err in enumerate(errors):
            if not err:
                good.append(k)
            elif self.strict:
                raise DataError(f"{err} (--strict: stopping at the first bad image; drop "
                                "--strict to skip bad images)")
            else:
                self.skipped.append((self.samples[idx[k]], str(err)))
        return good


def _decode_task_args() -> dict:
    return {"max_retries": 3}


def decode_batch(batch: dict, cfg, shape: tuple, decode: str = "exact") -> dict:
    """Map task: decode and preprocess each path; an undecodable image gets zeros and its
    reason (the message the local loader records). ``decode="native"`` where this worker has
    the native decoder, else the exact path: the same pixels either way."""
    from mnv3.data.files import shown, start_read
    from mnv3.data.loader import preprocess_bytes

    if decode == "native":
        from mnv3.data.native_decode import unavailable

        decode = "exact" if unavailable(cfg) else "native"
    files = [Path(os.fsdecode(bytes(raw))) for raw in batch["path"]]
    reads = [start_read(path, "image") for path in files]  # read ahead, as the local loader
    images = np.zeros((len(files), *shape), dtype=np.float32)
    errors = []
    for k, (path, read) in enumerate(zip(files, reads)):
        try:
            preprocess_bytes(read(), shown(path), cfg, decode, out=images[k])
            errors.append("")
        except DataError as e:
            errors.append(str(e))
    return {"i": batch["i"], "image": images, "error": np.array(errors, dtype=object)}


class ModelActor:
    """One engine per actor: the shipped model folder written to a private temporary folder and
    loaded once through ``mnv3.load`` (sha256 checked against meta.json)."""

    def __init__(self, files, threads: int):
        self._dir, self.session = load_shipped(files, threads=threads, spin=False)

    def __call__(self, batch: dict) -> dict:
        images, errors = batch["image"], batch["error"]
        ok = np.array([not e for e in errors], dtype=bool)
        logits = np.zeros((len(errors), int(self.session.meta.num_classes)), dtype=np.float32)
        seconds = np.zeros(len(errors), dtype=np.float64)
        if ok.any():
            t0 = time.perf_counter()
            logits[ok] = self.session.predict(np.ascontiguousarray(images[ok]))
            seconds[0] = time.perf_counter() - t0
        return {"i": batch["i"], "logits": logits, "error": errors, "engine_s": seconds}


def load_shipped(files, **options):
    """(temporary folder, Session): a model folder shipped as ``[ObjectRef of {name: bytes}]``
    (``_pack_model``; in a list, see ``RayPredictions.dataset``) written to a private
    temporary folder and loaded through ``mnv3.load`` (sha256 checked against meta.json).
    Keep the folder as long as the session: it is removed with it."""
    import tempfile

    import ray

    from mnv3.backends import load

    files = ray.get(files[0])
    folder = tempfile.TemporaryDirectory(prefix="mnv3-ray-model-")
    for name, data in files.items():
        Path(folder.name, name).write_bytes(data)
    return folder, load(folder.name, **options)
