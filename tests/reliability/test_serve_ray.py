"""``mnv3 serve --engine ray`` (issue 18): a Ray Serve deployment on a local Ray cluster started
here, on loopback, answers as the local engine does and refuses bad requests with the same
4xx JSON; two replicas share the requests and outlive one's death. Skipped without Ray Serve
(pip install -e ".[ray]"); each test starts its own cluster."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


@pytest.mark.slow
def test_two_replicas_share_the_requests_and_a_killed_one_is_replaced(tiny):
    """--replicas 2: concurrent requests reach both replicas and get the local engine's
    answers; SIGKILL one replica's process and Ray Serve starts another while the survivor
    goes on answering."""
    files = sorted(tiny["images"].glob("*.png"))[:4]
    local = mnv3.serve(tiny["model"], port=0)
    try:
        want = {p.name: _call(local.url, "POST", "/predict", p.read_bytes(),
                              {"Content-Type": "image/png"}) for p in files}
    finally:
        local.stop()
    service = mnv3.serve(tiny["model"], engine="ray", port=0, replicas=2, max_batch_size=2,
                         batch_wait_ms=5)
    try:
        assert _call(service.url, "GET", "/metadata")[1]["replicas"] == 2
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda p: (p.name, _call(service.url, "POST", "/predict",
                                                         p.read_bytes(),
                                                         {"Content-Type": "image/png"})),
                                files * 6))
            assert all(answer == want[name] for name, answer in got)
            before = _replicas(pool, service.url, 40)
        assert len(before) == 2, before

        assert _kill_one_replica() is not None, "no replica process found to kill"
        deadline, now = time.monotonic() + 120, set()
        while time.monotonic() < deadline and not (len(now) == 2 and now - before):
            time.sleep(1)
            with ThreadPoolExecutor(8) as pool:
                now = _replicas(pool, service.url, 16)
        assert len(now) == 2 and len(now - before) == 1, (before, now)  # one new, one survivor
        for p in files:  # and the new replica answers as the others did
            assert _call(service.url, "POST", "/predict", p.read_bytes(),
                         {"Content-Type": "image/png"}) == want[p.name]
    finally:
        service.stop()


def _replicas(pool, url: str, n: int) -> set[str]:
    """The replicas that answered ``n`` concurrent /healthz calls (failed calls left out)."""
    def one(_):
        try:
            status, body = _call(url, "GET", "/healthz")
        except (OSError, ValueError):
            return None
        return body.get("replica") if status == 200 else None
    return {r for r in pool.map(one, range(n)) if r}


def _kill_one_replica() -> int | None:
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if pid.isdigit() and b"ServeReplica:" in cmdline:
            os.kill(int(pid), signal.SIGKILL)
            return int(pid)
    return None
