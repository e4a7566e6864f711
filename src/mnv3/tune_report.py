"""tune.md and tune.json: every candidate of ``mnv3 tune`` with its speed, fidelity and fate.

Every figure is printed beside the CPU's int8 ISA (``mnv3.sysinfo.isa_label``): a choice made
on an AVX2 CPU says nothing about an AVX-512 VNNI one (DESIGN.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mnv3.atomic import atomic_write_text


def say(progress: bool, text: str) -> None:
    """One progress line of ``mnv3 tune``, on stderr."""
    if progress:
        print(f"mnv3 tune: {text}", file=sys.stderr, flush=True)


def write_reports(report, out: Path) -> None:
    """Write ``out/tune.json`` (``TuneReport.to_dict``), ``out/tune.md`` (``format_md``) and
    ``out/tune.png`` (speed vs agreement, the Pareto front marked: ``mnv3.tune_plot``)."""
    atomic_write_text(out / "tune.json",
                      json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    atomic_write_text(out / "tune.md", format_md(report))
    from mnv3.tune_plot import plot_tune

    plot_tune(report, out / "tune.png")


def _rounds(report) -> str:
    return ", ".join(f"batch {b}: {n}" for b, n in report.rounds.items()) or "none measured"


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.2f}%"


def _fid(c) -> tuple[str, str]:
    f = c.fidelity or {}
    cos = f.get("cosine_mean")
    return _pct(f.get("top1_agreement")), "" if cos is None else f"{cos:.4f}"


def candidate_rows(report) -> list[str]:
    """One Markdown row per (candidate, runtime setting); one row for an unmeasured build."""
    from mnv3.sysinfo import isa_label

    isa = isa_label(report.isa)
    rows = []
    for c in report.candidates:
        agree, cos = _fid(c)
        if not c.settings:
            rows.append(f"| {c.batch} | {c.backend} | {c.quant_mode} | {c.shape} | | | | "
                        f"{agree} | {cos} | {isa} | {c.status} | {c.why} |")
            continue
        for s in c.settings:
            d = s.to_dict()
            speed = "" if d["median_ips"] is None else f"{d['median_ips']:.1f}"
            spread = "" if d["median_ips"] is None else \
                f"{d['min_ips']:.1f}-{d['max_ips']:.1f} ({len(s.rounds_ips)})"
            why = s.why or c.why
            rows.append(f"| {c.batch} | {c.backend} | {c.quant_mode} | {c.shape} | {s.label} "
                        f"| {speed} | {spread} | {agree} | {cos} | {isa} | {s.status} | {why} |")
    return rows


def format_md(report) -> str:
    """The whole report as Markdown: the winners, then every candidate."""
    from mnv3.sysinfo import device_label, isa_label

    isa = isa_label(report.isa)
    b = report.budget
    lines = [f"# mnv3 tune ({report.objective})", "",
             f"- CPU: {device_label(report.system)}",
             f"- network: {report.source}" + (" (UNTRAINED random weights: the budget is "
                                               "measured and marked, not held)"
                                               if report.untrained else ""),
             f"- accuracy budget (every non-float32 build): top-1 agreement with float32 >= "
             f"{100 * b['min_agreement']:.2f}%, mean logit cosine >= {b['min_cosine']}",
             f"- speed: images/s, median of interleaved rounds of {report.slice_s:g} s slices "
             f"(rounds per batch: {_rounds(report)}), with the slowest-fastest range",
             f"- time: {report.elapsed_s:.0f} s of a {report.time_budget_s:.0f} s budget", "",
             "## Chosen", "",
             "| objective / batch | model | threads | requests in flight | batch split in | "
             "images/s (median) | range | ISA | directory |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, w in report.winners.items():
        lines.append(f"| {key} | {w['candidate']} | {w['threads']} | {w['streams']} | "
                     f"{w.get('split', 1)} | "
                     f"{w['images_per_s']:.1f} | {w['min_ips']:.1f}-{w['max_ips']:.1f} | "
                     f"{isa} | {w['model_dir']} |")
    for key, w in report.winners.items():
        r = w.get("runner_up")
        if r:
            lines.append(f"\n{key}: {w['images_per_s'] / r['images_per_s']:.2f}x the runner-up "
                         f"{r['candidate']} ({r['setting']}, {r['images_per_s']:.1f} images/s)"
                         + ("; their round ranges overlap, so a rerun may swap them"
                            if r["ranges_overlap"] else "") + ".")
    lines += _decode_lines(report, "\n")
    if not report.winners:
        lines.append("| (none: nothing was built and measured within budget) | | | | | | | | |")
    lines += ["", "## Every candidate", "",
              "| batch | backend | quant mode | batch shape | setting | images/s | "
              "range (rounds) | top-1 agreement | cosine | ISA | status | why it lost |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|", *candidate_rows(report)]
    shared = [c for c in report.candidates if c.shares]
    if shared:
        lines += ["", "Batch shape `mutable`: one shape-mutable build per backend and mode, "
                  "measured at every batch (" + "; ".join(
                      f"{c.name} runs the build of {c.shares}" for c in shared) + ")."]
    if report.skipped:
        lines += ["", "## Skipped to fit the time budget", ""]
        lines += [f"- {s}" for s in report.skipped]
    return "\n".join(lines) + "\n"


def _decode_lines(report, prefix: str) -> list[str]:
    """Per winner, the decode ``mnv3 infer`` will use and the evidence (``mnv3.tune_decode``)."""
    from mnv3.tune_decode import describe

    return [f"{prefix}{key}: {describe(w)}." for key, w in report.winners.items()
            if "decode" in w]


def format_summary(report) -> str:
    """What ``mnv3 tune`` prints: the chosen configuration per (objective, batch)."""
    from mnv3.sysinfo import isa_label

    isa = isa_label(report.isa)
    out = []
    for key, w in report.winners.items():
        split = f", each batch split in {w['split']} at once" if w.get("split", 1) > 1 else ""
        out.append(f"{key}: {w['candidate']}, {w['threads']} thread(s) x {w['streams']} "
                   f"request(s) in flight{split}: {w['images_per_s']:.1f} images/s median "
                   f"({w['min_ips']:.1f}-{w['max_ips']:.1f}) [{isa}] -> {w['model_dir']}")
        r = w.get("runner_up")
        if r:
            out.append(f"  {r['ratio']:.2f}x the runner-up {r['candidate']} ({r['setting']})"
                       + (", ranges overlap" if r["ranges_overlap"] else ""))
    out += _decode_lines(report, "  ")
    lost = [c for c in report.candidates if c.status in ("refused", "failed", "skipped")]
    for c in lost:
        out.append(f"{c.name}: {c.status}: {c.why}")
    for s in report.skipped:
        if not any(s.startswith(c.name) for c in lost):
            out.append(f"skipped: {s}")
    return "\n".join(out)
