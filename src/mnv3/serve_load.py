"""``mnv3 bench --serve URL``: a bounded load test of a running ``mnv3 serve`` (issue 18).

``concurrency`` clients (threads, each with one keep-alive HTTP/1.1 connection) POST images to
URL/predict back to back for ``duration`` seconds; every answer is timed from the first byte
sent to the last byte read. Reported: requests/s (answered 200), latency p50/p95/p99 (ms, the
percentiles of ``mnv3.bench``) and the errors by kind. Bounded on purpose: at most
``MAX_CONCURRENCY`` clients and ``MAX_DURATION_S`` seconds, against loopback only unless
``allow_remote`` (a load generator must not be pointed at someone else's service by a typo).
"""

from __future__ import annotations

import collections
import http.client
import mimetypes
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mnv3.errors import DataError, UsageError

MAX_CONCURRENCY, MAX_DURATION_S = 256, 3600.0
MAX_IMAGES = 64  # images held in memory and cycled through
TIMEOUT_S = 60.0


@dataclass
class LoadResult:
    url: str
    concurrency: int
    duration_s: float  # measured wall time
    requests: int  # answered 200
    errors: int
    requests_per_s: float
    latency_ms: dict[str, float]  # p50, p95, p99, max (of the 200 answers)
    error_kinds: dict[str, int] = field(default_factory=dict)  # "HTTP 413", "ConnectionError"
    images: int = 0
    model: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def load_test(url: str, images: list[Path], *, concurrency: int, duration: float,
              allow_remote: bool = False) -> LoadResult:
    """Run the load test (see the module docstring); ``images`` are sent in turn."""
    host, port, base = parse_url(url, allow_remote)
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be 1..{MAX_CONCURRENCY}, got {concurrency}")
    if not 0 < duration <= MAX_DURATION_S:
        raise UsageError(f"--duration must be within 0..{MAX_DURATION_S:g} s, got {duration:g}")
    bodies = _bodies(images)
    model = _model(host, port, base)
    stop = time.perf_counter() + duration
    clients = [_Client(host, port, base + "/predict", bodies, k, stop) for k in range(concurrency)]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return _result(url, concurrency, wall, clients, len(bodies), model)


def parse_url(url: str, allow_remote: bool) -> tuple[str, int, str]:
    """(host, port, path prefix) of an http:// URL; a non-loopback host needs allow_remote."""
    from mnv3.serving import is_loopback

    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise UsageError(f"--serve must be an http:// URL such as http://127.0.0.1:8000, got "
                         f"{url!r}")
    if not is_loopback(u.hostname) and not allow_remote:
        raise UsageError(f"--serve {u.hostname} is not this machine (loopback); a load test "
                         "floods its target, so pass --allow-remote to load a remote service")
    try:
        port = u.port or 80
    except ValueError:
        raise UsageError(f"--serve {url!r} has a bad port") from None
    return u.hostname, port, u.path.rstrip("/")


def _bodies(images: list[Path]) -> list[tuple[bytes, str]]:
    files = sorted(images)[:MAX_IMAGES]
    if not files:
        raise DataError("no images to send; give --images DIR with a few JPEG or PNG files")
    return [(p.read_bytes(), mimetypes.guess_type(p.name)[0] or "application/octet-stream")
            for p in files]


def _model(host: str, port: int, base: str) -> str | None:
    """The service's model (GET /metadata); a service that does not answer is a clear error."""
    import json

    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", base + "/metadata")
        resp = conn.getresponse()
        return json.loads(resp.read()).get("model") if resp.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise UsageError(f"no mnv3 service answers at {host}:{port} ({e}); start one with "
                         "'mnv3 serve --model DIR'") from None
    finally:
        conn.close()


class _Client:
    """One client: POST, read, repeat until ``stop``; reconnects after a failed request."""

    def __init__(self, host, port, path, bodies, k: int, stop: float):
        self.host, self.port, self.path, self.bodies = host, port, path, bodies
        self.k, self.stop = k, stop
        self.latencies: list[float] = []
        self.errors: collections.Counter = collections.Counter()

    def run(self) -> None:
        conn, i = None, self.k
        while time.perf_counter() < self.stop:
            body, ctype = self.bodies[i % len(self.bodies)]
            i += 1
            conn = conn or http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
            t0 = time.perf_counter()
            try:
                conn.request("POST", self.path, body=body, headers={"Content-Type": ctype})
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException) as e:
                self.errors[type(e).__name__] += 1
                conn.close()
                conn = None
                continue
            if resp.status == 200:
                self.latencies.append(time.perf_counter() - t0)
            else:
                self.errors[f"HTTP {resp.status}"] += 1
        if conn is not None:
            conn.close()


def _result(url, concurrency, wall, clients, images, model) -> LoadResult:
    from mnv3.bench import percentile

    lat = sorted(v * 1000 for c in clients for v in c.latencies)
    kinds: collections.Counter = sum((c.errors for c in clients), collections.Counter())
    stats = {f"p{p}": percentile(lat, p) for p in (50, 95, 99)} if lat else {}
    if lat:
        stats["max"] = lat[-1]
    return LoadResult(url=url, concurrency=concurrency, duration_s=wall, requests=len(lat),
                      errors=sum(kinds.values()), requests_per_s=len(lat) / wall,
                      latency_ms=stats, error_kinds=dict(kinds), images=images, model=model)


def format_load(r: LoadResult) -> str:
    """The block ``mnv3 bench --serve`` prints."""
    lat = "  ".join(f"{k} {v:.1f}" for k, v in r.latency_ms.items()) or "none answered"
    errors = ", ".join(f"{k}: {n}" for k, n in sorted(r.error_kinds.items())) or "none"
    rows = [("service", f"{r.url} ({r.model or 'model unknown'})"),
            ("load", f"{r.concurrency} clients for {r.duration_s:.1f} s, {r.images} image(s) "
                     "cycled, keep-alive"),
            ("throughput", f"{r.requests_per_s:.1f} requests/s ({r.requests} answered 200)"),
            ("latency (ms)", lat), ("errors", f"{r.errors} ({errors})")]
    return "\n".join(["mnv3 bench --serve", *(f"  {k:<15}{v}" for k, v in rows)])
