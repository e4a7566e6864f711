"""What a run proved, for people and machines: Markdown tables, report.json, report.png.

``RunReport`` is what ``mnv3.pipeline.run_all`` returns. It renders the seed's two tables
(performance, accuracy) plus a baselines table where every mnv3 speed figure gets its ratio
against PyTorch eager fp32 and a plain ONNX Runtime session, both measured in the same run on
the same input and threads. ``write_report`` writes report.md, report.json and report.png into
the output folder, each atomically (a reader never sees half a file).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

from mnv3.atomic import atomic_file, atomic_write_text
from mnv3.bench import BenchResult
from mnv3.report_data import (  # noqa: F401 - mnv3.report stays where callers import them
    BASELINE_ORT, BASELINE_TITLES, BASELINE_TORCH, SCHEMA, BaselineRow, ModelRow, RunReport,
    backends)
from mnv3.sysinfo import isa_label

# ----------------------------------------------------------------------------- text


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _f(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _ids(rep: RunReport, r: ModelRow) -> list[str]:
    """The row's name, after a Backend cell when the report holds several backends."""
    return [r.backend, r.name] if len(backends(rep)) > 1 else [r.name]


def _id_header(rep: RunReport) -> list[str]:
    name = "QuantMode_ShapeMutable_BatchSize"
    return ["Backend", name] if len(backends(rep)) > 1 else [name]


def _rounds(rep: RunReport) -> int:
    return int(rep.config.get("rounds", 1) or 1)


def _spread(b: BenchResult | None) -> str:
    if b is None:
        return "n/a"
    lo, hi = b.ips_range()
    return f"{lo:.1f}-{hi:.1f}"


def performance_table(rep: RunReport) -> str:
    """The seed's table; throughput is the median of the interleaved rounds, with their range."""
    header = ["Model", *_id_header(rep), "Throughput (images/s)",
              f"min-max of {_rounds(rep)} round{'s' if _rounds(rep) != 1 else ''}",
              "Latency Avg (ms)", "95% (ms)", "99% (ms)",
              "device"]
    rows = []
    for r in rep.rows:
        b = r.bench
        rows.append([rep.model, *_ids(rep, r), _f(b and b.median_ips(), 1), _spread(b),
                     _f(b and b.latency_ms.avg, 3), _f(b and b.latency_ms.p95, 3),
                     _f(b and b.latency_ms.p99, 3), rep.device])
    return _table(header, rows)


def round_ratio(ours: BenchResult, base: BenchResult) -> float:
    """Median of the per-round ratios (round i of both was measured side by side), or the
    ratio of the figures when rounds were not kept."""
    import statistics

    if ours.rounds_ips and len(ours.rounds_ips) == len(base.rounds_ips):
        return statistics.median(a / b for a, b in zip(ours.rounds_ips, base.rounds_ips) if b)
    return ours.median_ips() / base.median_ips()


def accuracy_table(rep: RunReport) -> str:
    header = ["Model", *_id_header(rep), "top1", "top5", "agreement with fp32", "device"]
    mark = " (untrained)" if rep.untrained else ""
    rows = []
    for r in rep.rows:
        a = r.accuracy or {}
        rows.append([rep.model, *_ids(rep, r), _pct(a.get("top1")) + mark,
                     _pct(a.get("top5")) + mark, _pct(a.get("agreement")), rep.device])
    return _table(header, rows)


def baselines_table(rep: RunReport) -> str:
    """mnv3 images/s beside both baselines at the same batch, with the ratios."""
    header = [*_id_header(rep), "mnv3 (images/s)"]
    for name in (BASELINE_TORCH, BASELINE_ORT):
        header += [f"{BASELINE_TITLES[name]} (images/s)", f"x vs {BASELINE_TITLES[name]}"]
    rows = []
    for r in rep.rows:
        ours = r.bench.median_ips() if r.bench else None
        cells = [*_ids(rep, r), _f(ours, 1)]
        for name in (BASELINE_TORCH, BASELINE_ORT):
            base = rep.baseline(name, r.batch)
            ratio = round_ratio(r.bench, base) if r.bench and base else None
            cells += [_f(base and base.median_ips(), 1), _f(ratio, 2) + ("x" if ratio else "")]
        rows.append(cells)
    return _table(header, rows)


def builds_table(rep: RunReport) -> str:
    """Per model: built or reused, cold start apart from the steady state, end-to-end infer."""
    header = [*_id_header(rep), "build", "load (ms)", "first run (ms)",
              "infer end-to-end (images/s)", "engine only (images/s)"]
    rows = []
    for r in rep.rows:
        b, a = r.bench, r.accuracy or {}
        built = "reused" if r.reused else (f"{r.build_s:.1f} s" if r.build_s else "n/a")
        rows.append([*_ids(rep, r), built, _f(b and b.load_time_ms, 1), _f(b and b.first_run_ms, 2),
                     _f(a.get("end_to_end_images_per_s"), 1),
                     _f(a.get("engine_images_per_s"), 1)])
    return _table(header, rows)


def untrained_warning(rep: RunReport | None = None) -> str:
    return ("**UNTRAINED MODEL**: no --weights given, so the network has a deterministic random "
            "initialization (seed 0). Its top-1/top-5 are meaningless and marked (untrained); "
            "agreement with fp32 and all speed figures are still real.")


def markdown(rep: RunReport) -> str:
    """The whole report.md."""
    b0 = next((r.bench for r in rep.rows if r.bench), None)
    versions = {r.backend: r.bench.backend_version for r in rep.rows if r.bench}
    engines = ", ".join(f"{b} {versions.get(b, '')}".strip() for b in backends(rep)) or "?"
    parts = [f"# mnv3 run: {rep.model}", ""]
    if rep.untrained:
        parts += ["> " + untrained_warning(rep), ""]
    ds = rep.dataset
    parts += [
        f"- weights: {rep.weights or 'none (random init, seed 0)'}",
        f"- dataset: {ds.get('image_dir', '?')} ({ds.get('images', '?')} images"
        f"{', bundled demo set' if ds.get('demo') else ''})",
        f"- backend{'s' if len(backends(rep)) > 1 else ''}: {engines}, threads "
        f"{rep.config.get('threads')}, streams 1",
        f"- device: {rep.device}; {_machine(rep.system)}",
        "",
        "## Performance", "", performance_table(rep), "",
        "## Accuracy", "", accuracy_table(rep), "",
        "agreement with fp32: share of images whose top-1 equals PyTorch eager fp32's top-1 "
        "on the same preprocessed input.", "",
        "## Against baselines (same run, same input, same threads)", "", baselines_table(rep), "",
        "## Builds and cold start", "", builds_table(rep), "",
        "infer end-to-end includes JPEG decoding and preprocessing of the evaluation images "
        f"({ds.get('images', '?')} images: small sets say little about it).", "",
    ]
    if b0:
        parts += [f"Each configuration ran in {_rounds(rep)} round(s) interleaved with the other "
                  "configurations of the same batch (each round starting one further along). "
                  "Throughput is the median round, beside the slowest-fastest range of all "
                  "rounds; a ratio to a baseline is the median of the per-round ratios. Latency "
                  "is per query (one engine call of `batch` images), pooled over the rounds. "
                  f"Percentiles: {b0.percentile_definition}.", ""]
    if rep.notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in rep.notes] + [""]
    if rep.timings:
        parts += ["## Time", ""] + [f"- {k}: {v:.1f} s" for k, v in rep.timings.items()] + [""]
    return "\n".join(parts)


def _machine(system: dict[str, Any]) -> str:
    if not system:
        return "machine unknown"
    c = system.get("cores", {})
    v = system.get("versions", {})
    feats = " ".join(system.get("cpu_features", []))
    if system.get("int8_isa"):
        feats += f"; int8: {isa_label(system['int8_isa'])}"
    return (f"{system.get('cpu_model')} ({c.get('physical')} cores, {c.get('usable')} usable; "
            f"{feats}); " + ", ".join(f"{k} {v[k]}" for k in sorted(v)))


def format_bench(r: BenchResult) -> str:
    """The human block `mnv3 bench` prints."""
    c = r.system.get("cores", {})
    lat = r.latency_ms
    rows = [
        ("model", f"{r.model} ({r.backend} {r.backend_version}, {r.quant_mode}, "
                  f"{'shape-mutable' if r.shape_mutable else 'fixed batch'})"),
        ("configuration", f"batch {r.batch}, threads {r.threads or 'engine default'}, "
                          f"streams {r.streams}, warm-up {r.warmup}, stop at {r.stop}"
                          + (f"; each query split into {r.split} sub-batches run at once"
                             if r.split > 1 else "")),
        ("machine", f"{r.system.get('cpu_model', '?')}, {c.get('physical')} cores "
                    f"({c.get('usable')} usable); {' '.join(r.system.get('cpu_features', []))}"
                    + (f"; int8: {isa_label(r.system['int8_isa'])}"
                       if r.system.get("int8_isa") else "")),
        ("other load", "unknown" if r.other_cpu_load is None else
                       f"{r.other_cpu_load:.2f} cores used by other processes while measuring"),
        ("load", f"{_f(r.load_time_ms, 1)} ms"),
        ("first run", f"{_f(r.first_run_ms, 3)} ms (cold, not in the statistics)"),
        ("measured", f"{r.iterations} queries in {r.duration_s:.3f} s"),
        ("throughput", f"{r.throughput_ips:.1f} images/s   {r.throughput_qps:.1f} queries/s "
                       f"(1 query = {r.batch} image{'s' if r.batch > 1 else ''})"),
        ("latency (ms)", "  ".join(f"{k} {getattr(lat, k):.3f}" for k in
                                   ("min", "avg", "p50", "p90", "p95", "p99", "max"))),
    ]
    rows += device_rows(r.device)
    text = "\n".join(f"  {k:<15}{v}" for k, v in rows)
    wrap = textwrap.TextWrapper(width=100, initial_indent="  ", subsequent_indent="    ")
    # The percentile definition is in --help and the JSON; printed every time, it buried the
    # figures under three lines of prose (issue 13).
    tail = [f"note: {n}" for n in r.notes]
    return "\n".join(["mnv3 bench", text, *(wrap.fill(t) for t in tail)])


def device_rows(device: dict | None) -> list[tuple[str, str]]:
    """The GPU and its device time (CUDA events), beside the host figures above them."""
    if not device:
        return []
    g, t = device.get("gpu") or {}, device.get("device_time") or {}
    rows = [("device", f"{device.get('device')}: {g.get('name', '?')}, driver "
                       f"{g.get('driver') or '?'}, CUDA {g.get('cuda') or '?'}, SM clock "
                       f"{g.get('sm_clock') or '?'} (max {g.get('sm_clock_max') or '?'}); CUDA "
                       f"graphs {'on' if device.get('cuda_graphs') else 'off'}")]
    if t:
        rows.append(("device (ms)", f"avg {t['avg_ms']:.3f}  p50 {t['p50_ms']:.3f}  p99 "
                                    f"{t['p99_ms']:.3f} over {t['calls']} calls (CUDA events; "
                                    "the latency above is host time)"))
    return rows


# ----------------------------------------------------------------------------- files


def report_paths(out_dir: str | os.PathLike) -> dict[str, Path]:
    """Where ``write_report`` puts report.md, report.json and report.png."""
    out = Path(out_dir)
    return {"md": out / "report.md", "json": out / "report.json", "png": out / "report.png"}


def write_report(rep: RunReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.md, report.json and report.png into ``out_dir``, each atomically."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = report_paths(out)
    atomic_write_text(paths["md"], markdown(rep))
    atomic_write_text(paths["json"], json.dumps(rep.to_dict(), indent=2, default=str) + "\n")
    _atomic_png(rep, paths["png"])
    return paths


def _atomic_png(rep: RunReport, path: Path) -> None:
    from mnv3.report_plot import plot_report  # matplotlib is imported only here

    with atomic_file(path, suffix=".png") as tmp:  # matplotlib picks the format by the suffix
        plot_report(rep, tmp)
