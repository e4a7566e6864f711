"""The HTTP protocol of ``mnv3 serve``, one for both engines (issue 18).

    POST /predict   an image: the raw bytes with an image/* (or application/octet-stream)
                    Content-Type, or multipart/form-data with one file part
                    -> 200 {"model", "top5", "names", "probs"}
    GET  /healthz   -> 200 {"status": "ok", "model"} once the model is loaded (on Ray Serve,
                       also "replica": the id of the replica that answered)
    GET  /metadata  -> 200 the model (name, backend, quant mode, sha256 of the compiled file,
                    batch, shape) and how the service runs it (engine, batching, threads)

Every error is JSON ``{"error": what, "detail": why}`` with a 4xx status: 404 / 405 (path,
method), 411 (no Content-Length; the local engine reads no chunked bodies), 413 (over the
size cap), 415 (a Content-Type that is not an image), 400 (empty body, bad multipart), 422
(not a decodable image). Nothing a client sends can stop a worker: the engines answer 500 with
the same JSON for any other exception and go on.

The pixels go through mnv3's one preprocessing (``mnv3.data.preprocess``: the decode checks of
a file, then ``preprocess_image``), and the answer is computed as results.jsonl's lines are
(``mnv3.evaluation.topk_indices``, ``mnv3.results.softmax`` of the logits, 6 decimals), so a
service answers what ``mnv3 infer`` writes for the same image.
"""

from __future__ import annotations

import email.parser
import email.policy
from typing import Any

import numpy as np

from mnv3.data.files import clip, quote
from mnv3.defaults import SERVE_MAX_BODY as MAX_BODY  # noqa: F401  (--max-body)
from mnv3.errors import DataError
from mnv3.provenance import quality_notes

ROUTES = {"/predict": "POST", "/healthz": "GET", "/metadata": "GET"}
RAW_TYPES = ("application/octet-stream",)  # beside image/*


class HttpError(Exception):
    """A request the service refuses: ``status`` and the JSON body ``{"error", "detail"}``."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail

    def body(self) -> dict[str, str]:
        return {"error": self.error, "detail": self.detail}


def route(method: str, path: str) -> str:
    """The endpoint ``path`` names (query string and trailing slash ignored), for ``method``."""
    path = path.split("?", 1)[0].rstrip("/") or "/"
    if path not in ROUTES:
        raise HttpError(404, "not found", f"no endpoint {quote(path, 60)}; use POST /predict, "
                        "GET /healthz or GET /metadata")
    if method != ROUTES[path] and not (method == "HEAD" and ROUTES[path] == "GET"):
        raise HttpError(405, "method not allowed", f"{path} takes {ROUTES[path]}, not "
                        f"{quote(method, 20)}")
    return path


def body_length(content_length: str | None, max_bytes: int) -> int:
    """The declared body size, checked against the cap before anything is read."""
    if content_length is None:
        raise HttpError(411, "length required", "send the image with a Content-Length header "
                        "(chunked bodies are not read)")
    try:
        n = int(content_length)
    except ValueError:
        n = -1
    if n < 0:
        raise HttpError(400, "bad Content-Length", f"{quote(content_length, 40)} is not a size")
    check_size(n, max_bytes)
    return n


def check_size(n: int, max_bytes: int) -> None:
    if n > max_bytes:
        raise HttpError(413, "request body too large", f"{n} bytes, more than the {max_bytes} "
                        "this service accepts (mnv3 serve --max-body)")


def image_bytes(content_type: str | None, body: bytes) -> bytes:
    """The image in a request body: the body itself, or the one file part of a multipart form."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime == "multipart/form-data":
        data = _multipart_file(content_type or "", body)
    elif mime.startswith("image/") or mime in RAW_TYPES:
        data = body
    else:
        raise HttpError(415, "unsupported content type", f"{quote(mime or 'none', 60)}; send "
                        "the image's bytes as image/* (e.g. image/jpeg) or as one file of a "
                        "multipart/form-data body")
    if not data:
        raise HttpError(400, "empty image", "the request carries no image bytes")
    return data


def _multipart_file(content_type: str, body: bytes) -> bytes:
    """The content of the one file part of a multipart/form-data ``body`` (RFC 7578).

    Parsed by hand (split on the boundary): binary-safe and linear in the body's size, with no
    dependency; the part headers are read by the standard library's header parser."""
    boundary = _header(f"Content-Type: {content_type}").get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise HttpError(400, "bad multipart body", "its Content-Type has no boundary")
    # A delimiter is CRLF "--" boundary (the first may open the body): [preamble, part, ...,
    # "--" epilogue], the closing delimiter ending the last part
    sections = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1", "replace"))
    if len(sections) < 3 or not sections[-1].startswith(b"--"):
        raise HttpError(400, "bad multipart body", "no complete part between boundaries")
    parts = [_part(s) for s in sections[1:-1]]
    files = [p for p in parts if p[0].get_filename()] or parts
    if len(files) != 1:
        raise HttpError(400, "bad multipart body", f"{len(files)} file parts; send exactly one "
                        "image per request")
    return files[0][1]


def _part(section: bytes):
    """(headers, content) of one multipart section: CRLF, headers, blank line, content."""
    head, sep, content = section.removeprefix(b"\r\n").partition(b"\r\n\r\n")
    if not sep:
        raise HttpError(400, "bad multipart body", "a part lacks its headers")
    return _header(head.decode("latin-1")), content


def _header(text: str):
    return email.parser.HeaderParser(policy=email.policy.compat32).parsestr(text + "\r\n\r\n")


class Classifier:
    """The model side of the protocol: a loaded Session's preprocessing, predictions and answers.
    ``describe`` adds what the engine wants /metadata to say about how it runs the model."""

    def __init__(self, session, class_names: list[str] | None = None, **describe: Any):
        from mnv3.inference import _imagenet_names

        self.session, self.meta = session, session.meta
        self.decode = describe.get("decode", "exact")  # "fast": mnv3.data.fast_decode
        if self.decode == "native":  # a Ray replica on a machine without the library: exact,
            from mnv3.data.native_decode import unavailable  # the same pixels

            if unavailable(self.meta.preprocess):
                self.decode = describe["decode"] = "exact"
        self.class_names = (class_names or self.meta.class_names
                            or _imagenet_names(self.meta.num_classes))
        self.metadata = metadata(self.meta, **describe)

    def preprocess(self, data: bytes) -> np.ndarray:
        """float32 [3, H, W] as ``mnv3 infer`` makes it; 422 when it is not a usable image."""
        from mnv3.data.fast_decode import preprocess_fast_bytes
        from mnv3.data.preprocess import decode_bytes, preprocess_image

        what, cfg = "in the request body", self.meta.preprocess
        try:
            if self.decode == "fast":
                return preprocess_fast_bytes(data, cfg, what)
            if self.decode == "native":
                from mnv3.data.native_decode import decoder

                return decoder(cfg).bytes(data, what)
            return preprocess_image(decode_bytes(data, what), cfg)
        except DataError as e:
            raise HttpError(422, "not a decodable image", clip(e)) from None

    def predict(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        """One engine call for a batch of preprocessed images (``Session.predict`` splits and
        pads for a fixed-batch model); an answer per image."""
        logits = self.session.predict(np.stack(images))
        return self.answers(logits)

    def answers(self, logits: np.ndarray) -> list[dict[str, Any]]:
        from mnv3.evaluation import topk_indices
        from mnv3.results import softmax

        logits = np.asarray(logits, dtype=np.float64)
        top, probs = topk_indices(logits, 5), softmax(logits)
        out = []
        for i in range(len(logits)):
            idx = [int(v) for v in top[i]]
            out.append({"model": self.meta.name, "top5": idx,
                        "names": [self._name(j) for j in idx],
                        "probs": [round(float(probs[i, j]), 6) for j in idx]})
        return out

    def _name(self, idx: int) -> str:
        names = self.class_names
        return names[idx] if names and idx < len(names) else str(idx)


def metadata(meta, **describe: Any) -> dict[str, Any]:
    """GET /metadata: the model as meta.json records it, plus how the service runs it."""
    return {
        "model": meta.name, "backend": meta.backend, "backend_version": meta.backend_version,
        "quant_mode": meta.quant_mode.value, "compiled_sha256": meta.compiled_sha256,
        "batch_size": int(meta.batch_size), "shape_mutable": bool(meta.shape_mutable),
        "input_shape": list(meta.input_shape), "num_classes": int(meta.num_classes),
        "tuned": meta.tuned, "notes": quality_notes(meta), **describe,
    }


def settings(meta, threads: int | None) -> dict[str, Any]:
    """Threads, batches in flight and sub-batches per batch (split) the engine will use, and
    where they come from: the flag, the settings 'mnv3 tune' recorded (``mnv3.load`` uses them
    by default), or the engine's."""
    tuned = meta.tuned
    if threads is not None:
        return {"threads": threads, "in_flight": 1, "split": 1, "settings": "--threads"}
    if tuned:
        return {"threads": int(tuned["threads"]), "in_flight": int(tuned["streams"]),
                "split": int(tuned.get("split", 1)),
                "settings": f"tuned ({tuned.get('objective', '?')})"}
    return {"threads": None, "in_flight": 1, "split": 1, "settings": "engine default"}
