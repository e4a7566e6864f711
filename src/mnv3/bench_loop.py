"""The hot loop of ``mnv3.bench``: timed engine calls on one or several threads (streams).

Kept apart so the loop can be read on its own: nothing happens between two engine calls but
two ``perf_counter`` reads and a list append, and the CPU clocks that tell how busy the
machine was are read just outside the measured phase (never inside it).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from mnv3.sysinfo import cpu_clocks


def timed_loop(run, x, count: int, deadline: float | None) -> list[float]:
    """The hot loop: per-query latency in seconds. Nothing else happens between calls."""
    clock = time.perf_counter
    lat: list[float] = []
    add = lat.append
    if deadline is None:
        for _ in range(count):
            t0 = clock()
            run(x)
            add(clock() - t0)
        return lat
    for _ in range(count):
        t0 = clock()
        run(x)
        t1 = clock()
        add(t1 - t0)
        if t1 >= deadline:
            break
    return lat


def measure(runs, x, iterations, duration, warmup):
    """Warm up, then the timed loop, one thread per entry of ``runs``.

    Returns (latencies per stream, wall seconds, CPU clocks at the start and end of the
    measured phase: warm-up excluded, so other processes' share is over the same interval).
    """
    streams = len(runs)
    total = iterations if iterations is not None else sys.maxsize
    quotas = [total // streams + (i < total % streams) for i in range(streams)]
    if streams == 1:
        run = runs[0]
        for _ in range(warmup):
            run(x)
        cpu0 = cpu_clocks()
        start = time.perf_counter()
        deadline = start + duration if duration else None
        lat = timed_loop(run, x, quotas[0], deadline)
        wall = time.perf_counter() - start
        return [lat], wall, (cpu0, cpu_clocks())
    return measure_threads(runs, x, quotas, duration, warmup)


def measure_threads(runs, x, quotas, duration, warmup):
    streams = len(quotas)
    shared: dict[str, float] = {}
    results: list[Any] = [None] * streams
    ends = [0.0] * streams

    def start_clock():  # runs once, when every stream has warmed up
        shared["cpu"] = cpu_clocks()
        shared["start"] = time.perf_counter()

    barrier = threading.Barrier(streams, action=start_clock)

    def worker(i: int):
        run = runs[i]
        try:
            xi = x.copy()  # each request owns its input buffer, as separate clients would
            for _ in range(warmup):
                run(xi)
            barrier.wait()
            deadline = shared["start"] + duration if duration else None
            results[i] = timed_loop(run, xi, quotas[i], deadline)
            ends[i] = time.perf_counter()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            results[i] = e
            barrier.abort()

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(streams)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    errors = [r for r in results if isinstance(r, BaseException)]
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    cpu1 = cpu_clocks()  # includes the threads' exit: microseconds against a measured phase
    return results, max(ends) - shared["start"], (shared["cpu"], cpu1)
