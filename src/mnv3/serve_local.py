"""``mnv3 serve --engine local``: the service in this process, from the standard library.

A ``ThreadingHTTPServer`` (HTTP/1.1 keep-alive, a thread per connection) reads each request,
checks it and preprocesses its image on that connection's thread (Pillow releases the GIL, so
decodes overlap), then hands the array to a ``Batcher``: dynamic batching as Ray Serve's
``serve.batch`` does it, one engine call for up to ``max_batch`` waiting images, waiting at
most ``wait_s`` after the first for the batch to fill. ``in_flight`` batcher threads call the
one loaded session at once (the requests in flight 'mnv3 tune' measured fastest; 1 untuned).
The protocol (routes, errors, answers) is ``mnv3.serve_protocol``'s, shared with Ray Serve.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mnv3.data.files import clip
from mnv3.serve_protocol import HttpError, body_length, image_bytes, route

log = logging.getLogger("mnv3.serve")
DRAIN_LIMIT = 64 << 20  # an oversized body up to this is read and dropped (keep-alive holds)
SOCKET_TIMEOUT_S = 60.0  # a client that stops sending mid-body frees its thread after this
ANSWER_TIMEOUT_S = 300.0  # an engine call that never returns is a 500, not a hung client


class Batcher:
    """Dynamic batching: ``submit(array) -> Future`` of its answer; ``in_flight`` threads each
    take the first waiting image and up to ``max_batch - 1`` more arriving within ``wait_s``."""

    def __init__(self, classifier, max_batch: int, wait_s: float, in_flight: int = 1):
        self.classifier, self.max_batch, self.wait_s = classifier, max_batch, wait_s
        self.queue: queue.Queue = queue.Queue()
        self.batches = 0  # engine calls made (the tests read it)
        self._threads = [threading.Thread(target=self._loop, name=f"mnv3-batcher-{i}",
                                          daemon=True) for i in range(max(1, in_flight))]
        for t in self._threads:
            t.start()

    def submit(self, image) -> Future:
        future: Future = Future()
        self.queue.put((image, future))
        return future

    def stop(self) -> None:
        for _ in self._threads:
            self.queue.put(None)
        for t in self._threads:
            t.join(timeout=10)
        while True:  # requests that came after the stop: answered, not left waiting
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[1].set_exception(RuntimeError("the service is stopping"))

    def _loop(self) -> None:
        while (batch := self._collect()) is not None:
            if batch:
                self._run(batch)

    def _collect(self) -> list | None:
        """The next batch; None when told to stop (after the batch in hand is answered)."""
        first = self.queue.get()
        if first is None:
            return None
        batch, deadline = [first], time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                item = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.queue.put(None)  # stop after this batch
                break
            batch.append(item)
        return batch

    def _run(self, batch: list) -> None:
        try:
            answers = self.classifier.predict([image for image, _ in batch])
            self.batches += 1
        except BaseException as e:  # every waiting request learns it; this thread goes on
            for _, future in batch:
                future.set_exception(e)
            return
        for (_, future), answer in zip(batch, answers):
            future.set_result(answer)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
    server_version = "mnv3-serve"
    timeout = SOCKET_TIMEOUT_S
    app: LocalService  # set on the subclass each service makes

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET  # noqa: N815

    def _handle(self) -> None:
        read = False
        try:
            path = route(self.command, self.path)
            if path == "/healthz":
                self._send(200, {"status": "ok", "model": self.app.classifier.meta.name})
            elif path == "/metadata":
                self._send(200, self.app.classifier.metadata)
            else:
                n = body_length(self.headers.get("Content-Length"), self.app.max_body)
                body, read = self.rfile.read(n), True
                if len(body) != n:
                    raise HttpError(400, "incomplete body", f"got {len(body)} of {n} bytes")
                self._send(200, self._predict(body))
        except HttpError as e:
            if not read:
                self._drain()
            self._send(e.status, e.body())
        except Exception as e:  # noqa: BLE001  a bug or an engine failure: this request's 500
            log.exception("mnv3 serve: request failed")
            self.close_connection = True
            self._send(500, {"error": "internal error", "detail": clip(f"{type(e).__name__}: "
                                                                       f"{e}")})

    def _predict(self, body: bytes) -> dict:
        image = self.app.classifier.preprocess(image_bytes(self.headers.get("Content-Type"),
                                                           body))
        return self.app.batcher.submit(image).result(timeout=ANSWER_TIMEOUT_S)

    def _drain(self) -> None:
        """Read and drop a refused request's body, so the connection can carry the next one;
        a body too large (or of unknown size) to drain closes the connection instead."""
        try:
            n = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            n = -1
        if self.command in ("GET", "HEAD") and n == 0:
            return
        if not 0 <= n <= DRAIN_LIMIT or self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 20))
            if not chunk:
                break
            n -= len(chunk)

    def _send(self, status: int, body: dict) -> None:
        data = (json.dumps(body) + "\n").encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError:  # the client went away: nothing to answer
            self.close_connection = True

    def log_message(self, format, *args):  # noqa: A002  quiet: one line per request is noise
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once: one more is answered 503
    and closed (a flood of connections must not exhaust the threads or the memory)."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: many clients connect at once (default 5)
    max_connections = 256

    def __init__(self, *args, **kwargs):
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            body = json.dumps({"error": "too many connections", "detail": f"this service "
                               f"serves {self.max_connections} at once; retry"}).encode()
            head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            try:
                request.sendall(head + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class LocalService:
    """A running local service: ``url``, ``metadata``, ``stop()`` (closes the session too)."""

    def __init__(self, classifier, *, host: str, port: int, max_batch: int, wait_s: float,
                 in_flight: int, max_body: int, max_connections: int = 256):
        self.classifier, self.max_body = classifier, max_body
        self.batcher = Batcher(classifier, max_batch, wait_s, in_flight)
        handler = type("Handler", (_Handler,), {"app": self})
        server_cls = type("Server", (_Server,), {"address_family": _family(host),
                                                 "max_connections": max_connections})
        try:
            self.httpd = server_cls((host, port), handler)
        except OSError as e:
            self.batcher.stop()
            from mnv3.errors import UsageError

            raise UsageError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose "
                             "another --port (0 picks a free one) or --host") from None
        self.host, self.port = host, self.httpd.server_address[1]
        self.url = f"http://{_bracket(host)}:{self.port}"
        self.metadata = classifier.metadata
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="mnv3-serve",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.batcher.stop()
        self.classifier.session.close()


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
