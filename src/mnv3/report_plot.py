"""report.png: throughput by quant mode and batch (with the baselines), accuracy by quant mode.

Kept apart from ``mnv3.report`` (which imports it lazily) so matplotlib (slow to import) loads only when a plot is drawn;
the Agg backend needs no display.
"""

from __future__ import annotations

from mnv3.report_data import BASELINE_ORT, BASELINE_TITLES, BASELINE_TORCH, RunReport, backends

# Throughput series (one per backend x mode), the baselines (greys) and the accuracy metrics
# use three disjoint palettes: an agreement bar once shared its green with a throughput series
# (issue 13), and a sixth series (2 backends x 3 modes) wrapped round to the first's colour.
MODE_COLORS = ["#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#e377c2", "#bcbd22", "#393b79",
               "#637939", "#8c6d31", "#843c39"]
BASELINE_COLORS = {BASELINE_TORCH: "#7f7f7f", BASELINE_ORT: "#bcbcbc"}
METRIC_COLORS = {"top1": "#2ca02c", "top5": "#98df8a", "agreement": "#17becf"}


def plot_report(rep: RunReport, path: str) -> None:
    import matplotlib.pyplot as plt

    fig = draw_report(rep)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def draw_report(rep: RunReport):
    """The report's figure (a matplotlib Figure; the caller saves and closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_a) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    _throughput(ax_t, rep)
    _accuracy(ax_a, rep)
    title = f"mnv3 run: {rep.model} on {rep.device}"
    if rep.untrained:
        title += "  (UNTRAINED: random init, seed 0)"
    fig.suptitle(title, fontsize=12, color="#b00020" if rep.untrained else "black")
    fig.tight_layout()
    return fig


def _series(rep: RunReport) -> list[tuple[str, str]]:
    """(backend, quant mode) in report order: one bar colour each."""
    return list(dict.fromkeys((r.backend, r.quant_mode) for r in rep.rows))


def _label(rep: RunReport, backend: str, mode: str) -> str:
    return f"{mode} ({backend})" if len(backends(rep)) > 1 else mode


def _throughput(ax, rep: RunReport) -> None:
    """Grouped bars: one group per batch size; mnv3 modes, then the two baselines (grey)."""
    batches = sorted({r.batch for r in rep.rows})
    series = [(_label(rep, be, m), MODE_COLORS[i % len(MODE_COLORS)],
               lambda b, be=be, m=m: _ips(rep, be, m, b))
              for i, (be, m) in enumerate(_series(rep))]
    series += [(BASELINE_TITLES[n], BASELINE_COLORS[n],
                lambda b, n=n: (rep.baseline(n, b).median_ips() if rep.baseline(n, b) else 0))
               for n in (BASELINE_TORCH, BASELINE_ORT) if any(x.name == n for x in rep.baselines)]
    width = 0.8 / max(len(series), 1)
    for i, (label, color, value) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(batches))]
        vals = [value(b) for b in batches]
        bars = ax.bar(xs, vals, width, label=label, color=color)
        ax.bar_label(bars, labels=[f"{v:.0f}" if v else "" for v in vals], fontsize=7,
                     rotation=90, padding=2)
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set_ylabel("throughput (images/s, higher is better)")
    ax.set_title(f"Throughput by quant mode and batch ({_threads(rep)}; median of "
                 f"{rep.config.get('rounds', 1)} rounds)", fontsize=10)
    ax.margins(y=0.18)
    # below the axes: inside, several series' legend would cover the tallest bars' labels
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3,
              frameon=False)
    ax.grid(axis="y", alpha=0.3)


def _ips(rep: RunReport, backend: str, mode: str, batch: int) -> float:
    row = next((r for r in rep.rows if (r.backend, r.quant_mode, r.batch) == (backend, mode, batch)),
               None)
    return row.bench.median_ips() if row and row.bench else 0.0


def _wrap(label: str) -> str:
    """qint8_mixed_float16 (openvino) -> lines, so long labels do not collide."""
    mode, _, backend = label.partition(" ")
    head, _, tail = mode.rpartition("_")
    text = f"{head}_\n{tail}" if len(mode) > 14 else mode
    return f"{text}\n{backend}" if backend else text


def _threads(rep: RunReport) -> str:
    t = rep.config.get("threads")
    return f"{t} thread{'s' if t != 1 else ''}" if t else "engine default threads"


def _accuracy(ax, rep: RunReport) -> None:
    """Per mode, from its smallest batch (named in the title): top-1, top-5, agreement."""
    series = _series(rep)
    metrics = [("agreement", "top-1 agreement with fp32", METRIC_COLORS["agreement"])]
    if not rep.untrained:
        metrics = [("top1", "top-1", METRIC_COLORS["top1"]),
                   ("top5", "top-5", METRIC_COLORS["top5"])] + metrics
    shown: set[int] = set()
    width = 0.8 / len(metrics)
    for i, (key, label, color) in enumerate(metrics):
        vals = []
        for be, m in series:
            rows = sorted((r for r in rep.rows
                           if (r.backend, r.quant_mode) == (be, m) and r.accuracy),
                          key=lambda r: r.batch)
            v = rows[0].accuracy.get(key) if rows else None
            shown.update(r.batch for r in rows[:1])
            vals.append(100 * v if v is not None else 0.0)
        xs = [j + (i - (len(metrics) - 1) / 2) * width for j in range(len(series))]
        bars = ax.bar(xs, vals, width, label=label, color=color)
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in vals], fontsize=7, padding=2)
    ax.set_xticks(range(len(series)), [_wrap(_label(rep, be, m)) for be, m in series],
                  fontsize=8)
    ax.set_ylim(0, 125)  # headroom for the legend above 100%
    ax.set_ylabel("% of images")
    n = rep.dataset.get("images", "?")
    batch = ", ".join(str(b) for b in sorted(shown)) or "?"
    title = (f"Accuracy by {'backend and ' if len(backends(rep)) > 1 else ''}quant mode ({n} "
             f"images, batch {batch})")
    if rep.untrained:
        title += "\nuntrained: top-1/top-5 not shown"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    ax.grid(axis="y", alpha=0.3)
