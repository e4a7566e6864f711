"""``mnv3.serve``: classify images sent over HTTP with a built model (issue 18).

    service = mnv3.serve("data/models/force_float32_false_8", port=0)   # a free port
    print(service.url)            # http://127.0.0.1:41237 ; POST an image to /predict
    service.stop()

Two engines, one protocol (``mnv3.serve_protocol``): ``engine="local"`` (the default: no extra
packages) serves from this process with the standard library's HTTP server and a dynamic
batcher (``mnv3.serve_local``); ``engine="ray"`` deploys the same on Ray Serve, ``replicas``
copies of the model, each batching with ``serve.batch`` (``mnv3.serve_ray``; pip install
"mnv3[ray]"). Both load the model folder through ``mnv3.load`` (its sha256 check), and a model
that 'mnv3 tune' tuned runs with its recorded threads and requests in flight unless
``threads`` is given, and decodes the way tune chose (``--decode fast`` only where tune measured
its agreement) unless ``decode`` is given; /metadata and the startup line say which settings run.

It listens on 127.0.0.1 unless told otherwise: the service has no authentication.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from mnv3.data.files import quote
from mnv3.errors import UsageError
from mnv3.defaults import SERVE_ENGINES as ENGINES, SERVE_HOST as DEFAULT_HOST
from mnv3.defaults import SERVE_MAX_BODY as MAX_BODY, SERVE_PORT as DEFAULT_PORT
from mnv3.defaults import SERVE_WAIT_MS as DEFAULT_WAIT_MS
from mnv3.serve_protocol import settings


def serve(model: str | os.PathLike, *, engine: str = "local", host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, replicas: int = 1, max_batch_size: int | None = None,
          batch_wait_ms: float = DEFAULT_WAIT_MS, threads: int | None = None,
          max_body: int = MAX_BODY, address: str | None = None, class_names=None,
          decode: str | None = None):
    """Start the service and return its handle (``.url``, ``.metadata``, ``.stop()``).

    ``max_batch_size`` defaults to the model's batch; ``port=0`` takes a free port; ``address``
    (Ray only) joins a running cluster ("auto", host:port) instead of starting one here;
    ``decode`` "exact", "native" (the same pixels in C++) or "fast" (default: what 'mnv3 tune'
    chose for the model, else exact)."""
    from mnv3.backends import load
    from mnv3.data.fast_decode import check_decode, tuned_decode
    from mnv3.meta import read_meta

    if engine not in ENGINES:
        raise UsageError(f"engine must be one of {', '.join(ENGINES)}, got {quote(engine)}")
    _check(port=port, replicas=replicas, max_batch_size=max_batch_size,
           batch_wait_ms=batch_wait_ms, threads=threads, max_body=max_body)
    if engine != "ray" and (address is not None or replicas != 1):
        raise UsageError("--address and --replicas are options of --engine ray")
    meta = read_meta(model)
    batch = int(max_batch_size or meta.default_batch)
    run = settings(meta, threads)
    if engine == "ray" and run["threads"] is None:  # replicas share the cores: 1 thread each
        run.update(threads=1, settings="1 thread per replica (default)")
    if engine == "ray":  # replicas already run side by side, each on its own cores
        run["split"] = 1
    decode = check_decode(decode) if decode is not None else tuned_decode(meta)
    if decode == "native":  # built and checked here, not first in a replica at its first request
        from mnv3.data.native_decode import decoder

        decoder(meta.preprocess)
    describe = {"engine": engine, "max_batch_size": batch, "batch_wait_ms": batch_wait_ms,
                "max_body": max_body, "decode": decode, **run}
    if engine == "ray":
        from mnv3.serve_ray import start_ray

        return start_ray(Path(model), host=host, port=port, replicas=replicas,
                         max_batch=batch, wait_s=batch_wait_ms / 1000, max_body=max_body,
                         threads=run["threads"], in_flight=run["in_flight"], address=address,
                         describe={**describe, "replicas": replicas}, class_names=class_names)
    from mnv3.serve_local import LocalService
    from mnv3.serve_protocol import Classifier

    # the tuned settings when threads is None (mnv3.load's rule); no spin-wait: decoding
    # the requests' images needs the cores between engine calls
    session = load(model, threads=threads, spin=False)
    try:
        classifier = Classifier(session, class_names, **describe)
        return LocalService(classifier, host=host, port=port, max_batch=batch,
                            wait_s=batch_wait_ms / 1000, in_flight=session.in_flight,
                            max_body=max_body)
    except BaseException:
        session.close()
        raise


def _check(*, port, replicas, max_batch_size, batch_wait_ms, threads, max_body) -> None:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {port}")
    for flag, value in (("--replicas", replicas), ("--max-batch-size", max_batch_size),
                        ("--threads", threads), ("--max-body", max_body)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if not 0 <= batch_wait_ms <= 10_000:
        raise UsageError(f"--batch-wait-ms must be 0..10000, got {batch_wait_ms:g}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def startup_line(service) -> str:
    """The one line ``mnv3 serve`` prints when it listens."""
    m = service.metadata
    threads = f"{m['threads']} thread(s)" if m.get("threads") else "the engine's threads"
    where = (f"{m['replicas']} replica(s) on Ray Serve" if m["engine"] == "ray"
             else "this process")
    return (f"mnv3 serve: {m['model']} ({m['backend']}, {m['quant_mode']}) at {service.url} "
            f"(POST /predict, GET /healthz, GET /metadata); {where}, batches of up to "
            f"{m['max_batch_size']} within {m['batch_wait_ms']:g} ms, {threads} x "
            f"{m['in_flight']} batch(es) in flight ({m['settings']})"
            + ("; decode fast (chosen by 'mnv3 tune'; --decode exact overrides)"
               if m.get("decode") == "fast" else "")
            + ("; decode native (the exact pixels, in C++)" if m.get("decode") == "native"
               else "") + "; Ctrl-C stops")
