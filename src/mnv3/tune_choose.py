"""``mnv3 tune``'s choice: per (objective, batch), the measured pair with the highest median
images/s, copied to ``out/tuned/<objective>_b<B>`` with its runtime settings in meta.json
(``extra["tuned"]``, read back by ``ModelMeta.tuned``), beside the runner-up and
whether the two are told apart on this machine. A shape-mutable winner's copy records the batch
it won at as its ``batch_size`` (``ModelMeta.default_batch``: what infer and bench then run).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from mnv3.atomic import publish_dir
from mnv3.meta import read_meta, write_meta
from mnv3.tune_report import say


def choose(field_, objective, batch, out: Path, report, progress, decode_check=None) -> None:
    """The fastest measured pair of this batch, copied out with its settings in meta.json;
    ``decode_check(candidate, setting, batch)`` adds the decode choice (``mnv3.tune_decode``)."""
    from mnv3.sysinfo import isa_label

    pairs = [(c, s) for c in field_ for s in c.settings if s.rounds_ips
             and (objective == "throughput" or s.streams == 1)]
    key = f"{objective}_b{batch}"
    if not pairs:
        report.skipped.append(f"{key}: no candidate was built and measured within budget")
        return
    win_c, win_s = max(pairs, key=lambda p: p[1].median())
    win_s.status = "winner"
    for c, s in ((c, s) for c in field_ for s in c.settings):
        if s is not win_s and s.status != "pruned":
            s.why = s.why or (f"{s.median() / win_s.median():.2f}x the winner's median"
                              if s.rounds_ips else "not measured")
    for c in field_:
        if c is not win_c:
            c.why = c.why or f"slower than {win_c.name} ({win_s.label})"
    runner_up = _runner_up(pairs, win_s)
    tuned = {"objective": objective, "threads": win_s.threads, "streams": win_s.streams,
             "split": win_s.split,
             "batch": batch, "shape": win_c.shape, "images_per_s": win_s.median(),
             "min_ips": min(win_s.rounds_ips),
             "max_ips": max(win_s.rounds_ips), "rounds": len(win_s.rounds_ips),
             "isa": report.isa, "from": win_c.model_dir, "tune_report": str(out / "tune.json")}
    if decode_check is not None:
        tuned.update(decode_check(win_c, win_s, batch))
    dest = out / "tuned" / key
    _publish_tuned(Path(win_c.model_dir), dest, tuned)
    report.winners[key] = {"candidate": win_c.name, "model_dir": str(dest), **tuned,
                           "runner_up": runner_up}
    say(progress, f"{key}: {win_c.name} with {win_s.label}, {win_s.median():.1f} images/s "
                   f"(median, {isa_label(report.isa)}) -> {dest}")
    if "decode" in tuned:
        from mnv3.tune_decode import describe

        say(progress, f"{key}: {describe(tuned)}")


def _runner_up(pairs, win_s) -> dict[str, Any] | None:
    """The second-fastest pair, the winner's margin over it and whether their round ranges
    overlap (then the two are not told apart on this machine: a rerun may swap them)."""
    rest = [(c, s) for c, s in pairs if s is not win_s]
    if not rest:
        return None
    c, s = max(rest, key=lambda p: p[1].median())
    return {"candidate": c.name, "setting": s.label, "images_per_s": s.median(),
            "ratio": win_s.median() / s.median(),
            "ranges_overlap": max(s.rounds_ips) >= min(win_s.rounds_ips)}


def _publish_tuned(src: Path, dest: Path, tuned: dict) -> None:
    """Copy the winning model directory to ``dest`` (atomically), its settings in meta.json."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        meta = read_meta(tmp)
        if meta.shape_mutable:  # serves any batch: its default is the batch it was tuned for
            meta.batch_size = int(tuned["batch"])
        meta.extra = {**meta.extra, "tuned": tuned}
        meta.notes.append(f"tuned ({tuned['objective']}): run with {tuned['threads']} threads "
                          f"x {tuned['streams']} requests in flight")
        write_meta(meta, tmp)
        publish_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
