"""``mnv3 serve --engine ray``: the service as a Ray Serve deployment (issue 18).

``replicas`` copies of ``ServeReplica`` behind Ray Serve's HTTP proxy, on a Ray cluster started
here (``--address local``, the default) or joined (``auto``, host:port), as ``mnv3 infer
--engine ray`` does (``mnv3.ray_engine.ray_cluster``). The model folder is shipped through the
object store (``ray_engine._pack_model``) and each replica loads it once through ``mnv3.load``
(``ray_engine.load_shipped``: the sha256 check holds there too), so replicas on other machines
need not see this disk. Each replica preprocesses a request's image on a thread, then
``serve.batch`` gathers up to ``max_batch`` of them (waiting at most ``wait_s`` after the
first) into one engine call, ``in_flight`` such calls at once. The protocol (routes, errors,
answers) is ``mnv3.serve_protocol``'s, the local engine's too.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from contextlib import ExitStack
from pathlib import Path

from mnv3.data.files import clip
from mnv3.errors import BackendUnavailable, UsageError
from mnv3.serve_protocol import HttpError, body_length, check_size, image_bytes, route

APP = "mnv3"
log = logging.getLogger("mnv3.serve")


class ServeReplica:
    """One replica: the shipped model, loaded once; answers every route of the protocol."""

    def __init__(self, files, *, threads: int, in_flight: int, max_batch: int, wait_s: float,
                 max_body: int, describe: dict, class_names):
        from ray import serve

        from mnv3.ray_engine import load_shipped
        from mnv3.serve_protocol import Classifier

        self._dir, session = load_shipped(files, threads=threads, streams=in_flight,
                                          spin=False)
        self.classifier = Classifier(session, class_names, **describe)
        self.max_body = max_body
        # named in /healthz: which replica answered (load spread, restarts) is visible
        self.replica = serve.get_replica_context().replica_id.unique_id
        # serve.batch around the bound method: the batch size and wait are run-time values
        self._batched = serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_s,
                                    max_concurrent_batches=in_flight)(self._predict_many)

    async def _predict_many(self, images: list) -> list:
        # on a thread: the event loop goes on reading and preprocessing the next requests
        return await asyncio.to_thread(self.classifier.predict, images)

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        try:
            path = route(request.method, request.url.path)
            if path == "/healthz":
                return JSONResponse({"status": "ok", "model": self.classifier.meta.name,
                                     "replica": self.replica})
            if path == "/metadata":
                return JSONResponse(self.classifier.metadata)
            body = await self._body(request)
            data = image_bytes(request.headers.get("content-type"), body)
            image = await asyncio.to_thread(self.classifier.preprocess, data)
            return JSONResponse(await self._batched(image))
        except HttpError as e:
            return JSONResponse(e.body(), status_code=e.status)
        except Exception as e:  # noqa: BLE001  this request's 500; the replica goes on
            log.exception("mnv3 serve: request failed")
            return JSONResponse({"error": "internal error",
                                 "detail": clip(f"{type(e).__name__}: {e}")}, status_code=500)

    async def _body(self, request) -> bytes:
        """The body, refused once it passes the cap (a declared size is checked first)."""
        if request.headers.get("content-length") is not None:
            body_length(request.headers["content-length"], self.max_body)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            check_size(size, self.max_body)
            chunks.append(chunk)
        return b"".join(chunks)


class RayService:
    """A running Ray Serve deployment: ``url``, ``metadata``, ``stop()``."""

    def __init__(self, stack: ExitStack, serve, url: str, metadata: dict, owned: bool):
        self._stack, self._serve, self.url, self.metadata = stack, serve, url, metadata
        self._owned = owned

    def stop(self) -> None:
        try:
            self._serve.delete(APP)
            if self._owned:  # our cluster: Serve's controller and proxies go too
                self._serve.shutdown()
        finally:
            self._stack.close()


def start_ray(model_dir: Path, *, host: str, port: int, replicas: int, max_batch: int,
              wait_s: float, max_body: int, threads: int, in_flight: int,
              address: str | None, describe: dict, class_names) -> RayService:
    from mnv3.backends import load
    from mnv3.ray_engine import _pack_model, ray_cluster
    from mnv3.serve_protocol import metadata

    serve = _import_serve()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO lines: noise here
    with load(model_dir, threads=1) as session:  # the driver's check: a clear error, early
        meta = session.meta
    port = port or _free_port(host)
    stack = ExitStack()
    try:
        ray = stack.enter_context(ray_cluster(address, cpus_needed=replicas * threads))
        serve.start(http_options={"host": host, "port": port},
                    logging_config={"log_level": "WARNING", "enable_access_log": False})
        deployment = serve.deployment(
            ServeReplica, name="mnv3-" + meta.name.replace("_", "-"), num_replicas=replicas,
            ray_actor_options={"num_cpus": threads},
            max_ongoing_requests=max(32, 2 * max_batch * in_flight))
        # the driver owns the shipped folder: kept (on the handle) while the service runs, so
        # a replica that Ray restarts can fetch it again
        files = [ray.put(_pack_model(model_dir))]
        app = deployment.bind(files, threads=threads,
                              in_flight=in_flight, max_batch=max_batch, wait_s=wait_s,
                              max_body=max_body, describe=describe, class_names=class_names)
        serve.run(app, name=APP, route_prefix="/", blocking=False)
    except BaseException:
        stack.close()
        raise
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    service = RayService(stack, serve, url, metadata(meta, **describe),
                         owned=address in (None, "local"))
    service.model_files = files
    return service


def _import_serve():
    try:
        from ray import serve
        import starlette  # noqa: F401  (Ray Serve's HTTP layer)
    except ImportError as e:
        raise BackendUnavailable(f"--engine ray needs Ray Serve ({e.name or e} is not "
                                 'installed); pip install "mnv3[ray]"') from None
    return serve


def _free_port(host: str) -> int:
    """A port free on ``host`` now (Ray Serve's proxy cannot report one it picked itself)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as s:
            s.bind((host, 0))
            return s.getsockname()[1]
    except OSError as e:
        raise UsageError(f"cannot listen on {host} ({e.strerror or e}); check --host") from None
