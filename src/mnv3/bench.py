"""Stage 5: benchmark a loaded model the way trtexec, benchmark_app and mm_run do.

``benchmark(session, ...)`` feeds one pre-filled input to ``session.run`` (exactly one engine
call per query, no padding into fixed batches, no per-call copies; a session loaded with
``split=S`` runs each query's batch as S sub-batches at once, and the result says so) and
returns a ``BenchResult``:

* load time and the first (cold) inference, reported apart from the steady state;
* warm-up iterations (per stream), then the measured phase, which stops after N iterations or
  T seconds (whichever comes first when both are given);
* throughput in images/s (mm_run counts images) AND queries/s (trtexec counts a batch as one
  query), over the wall time of the measured phase;
* latency per query: min / avg / p50 / p90 / p95 / p99 / max in ms, percentiles as defined in
  ``PERCENTILE_DEFINITION``;
* the configuration: backend and version, quant mode, batch, threads, streams, CPU, cores.

Streams: ``streams=S`` runs S Python threads, each calling ``run`` in a loop on the SAME
session (ONNX Runtime's ``InferenceSession.run`` is thread-safe and releases the GIL);
``stream_sessions`` gives each stream its own session instead. Measured here with
``benchmarks/streams.py`` (2 streams x 1 thread, interleaved rounds, shared/separate ratio):
0.99, 1.01, 1.09, 1.12 for Small b1, Large b1, Small b8, Small b1 on mnv3 builds, 0.97-1.06 on
bare ORT sessions: no consistent difference, so the CLI shares one session, which loads once.
Both beat one request at a time with 2 intra-op threads by about 2x (measured while other jobs
shared the 2 vCPUs, which hurts 2-thread synchronous runs most).
``threads`` is the engine's intra-op thread count per request.

The timed loop (``mnv3.bench_loop``) keeps Python out of the way: the input is built once,
``session.run`` is bound to a local, and the only work between engine calls is two
``perf_counter`` reads and a list append (about 0.1 us), plus ``Session.run``'s input checks
(about 2 us), against hundreds of us per query; ``benchmarks/bench_vs_loop.py`` checks the figures against an independent
``perf_counter`` loop around ``session.run`` in the same process.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from mnv3.defaults import BENCH_ITERATIONS, BENCH_WARMUP
from mnv3.errors import UsageError
from mnv3.bench_loop import measure
from mnv3.sysinfo import others_cores, system_info

SCHEMA = "mnv3.bench/1"
DEFAULT_ITERATIONS = BENCH_ITERATIONS
BUSY_CORES = 0.25  # other processes' CPU use above which a result carries a warning note
PERCENTILE_DEFINITION = (
    "linear interpolation between closest ranks (numpy.percentile's default method='linear', "
    "Hyndman & Fan type 7): sort the n latencies v[0..n-1]; the p-th percentile is "
    "v[k] + f*(v[k+1]-v[k]) where k + f = (n-1)*p/100"
)
PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: list[float] | np.ndarray, p: float) -> float:
    """The p-th percentile (0..100) of already-sorted values, per ``PERCENTILE_DEFINITION``."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of an empty list")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    rank = (n - 1) * p / 100.0
    k = math.floor(rank)
    f = rank - k
    if k + 1 >= n:
        return float(sorted_values[n - 1])
    lo, hi = float(sorted_values[k]), float(sorted_values[k + 1])
    return lo + f * (hi - lo)


@dataclass
class LatencyStats:
    """Latency per query in milliseconds."""

    min: float
    avg: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float

    @classmethod
    def from_seconds(cls, samples: list[float]) -> LatencyStats:
        if not samples:
            raise ValueError("no latency samples")
        ms = sorted(s * 1e3 for s in samples)
        pct = {f"p{p}": percentile(ms, p) for p in PERCENTILES}
        return cls(min=ms[0], avg=math.fsum(ms) / len(ms), max=ms[-1], **pct)


@dataclass
class BenchResult:
    """One benchmark run. ``to_dict``/``from_dict`` are the one JSON serializer."""

    model: str  # e.g. 'force_float32_false_8', or a baseline's name
    backend: str
    backend_version: str
    quant_mode: str
    shape_mutable: bool
    batch: int
    threads: int | None  # intra-op threads per request; None = the engine's default
    streams: int
    warmup: int  # warm-up iterations per stream, not measured
    iterations: int  # measured queries, all streams together
    duration_s: float  # wall time of the measured phase
    stop: str  # what ended the measured phase, e.g. 'iterations=1000' or 'duration=10s'
    throughput_ips: float  # images per second
    throughput_qps: float  # queries (engine calls) per second
    latency_ms: LatencyStats
    load_time_ms: float | None = None
    first_run_ms: float | None = None  # the cold first inference, not in the statistics
    # cores' worth of CPU taken by other processes during the measured phase (None: unknown)
    other_cpu_load: float | None = None
    sessions: int = 1  # engine sessions serving the streams (1: all streams share one)
    split: int = 1  # sub-batches each query ran as, at once (mnv3.load(split=S))
    percentile_definition: str = PERCENTILE_DEFINITION
    system: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    schema: str = SCHEMA
    # images/s of each interleaved round, in order (merge_results); [] for a single run
    rounds_ips: list[float] = field(default_factory=list)
    # An accelerator's own view (sessions with ``device_report``, e.g. torch on CUDA): the GPU's
    # name, driver and clocks, and device time per query from CUDA events. None on the CPU.
    device: dict[str, Any] | None = None
    # Raw per-query latencies in seconds, kept in memory for merging rounds; not serialized.
    samples: list[float] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["samples"]
        if d["device"] is None:  # CPU results keep the schema they always had
            del d["device"]
        return d

    def median_ips(self) -> float:
        """Throughput to quote: the median round's images/s (the pooled figure for one run).
        Two identical runs differed by up to 30% in a pooled cell on a shared 2-vCPU VM: the
        median of interleaved rounds, with their range, says how much to trust it (issue 13)."""
        return float(np.median(self.rounds_ips)) if self.rounds_ips else self.throughput_ips

    def ips_range(self) -> tuple[float, float]:
        """(slowest, fastest) round in images/s; both the pooled figure for one run."""
        r = self.rounds_ips or [self.throughput_ips]
        return float(min(r)), float(max(r))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchResult:
        if d.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} result (schema={d.get('schema')!r})")
        known = {f.name for f in fields(cls)} - {"samples"}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["latency_ms"] = LatencyStats(**d["latency_ms"])
        return cls(**kwargs)


def benchmark(session, *, batch: int | None = None, threads: int | None = None,
              streams: int = 1, iterations: int | None = None, duration: float | None = None,
              warmup: int = BENCH_WARMUP, load_time_s: float | None = None, first_run: bool = True,
              label: str | None = None, stream_sessions=None) -> BenchResult:
    """Measure ``session`` (an ``mnv3.backends.base.Session``) on a pre-filled input.

    batch: images per query; default = ``meta.default_batch`` (the batch it was built for).
        A fixed-batch model given another batch raises the Session's ModelError.
    threads: recorded as the intra-op thread count; the session must have been opened with it
        (``mnv3.load(dir, threads=T)``). None: read ``session.threads`` if the backend has it.
    streams: concurrent requests, each a thread calling ``run`` in a loop.
    stream_sessions: one session per stream (``session`` first), e.g. S ``mnv3.load`` calls;
        None: every stream calls ``session``.
    iterations / duration: stop after this many queries or seconds, whichever comes first;
        neither given: ``DEFAULT_ITERATIONS`` queries.
    warmup: unmeasured iterations per stream after the first run.
    load_time_s: how long loading the session took (measured by the caller), reported apart.
    first_run: time the first call separately (cold); False if the session already ran.
    """
    batch, streams, iterations, duration, stop = _validate(
        session, batch, streams, iterations, duration, warmup)
    pool = list(stream_sessions) if stream_sessions else [session] * streams
    if len(pool) != streams:
        raise UsageError(f"{len(pool)} stream sessions given for {streams} streams")
    if threads is None:
        threads = getattr(session, "threads", None)
    x = _prefilled_input(session, batch)
    first_ms = None
    if first_run:
        t0 = time.perf_counter()
        session.run(x)  # also where a fixed-batch model refuses a wrong batch
        first_ms = (time.perf_counter() - t0) * 1e3
    per_stream, wall, cpu = measure([s.run for s in pool], x, iterations, duration, warmup)
    others = others_cores(cpu[0], cpu[1], wall)
    samples = [s for lat in per_stream for s in lat]
    result = _result(session, label, batch, threads, streams, warmup, samples, wall, stop,
                     load_time_s, first_ms)
    result.other_cpu_load = others
    result.sessions = len({id(s) for s in pool})
    report = getattr(session, "device_report", None)
    result.device = report() if report is not None else None
    if others is not None and others > BUSY_CORES:
        result.notes.append(
            f"other processes kept {others:.1f} of {result.system['cores']['usable']} cores busy "
            "while this was measured: figures are lower and noisier than on an idle machine")
    return result


def merge_results(results: list[BenchResult]) -> BenchResult:
    """Rounds of one configuration, interleaved in time with others, as one result.

    Latencies are pooled; throughput is total images over total measured wall time, and each
    round's images/s is kept (``rounds_ips``: ``median_ips``, ``ips_range``). Load time and
    first run come from the first round (later rounds are warm by construction).
    """
    if not results:
        raise ValueError("nothing to merge")
    first = results[0]
    if any(not r.samples for r in results):
        raise ValueError("merge_results needs in-memory samples (results straight from benchmark)")
    samples = [s for r in results for s in r.samples]
    wall = sum(r.duration_s for r in results)
    iters = len(samples)
    merged = BenchResult(**{**{f.name: getattr(first, f.name) for f in fields(first)},
                            "iterations": iters, "duration_s": wall,
                            "stop": f"{len(results)} interleaved rounds of {first.stop}",
                            "throughput_ips": iters * first.batch / wall,
                            "throughput_qps": iters / wall,
                            "latency_ms": LatencyStats.from_seconds(samples),
                            "other_cpu_load": _weighted_load(results),
                            "notes": list(dict.fromkeys(n for r in results for n in r.notes)),
                            "rounds_ips": [r.throughput_ips for r in results],
                            "samples": samples})
    return merged


def _weighted_load(results: list[BenchResult]) -> float | None:
    loads = [(r.other_cpu_load, r.duration_s) for r in results]
    if any(v is None for v, _ in loads):
        return None
    return sum(v * d for v, d in loads) / sum(d for _, d in loads)


def _validate(session, batch, streams, iterations, duration, warmup):
    batch = int(batch) if batch is not None else session.meta.default_batch
    if batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    if streams < 1:
        raise UsageError(f"--streams must be at least 1, got {streams}")
    if warmup < 0:
        raise UsageError(f"--warmup must be 0 or more, got {warmup}")
    if iterations is not None and iterations < 1:
        raise UsageError(f"--iterations must be at least 1, got {iterations}")
    if duration is not None and not duration > 0:
        raise UsageError(f"--duration must be a positive number of seconds, got {duration}")
    if iterations is None and duration is None:
        iterations = DEFAULT_ITERATIONS
    if iterations is not None and iterations < streams:
        raise UsageError(f"--iterations {iterations} is fewer than --streams {streams}")
    stop = " or ".join(s for s in (iterations and f"iterations={iterations}",
                                   duration and f"duration={duration:g}s") if s)
    return batch, streams, iterations, duration, stop


def _prefilled_input(session, batch: int) -> np.ndarray:
    """A fixed random input of the model's shape, made once (values do not change the work)."""
    shape = (batch, *(int(d) for d in session.meta.input_shape[1:]))
    return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


def _result(session, label, batch, threads, streams, warmup, samples, wall, stop,
            load_time_s, first_ms) -> BenchResult:
    meta = session.meta
    info = system_info()
    version = info["versions"].get(meta.backend) or meta.backend_version
    return BenchResult(
        model=label or meta.name, backend=meta.backend, backend_version=version,
        quant_mode=meta.quant_mode, shape_mutable=bool(meta.shape_mutable), batch=batch,
        threads=threads, streams=streams, warmup=warmup, iterations=len(samples),
        duration_s=wall, stop=stop, throughput_ips=len(samples) * batch / wall,
        throughput_qps=len(samples) / wall, latency_ms=LatencyStats.from_seconds(samples),
        load_time_ms=None if load_time_s is None else load_time_s * 1e3,
        first_run_ms=first_ms, system=info, notes=list(getattr(meta, "notes", []) or []),
        samples=samples, split=int(getattr(session, "split", 1) or 1),
    )
