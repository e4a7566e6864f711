"""What a run measured, as data: ``RunReport`` (with its rows) and its report.json form.

Apart from ``mnv3.report`` (text and files) so that ``mnv3.report_plot`` can read a report
without importing the module that imports it (issue 14: the two imported each other).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mnv3.backends import DEFAULT_BACKEND
from mnv3.bench import BenchResult

SCHEMA = "mnv3.run/1"
BASELINE_TORCH = "pytorch-eager-fp32"
BASELINE_ORT = "onnxruntime-plain-fp32"
BASELINE_TITLES = {BASELINE_TORCH: "PyTorch eager fp32", BASELINE_ORT: "ORT plain fp32"}


@dataclass
class ModelRow:
    """One built model (quant mode x shape mutability x batch) and what it measured."""

    name: str  # the seed's QuantMode_ShapeMutable_BatchSize, e.g. force_float32_false_8
    quant_mode: str
    shape_mutable: bool
    batch: int
    model_dir: str
    reused: bool = False  # True: an existing build whose meta.json matched was used
    build_s: float | None = None
    accuracy: dict[str, Any] | None = None  # top1, top5, agreement, images (fractions 0..1)
    bench: BenchResult | None = None
    notes: list[str] = field(default_factory=list)
    backend: str = DEFAULT_BACKEND
    replaced: list[str] = field(default_factory=list)  # settings a rebuild changed, if any
    # ``mnv3 run --tune``: the winner's runtime settings (threads, streams), run as tuned
    tuned: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        """Unique within a run: the same name is built once per backend."""
        return f"{self.backend}/{self.name}"


@dataclass
class BaselineRow:
    name: str  # BASELINE_TORCH or BASELINE_ORT
    batch: int
    bench: BenchResult


@dataclass
class RunReport:
    model: str  # e.g. 'mobilenetv3-small (seed layout, width 1.0)'
    untrained: bool  # True: random init, top-1/top-5 mean nothing
    device: str
    rows: list[ModelRow] = field(default_factory=list)
    baselines: list[BaselineRow] = field(default_factory=list)
    weights: str | None = None
    dataset: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    schema: str = SCHEMA

    def baseline(self, name: str, batch: int) -> BenchResult | None:
        return next((b.bench for b in self.baselines if b.name == name and b.batch == batch), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for row, src in zip(d["rows"], self.rows):
            row["bench"] = src.bench.to_dict() if src.bench else None
        for row, src in zip(d["baselines"], self.baselines):
            row["bench"] = src.bench.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunReport:
        if d.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} report (schema={d.get('schema')!r})")
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["rows"] = [ModelRow(**{**r, "bench": r["bench"] and BenchResult.from_dict(r["bench"])})
                      for r in d.get("rows", [])]
        kw["baselines"] = [BaselineRow(**{**b, "bench": BenchResult.from_dict(b["bench"])})
                           for b in d.get("baselines", [])]
        return cls(**kw)


def backends(rep: RunReport) -> list[str]:
    """The report's backends, in the order their first row appears."""
    return list(dict.fromkeys(r.backend for r in rep.rows))
