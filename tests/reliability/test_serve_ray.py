"""``mnv3 serve --engine ray`` (issue 18): a Ray Serve deployment on a local Ray cluster started
here, on loopback, answers as the local engine does and refuses bad requests with the same
4xx JSON. Skipped without Ray Serve (pip install -e ".[ray]"); one cluster for the module."""

from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest

pytest.importorskip("ray")
pytest.importorskip("ray.serve")
pytest.importorskip("starlette")

import mnv3  # noqa: E402
from mnv3.meta import read_meta  # noqa: E402


def _call(url, method, path, body=None, headers=None):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.slow  # the cluster and Serve's controller and proxy start in 15-40 s
def test_ray_serve_answers_as_local_and_refuses_bad_requests(tiny):
    files = sorted(tiny["images"].glob("*.png"))[:4]
    local = mnv3.serve(tiny["model"], port=0)
    try:
        want = [_call(local.url, "POST", "/predict", p.read_bytes(),
                      {"Content-Type": "image/png"}) for p in files]
    finally:
        local.stop()
    service = mnv3.serve(tiny["model"], engine="ray", port=0, replicas=1, max_batch_size=4,
                         batch_wait_ms=20, max_body=1 << 16)
    try:
        assert service.url.startswith("http://127.0.0.1:")
        got = [_call(service.url, "POST", "/predict", p.read_bytes(),
                     {"Content-Type": "image/png"}) for p in files]
        assert got == want and all(status == 200 for status, _ in got)
        status, m = _call(service.url, "GET", "/metadata")
        meta = read_meta(tiny["model"])
        assert status == 200 and (m["engine"], m["replicas"], m["compiled_sha256"]) == (
            "ray", 1, meta.compiled_sha256)
        for body, ctype, code in ((b"hello", "text/plain", 415),
                                  (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image/png", 422),
                                  (b"\xff" * (1 << 17), "image/jpeg", 413)):
            status, err = _call(service.url, "POST", "/predict", body, {"Content-Type": ctype})
            assert status == code and set(err) == {"error", "detail"}, err
        assert _call(service.url, "GET", "/healthz")[0] == 200
        assert _call(service.url, "POST", "/predict", files[0].read_bytes(),
                     {"Content-Type": "image/png"}) == want[0]
    finally:
        service.stop()
