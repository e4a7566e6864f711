"""``mnv3 tune``'s measurements: every (build, runtime setting) pair of a batch, interleaved.

Each round runs every pair for one short slice in a fresh seeded random order, so drift of a
shared machine falls on all alike (DESIGN.md); a pair's figure is the median of its rounds with
the min-max range. After ``PRUNE_AFTER`` rounds a pair whose fastest round is slower than the
leader's slowest cannot win and stops being measured.
"""

from __future__ import annotations

import random
from typing import Any

from mnv3.tune_report import say

MIN_ROUNDS, PRUNE_AFTER = 3, 3
MIN_SLICE_S = 0.05


def measure_batch(field_, objective, make_settings, rounds, slice_s, clock, report,
                  progress, seed) -> None:
    """Interleaved rounds over every (candidate, setting) pair of one batch."""
    from mnv3.bench import benchmark

    if not field_:
        return
    batch = field_[0].batch
    pairs = [(c, s) for c in field_ for s in make_settings(c)]
    for c in field_:
        c.settings = [s for cc, s in pairs if cc is c]
    sessions: dict[int, Any] = {}
    try:
        _open_warm(pairs, sessions)  # before fitting the rounds: loading takes time too
        left = _share_left(clock, report, batch)
        deadline = clock.elapsed() + left
        n_rounds, slice_s = _fit(len(pairs), rounds, slice_s, left, report, batch)
        rng = random.Random(seed)
        for r in range(n_rounds):
            t0 = clock.elapsed()
            live = [(c, s) for c, s in pairs if s.status != "pruned"]
            rng.shuffle(live)
            for c, s in live:
                res = benchmark(sessions[id(s)], batch=c.batch, streams=s.streams,
                                duration=slice_s, iterations=10**9, warmup=1, first_run=False)
                s.rounds_ips.append(res.throughput_ips)
                s.rounds_p50_ms.append(res.latency_ms.p50)
            if r + 1 >= PRUNE_AFTER:
                prune([s for _, s in pairs], objective)
            say(progress, f"batch {batch}: round {r + 1}/{n_rounds} measured "
                           f"({clock.elapsed():.0f} s of {clock.budget:.0f} s)")
            # one round is always measured; another only if one as long as this still fits
            if r + 1 < n_rounds and clock.elapsed() + (clock.elapsed() - t0) > deadline:
                report.skipped.append(f"batch {batch}: stopped after {r + 1} of {n_rounds} "
                                      "rounds, another would not fit the time budget")
                break
    finally:
        for sess in sessions.values():
            sess.close()
    for s in (s for _, s in pairs):
        if s.status == "pending":
            s.status = "measured"
    report.rounds[str(field_[0].batch)] = len(max((s.rounds_ips for _, s in pairs), key=len))


def _open_warm(pairs, sessions: dict) -> None:
    """One session per (candidate, setting), each warmed before the first timed round."""
    from mnv3.backends import load
    from mnv3.bench import benchmark

    for c, s in pairs:
        sessions[id(s)] = load(c.model_dir, threads=s.threads, streams=s.streams,
                               split=s.split)
        benchmark(sessions[id(s)], batch=c.batch, streams=s.streams,
                  iterations=max(3, s.streams), warmup=2, first_run=False)


def _share_left(clock, report, batch) -> float:
    """This batch's share of what is left of the time budget (the batches still to measure
    share it evenly)."""
    return clock.left() / max(1, len(report.batch_sizes) - report.batch_sizes.index(batch))


def _fit(n_pairs, rounds, slice_s, left, report, batch) -> tuple[int, float]:
    """Rounds and slice length that fit ``left`` seconds for this batch."""
    per_round = n_pairs * (slice_s + 0.05)  # + the warm-up query per slice, roughly
    fit = int(left // per_round) if per_round > 0 else rounds
    if fit >= rounds:
        return rounds, slice_s
    if fit >= MIN_ROUNDS:
        report.skipped.append(f"batch {batch}: {fit} rounds instead of {rounds} to fit the "
                              "time budget")
        return fit, slice_s
    short = max(MIN_SLICE_S, left / (MIN_ROUNDS * n_pairs) - 0.05)
    report.skipped.append(f"batch {batch}: {MIN_ROUNDS} rounds of {short:.2f} s slices instead "
                          f"of {rounds} of {slice_s:g} s to fit the time budget")
    report.slice_s = min(report.slice_s, short)
    return MIN_ROUNDS, short


def prune(settings: list, objective: str) -> None:
    """A pair whose fastest round is slower than the leader's slowest round cannot win."""
    live = [s for s in settings if s.status != "pruned" and s.rounds_ips]
    if objective == "latency":
        live = [s for s in live if s.streams == 1]
    if len(live) < 2:
        return
    leader = max(live, key=lambda s: s.median())
    for s in live:
        if s is not leader and max(s.rounds_ips) < min(leader.rounds_ips):
            s.status = "pruned"
            s.why = (f"pruned after {len(s.rounds_ips)} rounds: its fastest round "
                     f"({max(s.rounds_ips):.1f} images/s) was slower than the leader's "
                     f"slowest ({min(leader.rounds_ips):.1f})")


