"""The notes under ``mnv3 run``'s tables: what a reader must know to read the figures right
(an untrained network, a busy machine, calibration on the evaluated images, tuned rows, modes
a backend does not build, each model's own caveats)."""

from __future__ import annotations

from pathlib import Path

from mnv3.backends import DEFAULT_BACKEND, builders_of, capabilities
from mnv3.model_settings import model_subdir
from mnv3.sysinfo import system_info


def run_notes(rows, baselines, dataset, calib: Path, plan, src) -> list[str]:
    from mnv3.bench import BUSY_CORES

    notes = []  # (untrained: the report's banner says it, first thing)
    if src.untrained:
        k = dataset["reference_top1_classes"]
        notes.append(f"the untrained network's PyTorch fp32 top-1 takes {k} distinct "
                     f"class{'es' if k != 1 else ''} over "
                     f"{dataset['images']} images (random networks favour a few classes), so "
                     "agreement with fp32 is a weak check here; pass --weights for a real one.")
    loads = [b.other_cpu_load for b in [r.bench for r in rows] + [b.bench for b in baselines]
             if b is not None and b.other_cpu_load is not None]
    if loads and max(loads) > BUSY_CORES:
        notes.append(f"other processes used up to {max(loads):.1f} of "
                     f"{system_info()['cores']['usable']} cores while benchmarks ran: speed "
                     "figures are lower and noisier than on an idle machine (ratios from the "
                     "same interleaved rounds suffer least); rerun when the machine is idle.")
    if any(r.quant_mode.int8 for r in rows) and \
            calib == Path(dataset["image_dir"]).resolve():
        notes.append("int8 calibration used images from the evaluation folder; for an unbiased "
                     "accuracy pass a separate calibration folder (calib_dir / --calib-dir).")
    tuned = [r for r in rows if r.tuned]
    if tuned:
        notes.append("tuned rows: 'mnv3 tune''s throughput winner per batch within the accuracy "
                     "budget, benchmarked with the threads and requests in flight it chose (its "
                     "candidates, margins and plot: tune/tune.md); the other rows run with "
                     f"{plan['threads']} thread(s) and 1 request.")
    for backend, mode in plan["skipped"]:
        if capabilities(backend).builds(mode):
            notes.append(f"{mode} is not built for {backend}: this CPU does not compute "
                         f"{mode.float_type} (the engine would emulate it).")
        else:
            notes.append(f"{mode} is built only by {', '.join(builders_of(mode))}: not built "
                         f"for {backend}.")
    notes.append(f"all speed figures: {plan['threads']} intra-op thread(s), 1 stream, the same "
                 "pre-filled input for mnv3 and both baselines.")
    for r in rows:
        if r.replaced:  # a resumable run rebuilds, but never silently (issue 13)
            notes.append(f"models/{model_subdir(r.backend, r.name)} replaced a model built with "
                         f"other settings: {'; '.join(r.replaced)}.")
    return notes + model_notes(rows)


def model_notes(rows) -> list[str]:
    """Each model's meta.json notes once, prefixed by the models it holds for. Notes differ
    between modes (force_float16's "float16: none" vs qint8_mixed_float16's "float16:
    Reshape"); pooled without their model they read as contradictions (issue 13)."""
    holders: dict[str, list] = {}
    for r in rows:
        for n in r.notes:
            holders.setdefault(n, []).append(r)
    return [f"{_who(rs)}: {n}" for n, rs in holders.items()]


def _who(rows) -> str:
    """'force_float16 (batch 1, 4, 8)', with the backend when the report has several."""
    several = len({r.backend for r in rows}) > 1 or any(r.backend != DEFAULT_BACKEND for r in rows)
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r.backend, r.quant_mode), []).append(r.batch)
    return "; ".join(f"{f'{be} ' if several else ''}{mode} (batch "
                     f"{', '.join(str(b) for b in sorted(bs))})"
                     for (be, mode), bs in groups.items())
