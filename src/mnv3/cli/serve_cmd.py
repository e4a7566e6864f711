"""Serve a built model over HTTP: POST an image, get its top-5 classes as JSON.

Endpoints: POST /predict takes one image, as the raw bytes with an image/* Content-Type or as
the one file of a multipart/form-data form, and answers {"model", "top5", "names", "probs"}
(the probabilities results.jsonl gives for the same image: mnv3's one preprocessing, softmax
of the logits). GET /healthz answers 200 once the model is loaded; GET /metadata gives the
model's name, backend, quant mode, sha256 of the compiled file, batch and shape, and how the
service runs it. A bad request gets a 4xx JSON {"error", "detail"} and never stops the service:
413 over --max-body, 415 not an image type, 400 empty or bad multipart, 422 not decodable.

Requests are batched dynamically: an engine call takes up to --max-batch-size waiting images
(default: the model's batch), waiting at most --batch-wait-ms after the first. A model chosen
by 'mnv3 tune' runs with its tuned threads and batches in flight unless --threads is given,
and decodes the fast way where tune measured that it keeps top-1 (--decode exact overrides).
--engine local (the default; nothing more to install) serves from this process; --engine ray
deploys on Ray Serve (pip install "mnv3[ray]"): --replicas N copies of the model on a cluster
started here (--address local) or joined (auto, host:port). It listens on 127.0.0.1 only
unless --host says otherwise: there is no authentication. Ctrl-C stops it.

examples:
  mnv3 serve --model data/models/force_float32_false_8 --port 8000
  curl -s -H "Content-Type: image/jpeg" --data-binary @cat.jpg http://127.0.0.1:8000/predict
  curl -s -F "file=@cat.jpg" http://127.0.0.1:8000/predict
  mnv3 serve --model data/models/force_float32_false_8 --engine ray --replicas 2
  mnv3 bench --serve http://127.0.0.1:8000 --concurrency 20 --duration 60   # load test
"""

from __future__ import annotations

import signal
import sys
import threading
import time

from mnv3.cli.common import add_parser as _add
from mnv3.defaults import DECODES


def add_parser(sub):
    from mnv3.defaults import SERVE_ENGINES as ENGINES, SERVE_HOST as DEFAULT_HOST
    from mnv3.defaults import SERVE_MAX_BODY as MAX_BODY, SERVE_PORT as DEFAULT_PORT
    from mnv3.defaults import SERVE_WAIT_MS as DEFAULT_WAIT_MS

    p = _add(sub, "serve", __doc__, run)
    p.add_argument("--model", required=True, metavar="DIR", help="a built model directory")
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local (default): this process; ray: a Ray Serve deployment")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0 = any free port)")
    p.add_argument("--max-batch-size", type=int, default=None, metavar="B",
                   help="images per engine call at most (default: the model's batch)")
    p.add_argument("--batch-wait-ms", type=float, default=DEFAULT_WAIT_MS, metavar="W",
                   help=f"wait this long for a batch to fill (default {DEFAULT_WAIT_MS:g})")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="engine threads (per replica with --engine ray; default: the tuned "
                   "setting, else the engine's choice locally and 1 per Ray replica)")
    p.add_argument("--max-body", type=int, default=MAX_BODY, metavar="BYTES",
                   help=f"largest request body accepted (default {MAX_BODY}, 20 MiB)")
    p.add_argument("--decode", choices=DECODES, default=None,
                   help="how request images are decoded (default: what 'mnv3 tune' chose for "
                        "the model, else exact; native: the exact pixels in C++, about half "
                        "the CPU, built by 'mnv3 build-cpp'; fast: fewer CPU ms, other pixels)")
    ray = p.add_argument_group("--engine ray")
    ray.add_argument("--replicas", type=int, default=1, metavar="N",
                     help="copies of the model serving at once (default 1)")
    ray.add_argument("--address", default=None, metavar="ADDR",
                     help="local (default: start a cluster here), auto, or host:port")
    return p


def run(args) -> int:
    from mnv3.serving import is_loopback, serve, startup_line

    service = serve(args.model, engine=args.engine, host=args.host, port=args.port,
                    replicas=args.replicas, max_batch_size=args.max_batch_size,
                    batch_wait_ms=args.batch_wait_ms, threads=args.threads,
                    max_body=args.max_body, address=args.address, decode=args.decode)
    try:
        if not is_loopback(args.host):
            print(f"mnv3 serve: warning: listening on {args.host}, reachable from other "
                  "machines, with no authentication", file=sys.stderr)
        print(startup_line(service), flush=True)
        for note in service.metadata.get("notes", []):  # untrained, below its budget
            print(f"mnv3 serve: note: {note}", file=sys.stderr, flush=True)
        _wait_for_signal()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
    print("mnv3 serve: stopped", flush=True)
    return 0


def _wait_for_signal() -> None:
    """Until Ctrl-C or SIGTERM (a service manager's stop), both as KeyboardInterrupt."""
    def stop(*_):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    while True:
        time.sleep(3600)
