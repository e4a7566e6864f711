"""The one-click pipeline: export -> build every quant mode x batch -> infer + eval -> bench.

``run_all()`` with no arguments deploys MobileNetV3-Small (seed layout, deterministic random
init: said loudly) on the bundled demo images with ONNX Runtime, for every default quant mode at
batch 1, 4 and 8, and returns a ``RunReport`` whose tables compare each build with two
baselines measured in the same run: PyTorch eager fp32 and a plain ONNX Runtime session.

Everything lands under ``out`` (default ``data``)::

    onnx/<source>.onnx (+ .json)   the one export (reused when its request matches)
    models/<mode>_<mutable>_<b>/   built models (reused when meta.json matches the request);
    models/<backend>/<mode>_...    the same for backends other than onnxruntime (openvino)
    results/[<backend>/]<name>/    per-model result files (mnv3 infer), results/pytorch_fp32/
    report.md report.json report.png

Resumable: an interrupted run leaves only whole artifacts (export and builds are atomic), and
the next run reuses every one whose recorded request matches, so it only redoes what is missing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mnv3.backends import DEFAULT_BACKEND, capabilities, check_builds
from mnv3.errors import UsageError
from mnv3.build_request import BuildRequest
from mnv3.defaults import (CALIB_NUM, RUN_BATCH_SIZES, RUN_BENCH_DURATION_S, RUN_BENCH_ROUNDS,
                           RUN_BENCH_WARMUP, RUN_QUANT_MODES)
from mnv3.quant_mode import QuantMode
from mnv3.model_settings import model_subdir
from mnv3.pipeline_notes import run_notes
from mnv3.pipeline_steps import (Progress, bench_batch, build_or_reuse, export_or_reuse,
                                 infer_and_score, open_source, reference_top1, tuned_rows)
from mnv3.report import ModelRow, RunReport, untrained_warning, write_report
from mnv3.sysinfo import device_label, system_info

DEFAULT_QUANT_MODES = RUN_QUANT_MODES
DEFAULT_BATCH_SIZES = RUN_BATCH_SIZES


def run_all(*, weights=None, arch: str = "auto", layout: str = "auto",
            width_mult: float | None = None, image_dir=None, label_file=None, synsets_file=None,
            quant_modes=DEFAULT_QUANT_MODES, batch_sizes=DEFAULT_BATCH_SIZES,
            shape_mutable: bool = False, backends: str | Sequence[str] = (DEFAULT_BACKEND,),
            out="data", threads: int | None = None, bench_iterations: int | None = None,
            bench_duration: float | None = RUN_BENCH_DURATION_S,
            bench_rounds: int = RUN_BENCH_ROUNDS, bench_warmup: int = RUN_BENCH_WARMUP,
            image_num: int | None = None, calib_dir=None, calib_num: int = CALIB_NUM,
            build_options: dict | None = None, progress: bool = True,
            cpp: bool = False, tune_budget_s: float | None = None) -> RunReport:
    """Run every stage and write report.md / report.json / report.png into ``out``.

    weights: a checkpoint; None = ``create_model(arch, layout, width_mult, seed=0)`` (untrained).
    arch / layout: ``auto`` detects them from the checkpoint, or means mobilenetv3-small / seed.
    image_dir / label_file / synsets_file: the evaluation set; None = the bundled demo images.
    backends: one name or several (e.g. ``("onnxruntime", "openvino")``): every quant mode x
        batch is built for each, in one report with a backend column. A mode only some backends
        build (force_bfloat16: openvino) is skipped for the others, and the report says so.
    threads: intra-op threads for mnv3 and both baselines (default: all usable cores).
    bench_*: each configuration is measured in ``bench_rounds`` rounds, interleaved with the
        other configurations of the same batch (A B C, B C A, C A B ...: each round starts one
        further along) because 2-thread speed on small VMs drifts for minutes at a time; a round
        stops after ``bench_iterations`` queries or ``bench_duration`` seconds (whichever
        first). Tables quote the median round with the range of all rounds (issue 13: two
        identical runs differed by up to 30% in a pooled cell).
    calib_dir / calib_num: int8 calibration images (default: the evaluation images; the report
        notes that calibration then saw the evaluated images).
    tune_budget_s: also run ``mnv3 tune`` (throughput objective, this many seconds) and add
        one row per batch for its winner, benchmarked with the threads and requests in flight
        it chose (``mnv3 run --tune``).
    """
    t_start = time.perf_counter()
    plan = _plan(quant_modes, batch_sizes, shape_mutable, bench_rounds, threads, backends,
                 calib_num, build_options)
    _check_bench(bench_iterations, bench_duration, bench_warmup)
    if tune_budget_s is not None and not float(tune_budget_s) > 0:
        raise UsageError(f"--tune needs a positive time budget, got {tune_budget_s}")
    if cpp:  # before any slow work: the native program needs openvino builds and a compiler
        if not any(capabilities(b).cpp for b in plan["backends"]):
            raise UsageError("--cpp runs the openvino builds through mnv3-infer-cpp; add "
                             "--backends openvino (or onnxruntime,openvino)")
        from mnv3.cpp_engine import build_cpp

        build_cpp()
    out = Path(out)
    src = open_source(weights, arch, layout, width_mult)
    if src.untrained:  # loudly, whatever the progress setting
        print("mnv3 run: WARNING: " + untrained_warning().replace("**", ""), file=sys.stderr)
    samples, dataset = _dataset(image_dir, label_file, synsets_file, image_num, src)
    calib = Path(calib_dir or dataset["image_dir"]).resolve()
    if not calib.is_dir():
        raise UsageError(f"calibration folder {calib_dir} does not exist; pass --calib-dir with "
                         "a folder of images (or leave it out to use the evaluation images)")
    steps = 2 + 2 * len(plan["models"]) + len(plan["batches"]) + 1
    # the C++ rows: infer + eval, then --bench
    steps += 2 * sum(capabilities(r.backend).cpp for r in plan["models"]) if cpp else 0
    steps += 1 + len(plan["batches"]) if tune_budget_s else 0  # tune, then one row per batch
    with Progress(steps, enabled=progress) as bar:
        rep = _run_steps(bar, plan, src, samples, dataset, calib, out, weights, shape_mutable,
                         calib_num, build_options, bench_iterations, bench_duration,
                         bench_warmup, cpp, tune_budget_s)
        with bar.step("write report.md, report.json, report.png", rep.timings, "report"):
            rep.timings["total"] = time.perf_counter() - t_start  # all but this last step
            write_report(rep, out)
    return rep


def _run_steps(bar, plan, src, samples, dataset, calib, out, weights, shape_mutable,
               calib_num, build_options, bench_iterations, bench_duration,
               bench_warmup, cpp=False, tune_budget_s=None) -> RunReport:
    """Every step but the report, in order; ``bar`` says which is running."""
    timings: dict[str, float] = {}

    with bar.step("export to ONNX", timings, "export"):
        onnx_path, reused = export_or_reuse(src, out / "onnx")
        bar.done("reused" if reused else f"wrote {onnx_path}")
    with bar.step("PyTorch eager fp32 reference predictions", timings, "reference"):
        ref = reference_top1(src, samples, out / "results" / "pytorch_fp32", plan["threads"])
    dataset["reference_top1_classes"] = len(set(ref.values()))

    rows = []
    for planned in plan["models"]:
        request = planned.replace(preprocess=src.preprocess, calib_dir=calib)
        name, backend, batch = request.name, request.backend, request.batch_size
        where = _subdir(backend, name)
        with bar.step(f"build {where}", timings, "build"):
            meta_dir, reused, secs, replaced = build_or_reuse(
                onnx_path, out / "models" / where, request, src, plan["threads"])
            bar.done("reused (meta.json matches)" if reused else
                     "built" + (f", replacing one built with {'; '.join(replaced)}"
                                if replaced else ""))
        rows.append(ModelRow(name=name, quant_mode=request.quant_mode, shape_mutable=shape_mutable,
                             batch=batch, model_dir=str(meta_dir), reused=reused,
                             build_s=None if reused else secs, backend=backend,
                             replaced=replaced))
    if tune_budget_s:
        with bar.step(f"tune (budget {tune_budget_s:.0f} s)", timings, "tune"):
            tuned = tuned_rows(onnx_path, plan, src, calib, calib_num, out, build_options,
                               tune_budget_s)
            bar.done(f"{len(tuned)} winner(s) of {len(plan['batches'])} batch(es)")
        bar.drop(len(plan["batches"]) - len(tuned))
        rows += tuned
    for row in rows:
        where = f"tuned/{row.name}" if row.tuned else _subdir(row.backend, row.name)
        with bar.step(f"infer + eval {where}", timings, "infer"):
            row.accuracy, row.notes = infer_and_score(row, samples, out / "results" / where,
                                                      ref, plan["threads"])
    native = []  # (row, program): the "openvino C++" rows, benched among the others
    if cpp:
        from mnv3.cpp_run import cpp_rows

        native = cpp_rows(rows, samples, out / "results", ref, plan["threads"], bar, timings)
    baselines = []
    for batch in plan["batches"]:
        with bar.step(f"bench batch {batch} ({plan['rounds']} interleaved rounds)", timings,
                      "bench"):
            baselines += bench_batch([r for r in rows if r.batch == batch], src, onnx_path,
                                     batch, plan["threads"], bench_iterations, bench_duration,
                                     plan["rounds"], bench_warmup,
                                     native=[n for n in native if n[0].batch == batch])
    rows += [row for row, _ in native]
    rep = RunReport(
        model=src.label, untrained=src.untrained, device=device_label(), rows=rows,
        baselines=baselines, weights=str(weights) if weights else None, dataset=dataset,
        config=_config(plan, shape_mutable, bench_iterations, bench_duration,
                       bench_warmup, calib, calib_num, out),
        system=system_info(), notes=run_notes(rows, baselines, dataset, calib, plan, src),
    )
    rep.timings = timings
    return rep


def _subdir(backend: str, name: str) -> str:
    """Where a model (and its results) lives under models/ (results/): stable across runs; the
    default backend's at models/<name>, as in the seed; the same rule as 'mnv3 build'."""
    return model_subdir(backend, name)


def _runs_here(engine, mode) -> bool:
    """The engine's word on this CPU (an engine object without one is taken to run it)."""
    runs_here = getattr(engine, "runs_here", None)
    return True if runs_here is None else bool(runs_here(mode))


def _plan(quant_modes, batch_sizes, shape_mutable, rounds, threads, backends,
          calib_num=CALIB_NUM, build_options=None) -> dict:
    """Validate the request up front, before any slow work: one BuildRequest per model."""
    from mnv3.backends import get_backend  # looked up per call: tests stand in for engines

    modes = list(dict.fromkeys(QuantMode.parse(m) for m in quant_modes))
    if not modes:
        raise UsageError("--quant-modes is empty; give at least one, e.g. force_float32")
    backends = [backends] if isinstance(backends, str) else list(dict.fromkeys(backends))
    if not backends:
        raise UsageError("--backends is empty; give at least one, e.g. onnxruntime")
    # unknown or not installed: say so now, not after the export
    engines = {b: get_backend(b) for b in backends}
    for m in modes:  # a mode no requested backend builds is an error, naming who builds it
        if not any(capabilities(b).builds(m) for b in backends):
            check_builds(backends[0], m)
    batches = list(dict.fromkeys(int(b) for b in batch_sizes))
    if not batches or any(b < 1 for b in batches):
        raise UsageError(f"--batch-sizes must be whole numbers >= 1, got {list(batch_sizes)}")
    if not isinstance(shape_mutable, bool):
        raise UsageError(f"--shape-mutable must be true or false, got {shape_mutable!r}")
    if int(rounds) < 1:
        raise UsageError(f"bench rounds must be at least 1, got {rounds}")
    if threads is not None and int(threads) < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    usable = system_info()["cores"]["usable"] or os.cpu_count() or 1
    pairs = [(be, m) for be in backends for m in modes]
    options = {"progress": False, "threads": int(threads or usable), **(build_options or {})}
    # a mode the backend builds but this CPU would only emulate (torch's fp16 here) is skipped
    runs = {(be, m): capabilities(be).builds(m) and _runs_here(engines[be], m) for be, m in pairs}
    if not any(runs.values()):
        raise UsageError(f"nothing to build: this CPU does not compute {', '.join(modes)} on "
                         f"{', '.join(backends)}; add force_float32 or another backend")
    return {"models": [BuildRequest(quant_mode=m, shape_mutable=shape_mutable, batch_size=b,
                                    backend=be, calib_num=calib_num, options=options)
                       for be, m in pairs if runs[be, m] for b in batches],
            "skipped": [(be, m) for be, m in pairs if not runs[be, m]],
            "backends": backends, "modes": modes, "batches": batches, "rounds": int(rounds),
            "threads": int(threads or usable)}


def _check_bench(iterations, duration, warmup) -> None:
    if iterations is not None and int(iterations) < 1:
        raise UsageError(f"--bench-iterations must be at least 1, got {iterations}")
    if duration is not None and not float(duration) > 0:
        raise UsageError(f"--bench-duration must be a positive number of seconds, got {duration}")
    if int(warmup) < 0:
        raise UsageError(f"bench warm-up must be 0 or more, got {warmup}")


def _dataset(image_dir, label_file, synsets_file, image_num, src):
    from mnv3.data.datasets import demo_dir, load_dataset

    demo = image_dir is None
    if demo:
        if label_file is not None:
            raise UsageError("--label-file needs --image-dir (the folder its names refer to)")
        d = demo_dir()
        image_dir, label_file, synsets_file = d / "images", d / "labels.txt", d / "synsets.txt"
    samples = load_dataset(image_dir, label_file, synsets_file, num_classes=src.num_classes)
    if image_num is not None:
        if int(image_num) < 1:
            raise UsageError(f"--image-num must be at least 1, got {image_num}")
        samples = samples[:int(image_num)]
    info = {"image_dir": str(Path(image_dir).resolve()), "label_file": label_file and str(label_file),
            "images": len(samples), "labeled": sum(s.label is not None for s in samples),
            "demo": demo}
    return samples, info


def _config(plan, mutable, iters, duration, warmup, calib, calib_num, out) -> dict:
    return {"backends": plan["backends"], "shape_mutable": mutable, "threads": plan["threads"],
            "quant_modes": plan["modes"],
            "batch_sizes": plan["batches"], "rounds": plan["rounds"],
            "bench_iterations": iters, "bench_duration_s": duration, "bench_warmup": warmup,
            "calib_dir": str(calib), "calib_num": calib_num, "out": str(out)}
