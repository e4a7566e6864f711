"""The records of ``mnv3 tune``: a runtime setting, a candidate build and the whole report
(``TuneReport.to_dict`` is tune.json). Kept apart from ``mnv3.tune`` (the run itself).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from mnv3.defaults import TUNE_SLICE_S
from mnv3.meta import model_dir_name
from mnv3.quant_mode import QuantMode

SCHEMA = "mnv3.tune/1"


@dataclass
class Setting:
    """One runtime setting of a candidate and what it measured (images/s per round)."""

    threads: int
    streams: int
    rounds_ips: list[float] = field(default_factory=list)
    rounds_p50_ms: list[float] = field(default_factory=list)
    status: str = "pending"  # measured | pruned | winner | not measured
    why: str = ""
    split: int = 1  # one call's batch run as this many sub-batches at once (mnv3.load)

    @property
    def label(self) -> str:
        if self.split > 1:
            return f"batch split in {self.split} x {self.threads} thr"
        return f"{self.streams} x {self.threads} thr" if self.streams > 1 else f"{self.threads} thr"

    def median(self) -> float | None:
        return statistics.median(self.rounds_ips) if self.rounds_ips else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        r = self.rounds_ips
        d.update(median_ips=self.median(), min_ips=min(r) if r else None,
                 max_ips=max(r) if r else None,
                 p50_ms=statistics.median(self.rounds_p50_ms) if self.rounds_p50_ms else None)
        return d


@dataclass
class Candidate:
    """A build (backend x quant mode x batch shape) run at one batch, and its runtime settings.
    Shape-mutable candidates of one (backend, mode) share a build (``shares``: the one that
    built it)."""

    backend: str
    quant_mode: QuantMode
    batch: int
    mutable: bool = False  # a shape-mutable build run at ``batch``
    model_dir: str | None = None
    status: str = "pending"  # built | refused | failed | skipped
    why: str = ""  # why it lost, was refused or skipped ("" for the winners)
    fidelity: dict[str, Any] | None = None  # top1_agreement, cosine_mean, within_budget
    build_s: float | None = None
    reused: bool = False  # built by an earlier tune with the same settings and budget
    shares: str | None = None  # a mutable candidate: the candidate whose build it runs
    settings: list[Setting] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.backend}/{model_dir_name(self.quant_mode, self.mutable, self.batch)}"

    @property
    def shape(self) -> str:
        return "mutable" if self.mutable else "fixed"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["settings"] = [s.to_dict() for s in self.settings]
        return d


@dataclass
class TuneReport:
    """What ``tune`` measured and chose; ``to_dict`` is tune.json."""

    objective: str
    batch_sizes: list[int]
    budget: dict[str, Any]
    time_budget_s: float
    system: dict[str, Any]
    isa: str  # the CPU's int8 ISA, printed beside every figure
    candidates: list[Candidate] = field(default_factory=list)
    winners: dict[str, dict[str, Any]] = field(default_factory=dict)  # "<objective>_b<B>"
    skipped: list[str] = field(default_factory=list)  # what was left out to fit the budget
    rounds: dict[str, int] = field(default_factory=dict)  # batch -> rounds measured
    slice_s: float = TUNE_SLICE_S
    elapsed_s: float = 0.0
    source: str = ""
    untrained: bool = False  # random weights: the budget is measured and marked, not held
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidates"] = [c.to_dict() for c in self.candidates]
        return d
