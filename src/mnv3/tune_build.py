"""``mnv3 tune``'s builds: each candidate through ``mnv3.build`` and its accuracy budget.

A refused build (``BuildError``: below the budget, or the engine could not) is a candidate that
lost, with the build's own reason; a model already built by an earlier tune from the same ONNX,
settings and budget is reused (tune resumes, as ``mnv3 run`` does).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mnv3.errors import BelowBudgetError, BuildError, Mnv3Error
from mnv3.meta import read_meta
from mnv3.quant_mode import QuantMode
from mnv3.tune_report import say

BUILD_SHARE = 0.6  # builds may use this share of the time budget; measuring gets the rest
# An engine's first reduced-precision build, estimated from its float32 build (calibration and
# the fidelity check come on top): a tiny model's OpenVINO int8 build took 3.7x its float32
# build's time here (19.3 s against 5.2 s), ONNX Runtime's 1.0x (1.16 s against 1.15 s); 2x
# for the others leaves room for calibrating on real images.
UNSEEN_FACTOR = {"openvino": 4.0}
UNSEEN_FACTOR_OTHERS = 2.0


def build_all(candidates, onnx, out, preprocess, calib_dir, calib_num, options, untrained,
              clock, report, progress, source=None) -> None:
    """Build every candidate in plan order. The shape-mutable candidates of one (backend,
    mode) share one build, made for the first of them: it serves every batch size. Once an
    engine's float32 build failed (not refused), its other candidates are not tried; once the
    accuracy budget refused an engine's build of a mode, its other builds of that mode are
    refused unbuilt."""
    mutable: dict[tuple, Any] = {}
    broken: dict[str, Any] = {}  # backend -> its float32 build that failed
    missed: dict[tuple, Any] = {}  # (backend, mode) -> its build the accuracy budget refused
    for c in candidates:
        first = mutable.setdefault((c.backend, c.quant_mode), c) if c.mutable else c
        if first is not c:
            _share(c, first, report)
        elif c.backend in broken:  # e.g. torch given an ONNX file: each try cost 5 s of budget
            c.status, c.why = "failed", f"not built: {broken[c.backend].name} failed"
        elif (c.backend, c.quant_mode) in missed:
            # Another batch or batch shape quantizes the same way on the same calibration and
            # held-out images, so it would miss the budget too (Lite0 on AVX2: OpenVINO's int8
            # build spent 224 s of tune's 600 s to be refused; a second one would again).
            c.status, c.why = "refused", (
                f"not built: {missed[(c.backend, c.quant_mode)].name} missed the accuracy "
                "budget, and this build quantizes the same way")
        elif build_candidate(c, onnx, out, preprocess, calib_dir, calib_num, options,
                             untrained, clock, report, progress, source):
            missed[(c.backend, c.quant_mode)] = c
        elif c.status == "failed" and QuantMode.parse(c.quant_mode).is_reference:
            broken[c.backend] = c


def _share(c, first, report) -> None:
    """``c`` runs the build ``first`` made (or shares its fate)."""
    c.status, c.model_dir, c.fidelity, c.shares = first.status, first.model_dir, \
        first.fidelity, first.name
    c.reused, c.build_s = first.reused, 0.0
    c.why = first.why if first.status != "built" else ""
    if c.status == "skipped":
        report.skipped.append(f"{c.name}: {c.why}")


def _wont_fit(c, clock, report) -> str | None:
    """Why ``c`` is not built: the build share of the time budget is spent, or would be by a
    build as long as the longest like it so far (same engine and mode), or, for the first
    reduced-precision build of an engine, ``UNSEEN_FACTOR`` times its longest float32 build
    (a build is never cut short)."""
    share = BUILD_SHARE * clock.budget
    if clock.elapsed() > share:
        return f"not built: builds had used {BUILD_SHARE:.0%} of the {clock.budget:.0f} s " \
               "time budget"
    done = [d for d in report.candidates if d.build_s and not d.reused and d.backend == c.backend]
    like = [d.build_s for d in done if d.quant_mode == c.quant_mode]
    ref = [d.build_s for d in done if QuantMode.parse(d.quant_mode).is_reference]
    if like:
        guess, what = max(like), f"a build like it took {max(like):.0f} s"
    elif ref and not QuantMode.parse(c.quant_mode).is_reference:
        factor = UNSEEN_FACTOR.get(c.backend, UNSEEN_FACTOR_OTHERS)
        guess = factor * max(ref)
        what = (f"its first {c.quant_mode} build was estimated at {factor:g}x its "
                f"float32 build's {max(ref):.0f} s")
    else:
        return None
    if clock.elapsed() + guess > share:
        return (f"not built: {what}, more than was left of the builds' {BUILD_SHARE:.0%} of "
                f"the {clock.budget:.0f} s time budget")
    return None


def build_candidate(c, onnx, out, preprocess, calib_dir, calib_num, options,
                    untrained, clock, report, progress, source=None) -> None:
    """Build candidate ``c`` (or reuse it) into ``out/models/<backend>/<name>``; sets its
    status (built / refused / failed / skipped) and why. ``source``: the checkpoint the ONNX
    file was exported from (what the torch backend compiles), as ``mnv3 run`` passes it.
    Returns whether the accuracy budget refused it."""
    from mnv3.build_request import BuildRequest
    from mnv3.builder import build_from_request

    opts = dict(options)
    if c.quant_mode.is_reference:  # the reference has no budget to meet
        opts.pop("min_agreement"), opts.pop("min_cosine")
    if untrained:
        opts.setdefault("allow_below_budget", True)
        opts.setdefault("below_budget_reason", "the network is untrained (random weights)")
    request = BuildRequest(quant_mode=c.quant_mode, shape_mutable=c.mutable, batch_size=c.batch,
                           backend=c.backend, preprocess=preprocess, calib_dir=calib_dir,
                           calib_num=calib_num, options=opts)
    target = out / "models" / c.backend / request.name
    t0 = time.perf_counter()
    target, meta = _reusable_build(target, request, onnx)
    if meta is not None:
        say(progress, f"reusing {c.name}: built before with these settings and budget")
        c.status, c.model_dir, c.fidelity = "built", str(target), _fidelity(meta)
        c.reused, c.build_s = True, 0.0
        return False
    why = _wont_fit(c, clock, report)
    if why:  # checked after reuse: a rerun resumes with what was built, whatever the clock
        c.status, c.why = "skipped", why
        report.skipped.append(f"{c.name}: {c.why}")
        return False
    say(progress, f"building {c.name} ({clock.elapsed():.0f} s of {clock.budget:.0f} s)")
    missed = False
    try:
        meta = build_from_request(onnx, request, target, force=True, source=source)
    except BuildError as e:  # the budget (or the engine) refused it: a candidate that lost
        c.status, c.why = "refused", f"build refused: {e}"
        missed = isinstance(e, BelowBudgetError)
    except Mnv3Error as e:
        c.status, c.why = "failed", f"build failed: {e}"
    else:
        c.status, c.model_dir, c.fidelity = "built", str(target), _fidelity(meta)
        if c.fidelity and c.fidelity.get("below_budget") and not untrained:
            c.status, c.why, missed = "refused", "below the accuracy budget", True
    c.build_s = time.perf_counter() - t0
    if c.status != "built":
        say(progress, f"{c.name}: {c.why}")
    return missed


def _reusable_build(target: Path, request, onnx):
    """(where the build is, its ModelMeta or None). A shape-mutable build serves every batch,
    so one made for another batch (a rerun with another --batch-sizes) is reused too."""
    meta = _reusable(target, request, onnx)
    if meta is not None or not request.shape_mutable:
        return target, meta
    prefix = target.name[:target.name.rindex("_") + 1]  # <quant_mode>_true_
    for sibling in sorted(target.parent.glob(prefix + "*")):
        batch = sibling.name[len(prefix):]
        if sibling != target and batch.isdigit():
            meta = _reusable(sibling, request.replace(batch_size=int(batch)), onnx)
            if meta is not None:
                return sibling, meta
    return target, None


def _reusable(target: Path, request, onnx):
    """The ModelMeta of a model already at ``target`` built from the same ONNX, settings and
    budget (a rerun of tune resumes, as ``mnv3 run`` does); None: build it."""
    from mnv3.builder import _demo_dir
    from mnv3.meta import sha256_file
    from mnv3.pipeline_steps import reusable

    if request.calib_dir is None:  # the demo images, as the build will use
        request = request.replace(calib_dir=_demo_dir())
    if not reusable(target, request.settings(sha256_file(onnx))):
        return None
    meta = read_meta(target)
    recorded = (meta.fidelity or {}).get("budget") or {}
    opts = request.options
    if not request.quant_mode.is_reference and (
            recorded.get("min_agreement") != opts.get("min_agreement")
            or recorded.get("min_cosine") != opts.get("min_cosine")):
        return None  # held to another budget: build again
    return meta


def _fidelity(meta) -> dict[str, Any] | None:
    f = meta.fidelity or {}
    if not f:
        return None
    keep = ("top1_agreement", "top1_agreement_expected", "cosine_mean", "inputs",
            "within_budget", "below_budget")
    return {k: f[k] for k in keep if k in f}


