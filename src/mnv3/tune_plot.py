"""tune.png: speed against fidelity, one panel per batch, the Pareto front and the winner marked.

Each point is one (build, runtime setting): x = top-1 agreement with float32 (the build's
fidelity; float32 itself is 100%), y = median images/s with the slowest-fastest round as an
error bar. The Pareto front joins the points no other point beats on both axes. Kept apart
from ``mnv3.tune_report`` so matplotlib (slow to import) loads only when a plot is drawn.
"""

from __future__ import annotations

from pathlib import Path

from mnv3.quant_mode import QuantMode

COLORS = {"onnxruntime": "#1f77b4", "openvino": "#ff7f0e"}
MARKERS = {QuantMode.FLOAT32: "o", QuantMode.INT8_FLOAT32: "s", QuantMode.INT8_FLOAT16: "D",
           QuantMode.FLOAT16: "^", QuantMode.BFLOAT16: "v"}


def points(report, batch: int) -> list[dict]:
    """The measured (candidate, setting) pairs of one batch as plot points."""
    out = []
    for c in report.candidates:
        agree = (c.fidelity or {}).get("top1_agreement")
        for s in c.settings:
            if c.batch == batch and s.rounds_ips and agree is not None:
                out.append({"x": 100 * agree, "y": s.median(), "lo": min(s.rounds_ips),
                            "hi": max(s.rounds_ips), "backend": c.backend,
                            "mode": c.quant_mode,
                            "label": ("mutable " if c.mutable else "") + s.label,
                            "winner": s.status == "winner"})
    return out


def pareto(pts: list[dict]) -> list[dict]:
    """Points no other point beats on both speed and agreement, by agreement."""
    front = [p for p in pts if not any(q["x"] >= p["x"] and q["y"] >= p["y"] and
                                       (q["x"], q["y"]) != (p["x"], p["y"]) for q in pts)]
    return sorted(front, key=lambda p: p["x"])


def preload() -> None:
    """Import matplotlib on a background thread while tune builds: on a loaded 2-vCPU machine
    the import alone took 3-4 s, which at the end would overrun a small time budget."""
    import threading

    def _import() -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401

    threading.Thread(target=_import, name="mnv3-tune-plot-import", daemon=True).start()


def plot_tune(report, path: Path) -> None:
    """Draw tune.png (nothing when no pair was measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mnv3.sysinfo import isa_label

    batches = [b for b in report.batch_sizes if points(report, b)]
    if not batches:
        return
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, b in zip(axes[0], batches):
        _panel(ax, points(report, b), b)
    fig.suptitle(f"mnv3 tune ({report.objective}) on {report.system.get('cpu_model', 'CPU')}, "
                 f"int8 ISA {isa_label(report.isa)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _panel(ax, pts: list[dict], batch: int) -> None:
    for p in pts:
        ax.errorbar(p["x"], p["y"], yerr=[[p["y"] - p["lo"]], [p["hi"] - p["y"]]],
                    fmt=MARKERS.get(p["mode"], "o"), color=COLORS.get(p["backend"], "#555"),
                    ms=12 if p["winner"] else 6, alpha=0.8, capsize=2)
        ax.annotate(("WINNER " if p["winner"] else "") + p["label"], (p["x"], p["y"]),
                    fontsize=7, xytext=(4, 2), textcoords="offset points")
    front = pareto(pts)
    ax.plot([p["x"] for p in front], [p["y"] for p in front], "k--", lw=1, label="Pareto front")
    for be, color in COLORS.items():
        if any(p["backend"] == be for p in pts):
            ax.plot([], [], "o", color=color, label=be)
    for mode, marker in MARKERS.items():
        if any(p["mode"] == mode for p in pts):
            ax.plot([], [], marker, color="#555", label=mode)
    ax.set(title=f"batch {batch}", xlabel="top-1 agreement with float32 (%)",
           ylabel="images/s (median, min-max rounds)")
    ax.legend(fontsize=7)
