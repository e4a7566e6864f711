"""`mnv3 serve` under load against `mnv3 bench`'s engine-only speed (issue 18).

Target: the service holds 20 concurrent clients for 60 s on loopback with no errors, and its
requests/s is >= 70% of the engine-only images/s (``mnv3.benchmark``, same model, same batch).
The model is a seeded random MobileNetV3 (speed does not depend on the weights) built
force_float32 with a fixed batch (default 8), served with --max-batch-size equal to it.

Measured, interleaved round after round (DESIGN.md: 2-vCPU speed is bimodal):

* engine : ``mnv3.benchmark(session, batch=B, duration=--bench-s)``: the engine alone, one
           pre-filled input, the engine's default threads;
* local  : ``mnv3 serve --engine local`` (a subprocess, as deployed) loaded by
           ``mnv3.serve_load.load_test`` (this process: --concurrency clients, keep-alive, real
           JPEGs POSTed as image/jpeg) for --duration seconds; decoding every request's image
           is in the service's figure, not in the engine's;
* ray    : the same against ``mnv3 serve --engine ray --replicas 1 --threads T`` (started once,
           its start-up printed apart), with --engines local,ray.

    python benchmarks/serve_load.py [--duration 60] [--concurrency 20] [--rounds 2] \\
        [--engines local,ray] [--arch mobilenetv3-large] [--batch 8] [--batch-wait-ms 10] \\
        [--decodes exact,fast,native]

``--decodes exact,fast`` serves each engine both ways (``mnv3 serve --decode``; fast is what a
model gets where ``mnv3 tune`` measured that it keeps top-1), interleaved in the same rounds;
``native`` decodes the exact pixels in C++ (``mnv3 build-cpp`` first).

Images: ../shared/datasets/imagenet-sample-500 (else the bundled demo photos); the load
generator cycles the first 64.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import export_fp32, interleave, median, median_ratio  # noqa: E402

import mnv3  # noqa: E402
from mnv3.data.datasets import demo_dir  # noqa: E402
from mnv3.serve_load import load_test  # noqa: E402
from mnv3.sysinfo import cpu_model, isa_label  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared/datasets/imagenet-sample-500"


def start_service(model: Path, engine: str, batch: int, threads: int | None, wait_ms: float,
                  decode: str = "exact"):
    """``mnv3 serve`` in a subprocess; (process, URL) once it prints its startup line."""
    argv = [sys.executable, "-m", "mnv3.cli.main", "serve", "--model", str(model), "--port",
            "0" if engine == "local" else str(_free_port()), "--engine", engine,
            "--max-batch-size", str(batch), "--batch-wait-ms", str(wait_ms), "--decode", decode]
    if threads:
        argv += ["--threads", str(threads)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if " at http://" not in line:
        proc.kill()
        raise SystemExit(f"mnv3 serve --engine {engine} did not start: {line!r}")
    return proc, line.split(" at ", 1)[1].split()[0]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_ips(model: Path, batch: int, seconds: float) -> float:
    with mnv3.load(model) as session:
        return mnv3.benchmark(session, batch=batch, duration=seconds).throughput_ips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load per round")
    ap.add_argument("--bench-s", type=float, default=10.0, help="engine-only seconds per round")
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--engines", default="local", help="local and/or ray, comma-separated")
    ap.add_argument("--ray-threads", type=int, default=2, help="engine threads of the replica")
    ap.add_argument("--arch", default="mobilenetv3-large")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=10.0, help="the services' batch wait")
    ap.add_argument("--decodes", default="exact", help="exact, fast and/or native, comma-separated")
    args = ap.parse_args()
    folder = SHARED / "images" if SHARED.is_dir() else demo_dir() / "images"
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
    with tempfile.TemporaryDirectory(prefix="mnv3-serve-load-") as tmp:
        _, onnx_path = export_fp32(args.arch, out_dir=tmp)
        model = Path(tmp) / "model"
        mnv3.build(onnx_path, model, quant_mode="force_float32", shape_mutable=False,
                   batch_size=args.batch, options={"progress": False})
        services = {}
        try:
            decodes = args.decodes.split(",")
            for engine in args.engines.split(","):
                for decode in decodes:
                    name = engine if len(decodes) == 1 else f"{engine}/{decode}"
                    t0 = time.perf_counter()
                    services[name] = start_service(
                        model, engine, args.batch, args.ray_threads if engine == "ray" else None,
                        args.batch_wait_ms, decode)
                    print(f"{name} service up in {time.perf_counter() - t0:.1f} s: "
                          f"{services[name][1]}", file=sys.stderr)

            def measure(name, _):
                if name == "engine":
                    return {"ips": engine_ips(model, args.batch, args.bench_s)}
                r = load_test(services[name][1], images, concurrency=args.concurrency,
                              duration=args.duration)
                return {"ips": r.requests_per_s, "errors": r.errors, "kinds": r.error_kinds,
                        "p50": r.latency_ms["p50"],
                        "p95": r.latency_ms["p95"], "p99": r.latency_ms["p99"],
                        "requests": r.requests}

            res = interleave({"engine": None, **{e: None for e in services}}, args.rounds,
                             measure)
        finally:
            for proc, _ in services.values():
                proc.terminate()
                proc.wait(timeout=60)
    report(res, args, folder)


def report(res, args, folder: Path) -> None:
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores, {isa_label()}); {args.arch} random "
          f"weights, force_float32, fixed batch {args.batch}, batch wait "
          f"{args.batch_wait_ms:g} ms; decode {args.decodes}; images from {folder}; "
          f"load average {os.getloadavg()[0]:.1f}")
    engine = [r["ips"] for r in res["engine"]]
    print(f"engine only : {median(engine):.1f} images/s (median of {args.rounds}; rounds "
          f"{min(engine):.1f}-{max(engine):.1f})")
    for name, rows in res.items():
        if name == "engine":
            continue
        ips = [r["ips"] for r in rows]
        ratio = median_ratio(ips, engine)
        verdict = "meets" if ratio >= 0.7 else "MISSES"
        print(f"serve {name:<11}: {median(ips):.1f} requests/s with {args.concurrency} clients x "
              f"{args.duration:g} s, {ratio:.2f}x engine-only ({verdict} the 0.70 target); "
              f"errors {sum(r['errors'] for r in rows)} {[r['kinds'] for r in rows]}; requests "
              f"{sum(r['requests'] for r in rows)}; latency ms p50/p95/p99 (median of rounds) "
              f"{median([r['p50'] for r in rows]):.0f}/{median([r['p95'] for r in rows]):.0f}/"
              f"{median([r['p99'] for r in rows]):.0f}")


if __name__ == "__main__":
    main()
