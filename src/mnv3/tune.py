"""``mnv3 tune``: the fastest deployment of one network on this CPU within an accuracy budget.

Issue 17. Which engine, precision, batch, thread count and requests-in-flight win changes
from CPU to CPU (MobileNetV3-Small batch 1 on an AVX2 EPYC: ONNX Runtime fp32 beat OpenVINO
int8; at batch 8 OpenVINO int8 won), so nothing is assumed; every choice is measured here:

1. candidates: backend (onnxruntime; openvino when installed) x quant mode (force_float32, an
   int8 mode, force_bfloat16 only on OpenVINO where the CPU computes bf16) x batch shape: one
   fixed-batch build per batch size, and one shape-mutable build per (backend, mode) that
   serves every batch size (built once, measured at each batch as a candidate of its own);
2. each is built with ``mnv3.build``, whose accuracy budget (``mnv3.gate``) decides: a refused
   build is a candidate that lost, with the build's reason. The build's own int8-vs-float
   speed check is off (``speed_check=False``): tune measures int8 against float32 itself,
   over more runtime settings;
3. runtime settings per candidate: intra-op threads (1 and all cores) and, for the throughput
   objective, requests in flight (``streams``: S requests x 1 thread); for the latency
   objective at a batch the cores divide, on an engine that can (``split_batch``), each
   call's batch split into one sub-batch per core, run at once (``split``: one request in
   flight still, its latency the whole batch's);
4. all (candidate, setting) pairs of one batch are measured interleaved: each round runs every
   pair for one short slice, in a fresh seeded random order, so drift of the shared machine
   falls on all of them alike (DESIGN.md: 2-thread speed on these VMs is bimodal for minutes).
   A pair's figure is the median of its rounds, with the min-max range. After
   ``tune_measure.PRUNE_AFTER`` rounds a pair whose fastest round is slower than the leader's
   slowest cannot win and is pruned (said in the report);
5. the winner per (objective, batch) is the measured pair with the highest median images/s
   among builds within budget; its model directory is copied to ``out/tuned/<objective>_b<B>``
   with ``meta.json extra["tuned"]`` = its runtime settings, which ``mnv3 bench`` uses when
   given no --threads / --streams. ``out/tune.md`` and ``out/tune.json`` list every candidate;
6. per winner, ``mnv3.tune_decode`` measures the fast (and, where built, the native) decode
   path against the exact one (top-1 agreement and end-to-end speed on the held-out images)
   and records ``decode`` in the tuned settings, which ``mnv3 infer`` uses by default.

``time_budget_s`` bounds the whole run: builds stop at ``tune_build.BUILD_SHARE`` of it (a
build is not started when one like it took longer than what is left), the decode check keeps
``tune_decode.SHARE``, the rounds fit the rest (fewer rounds, then shorter slices; another
round only when one as long still fits), ``REPORT_RESERVE_S`` is kept for the reports, and
the report says what was skipped to fit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mnv3.defaults import (CALIB_NUM, TUNE_BATCH_SIZES, TUNE_ROUNDS, TUNE_SLICE_S,
                           TUNE_TIME_BUDGET_S)
from mnv3.errors import UsageError
from mnv3.meta import PreprocessCfg
from mnv3.quant_mode import QuantMode
from mnv3.tune_report import say
from mnv3.tune_types import SCHEMA, Candidate, Setting, TuneReport  # noqa: F401 (the API)

OBJECTIVES = ("latency", "throughput")
SHAPES = ("fixed", "mutable")  # fixed-batch builds, shape-mutable builds
REPORT_RESERVE_S = 6.0  # kept from the time budget for choosing and writing the reports
INT8_MODE = QuantMode.INT8_FLOAT32  # float16 parts compute in float32 on ORT's CPU provider


# ----------------------------------------------------------------------------- the plan
def default_modes(backend: str, bf16: bool | None = None) -> list[QuantMode]:
    """float32 (the reference), int8, and bf16 where the backend builds it and the CPU
    computes it (``bf16``: the CPU's answer, for tests)."""
    from mnv3.backends import capabilities
    from mnv3.sysinfo import float16_support

    bf16 = float16_support()["bf16"] if bf16 is None else bf16
    modes = [QuantMode.FLOAT32, INT8_MODE]
    if bf16 and capabilities(backend).builds(QuantMode.BFLOAT16):
        modes.append(QuantMode.BFLOAT16)
    return modes


def runtime_settings(objective: str, cores: int, batch: int = 1,
                     can_split: bool = False) -> list[Setting]:
    """(threads, streams, split) to try: 1 and all cores; for throughput also `cores` requests
    x 1 thread; for latency, where the engine can and `cores` divides the batch, the batch
    split in `cores` sub-batches of 1 thread each. Not always faster, so measured like the
    rest: OpenVINO, batch 8, 2 AVX2 cores (``python benchmarks/split_batch.py``), split / one
    2-thread request: Large int8 1.08x, fp32 0.96x; Small int8 1.11x, fp32 1.17x."""
    threads = sorted({1, max(1, cores)})
    out = [Setting(t, 1) for t in threads]
    if objective == "throughput" and cores > 1:
        out.append(Setting(1, cores))
    if objective == "latency" and can_split and cores > 1 and batch % cores == 0:
        out.append(Setting(1, 1, split=cores))
    return out


def _settings_for(objective: str, cores: int):
    """The runtime settings of one candidate (its batch, its engine's capabilities)."""
    from mnv3.backends import capabilities

    return lambda c: runtime_settings(objective, cores, c.batch,
                                      capabilities(c.backend).split_batch)


def plan(backends, batch_sizes, quant_modes=None, shapes=SHAPES) -> list[Candidate]:
    """Every candidate, the fixed float32 builds of every batch first (when builds must stop
    to fit the time budget, each batch still has its reference to measure), then the other
    fixed builds, then the shape-mutable ones (one build per backend and mode, which the
    candidates of every batch share)."""
    from mnv3.backends import capabilities

    out = []
    for b in batch_sizes:
        for be in backends:
            modes = [QuantMode.parse(m) for m in quant_modes] if quant_modes \
                else default_modes(be)
            out += [Candidate(be, m, int(b), mutable=shape == "mutable") for shape in shapes
                    for m in modes if capabilities(be).builds(m)]
    out.sort(key=lambda c: (c.mutable, not c.quant_mode.is_reference, c.batch))
    return out


def _check(objective, batch_sizes, time_budget_s, backends, shapes=SHAPES) -> None:
    if not shapes or any(s not in SHAPES for s in shapes):
        raise UsageError(f"batch shapes must be among {', '.join(SHAPES)}, got {list(shapes)}")
    if objective not in OBJECTIVES:
        raise UsageError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise UsageError(f"batch sizes must be at least 1, got {list(batch_sizes)}")
    if not time_budget_s or time_budget_s <= 0:
        raise UsageError(f"the time budget must be a positive number of seconds, got "
                         f"{time_budget_s!r}")
    if not backends:
        raise UsageError("no backend to tune: install one, e.g. pip install \"mnv3[openvino]\"")


class _Clock:
    """The time budget. ``left`` is what builds and rounds may still plan for: the budget less
    a reserve for choosing and writing the reports (the plot imports matplotlib)."""

    def __init__(self, budget_s: float):
        self.t0, self.budget = time.perf_counter(), float(budget_s)
        self.reserve = min(REPORT_RESERVE_S, 0.15 * self.budget)
        self.held = 0.0  # kept for a later stage (the decode check) while rounds are fitted

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget - self.reserve - self.held - self.elapsed()


# ----------------------------------------------------------------------------- the entry point
def tune(onnx=None, *, weights=None, batch_sizes=TUNE_BATCH_SIZES, backends=None,
         quant_modes=None, objective: str = "throughput", min_agreement=None, max_drop=None,
         min_cosine=None, calib_dir=None, calib_num: int = CALIB_NUM,
         preprocess: PreprocessCfg | None = None, out="data/tune",
         time_budget_s: float = TUNE_TIME_BUDGET_S, rounds: int = TUNE_ROUNDS,
         slice_s: float = TUNE_SLICE_S, build_options: dict | None = None,
         shapes=SHAPES, decode_check: bool = True, progress: bool = True,
         seed: int = 0, network_source: dict | None = None) -> TuneReport:
    """Build, measure and choose the fastest deployment within the accuracy budget.

    Give ``onnx`` (a float32 ONNX classifier) or ``weights`` (a checkpoint, exported on the
    way). ``min_agreement`` (top-1 agreement with float32, 0-1 or percent) or ``max_drop``
    (points), with ``min_cosine``, is every reduced-precision build's budget (``mnv3.gate``;
    default 99% and 0.99).
    ``objective``: ``latency`` (one request in flight) or ``throughput`` (also several).
    ``shapes``: the batch shapes to build, ``fixed`` and/or ``mutable`` (default both).
    ``decode_check``: also decide, per winner, whether ``mnv3 infer`` decodes its images by the
    fast path by default (``mnv3.tune_decode``: measured agreement and end-to-end speed).
    Writes ``out/models/...``, ``out/tuned/<objective>_b<B>`` (the winners, runtime settings
    in meta.json extra["tuned"]), ``out/tune.md``, ``out/tune.json`` and ``out/tune.png``;
    returns the report. ``build_options`` go to every ``mnv3.build`` (e.g. ``fidelity_num``).
    ``network_source``: where ``onnx`` came from (``mnv3 run`` passes its checkpoint or seeded
    network), for a backend that compiles the network itself (torch): such a backend is tuned
    only when asked for in ``backends`` and given ``weights`` or this.
    """
    from mnv3.gate import Budget
    from mnv3.sysinfo import int8_isa, system_info
    from mnv3.tune_build import build_all
    from mnv3.tune_choose import choose
    from mnv3.tune_decode import SHARE as DECODE_SHARE
    from mnv3.tune_measure import measure_batch

    backends, left_out = _backends(backends, weights is not None or network_source is not None)
    _check(objective, batch_sizes, time_budget_s, backends, shapes)
    budget = Budget.from_options({"min_agreement": min_agreement, "max_drop": max_drop,
                                  **({} if min_cosine is None else {"min_cosine": min_cosine})})
    clock, out = _Clock(time_budget_s), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from mnv3.tune_plot import preload

    preload()  # the plot's import, off the end of the run
    onnx, preprocess, untrained, source = _source(onnx, weights, preprocess, out, progress)
    source = source or network_source
    report = TuneReport(objective, [int(b) for b in batch_sizes], budget.to_dict(),
                        float(time_budget_s), system_info(), int8_isa(), source=str(onnx),
                        slice_s=slice_s, untrained=untrained)
    report.skipped += left_out
    report.candidates = plan(backends, report.batch_sizes, quant_modes, shapes)
    options = {"progress": False, "speed_check": False, **(build_options or {}),
               "min_agreement": budget.min_agreement, "min_cosine": budget.min_cosine}
    build_all(report.candidates, onnx, out, preprocess, calib_dir, calib_num, options,
              untrained, clock, report, progress, source)
    cores = int(report.system.get("cores", {}).get("usable") or 1)
    fields = {b: [c for c in report.candidates if c.batch == b and c.status == "built"]
              for b in report.batch_sizes}
    clock.held = DECODE_SHARE * clock.budget if decode_check else 0.0
    for b, field_ in fields.items():
        measure_batch(field_, objective, _settings_for(objective, cores), rounds,
                      slice_s, clock, report, progress, seed)
    clock.held = 0.0  # now the decode check's
    check = _decode_check(decode_check, calib_dir, calib_num, clock, fields, report, progress)
    for b, field_ in fields.items():
        choose(field_, objective, b, out, report, progress, check)
    report.elapsed_s = clock.elapsed()
    if report.elapsed_s > clock.budget:  # a build or a round in progress is not cut short
        report.skipped.append(f"the run took {report.elapsed_s:.0f} s, over its "
                              f"{clock.budget:.0f} s budget: a build or a round that had "
                              "started was finished")
    from mnv3.tune_report import write_reports

    write_reports(report, out)
    return report


def _decode_check(enabled, calib_dir, calib_num, clock, fields, report, progress):
    """The decode check ``choose`` runs on each winner (None: not asked for)."""
    if not enabled:
        return None
    from mnv3.tune_decode import DecodeCheck, held_out

    files, where = held_out(calib_dir, calib_num)
    winners = sum(1 for f in fields.values() if any(c.settings for c in f))
    return DecodeCheck(files, where, clock, winners, report, progress)


def _backends(asked, have_network: bool) -> tuple[list[str], list[str]]:
    """(the backends to tune, why others were left out). By default every installed engine
    that builds from the ONNX file; one that compiles the PyTorch network (torch: minutes per
    build on a small CPU) only when asked for, and then it needs the checkpoint."""
    from mnv3.backends import capabilities, list_backends

    if asked:
        needs = [b for b in asked if capabilities(b).from_network]
        if needs and not have_network:
            raise UsageError(f"--backends {','.join(needs)} compiles the PyTorch network, which "
                             "an ONNX file cannot give back: tune from the checkpoint with "
                             "--weights CKPT, or drop it from --backends")
        return list(asked), []
    found = list_backends(available_only=True)
    network = [b for b in found if capabilities(b).from_network]
    return [b for b in found if b not in network], [
        f"{b}: not tuned by default (it compiles the PyTorch network, minutes per build); "
        "ask for it with --backends and --weights" for b in network]


def _source(onnx, weights, preprocess, out: Path, progress: bool):
    """(onnx path, preprocessing, untrained?, the source a build records) from --onnx or
    --weights (exported once); the source names the checkpoint, which the torch backend
    compiles (None for an ONNX file)."""
    if (onnx is None) == (weights is None):
        raise UsageError("give the network as onnx=FILE (--onnx) or weights=CKPT (--weights), "
                         "one of them")
    if onnx is not None:
        from mnv3 import provenance

        path = Path(onnx)
        if not path.is_file():
            raise UsageError(f"--onnx {path}: no such file; export one with 'mnv3 export'")
        untrained = bool(provenance.source_fields(path).get("untrained"))
        return path, preprocess or PreprocessCfg(), untrained, None
    from mnv3.pipeline_steps import export_or_reuse, open_source

    src = open_source(weights, "auto", "auto", None)
    say(progress, f"exporting {weights} to ONNX")
    path, _ = export_or_reuse(src, out / "onnx")
    return path, preprocess or src.preprocess, src.untrained, src.record


def load_report(path) -> dict[str, Any]:
    """tune.json as a dict (checked to be one)."""
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    if d.get("schema") != SCHEMA:
        raise UsageError(f"{path} is not a {SCHEMA} report")
    return d

