"""The steps ``mnv3.pipeline.run_all`` strings together, each reusable and resumable.

Reuse rules (what makes ``mnv3 run`` resumable):
* export: ``onnx/<source>.onnx`` is reused when ``onnx/<source>.json`` records the same request
  (network, layout, width, classes, weights sha256 or random seed) and the file's sha256;
* build: ``models/<name>`` is reused when its meta.json matches the request (backend, mode,
  shape mutability, batch, the ONNX file's sha256, preprocessing, calibration folder/count/
  method) and the compiled file still has the sha256 meta.json records.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mnv3.atomic import atomic_write_text
from mnv3.meta import META_FILE, PreprocessCfg, read_meta, sha256_file

RANDOM_SEED = 0


@dataclass
class Source:
    """The network being deployed and what identifies it for reuse."""

    model: object  # nn.Module or LoadedModel (what export_onnx takes)
    module: object  # the nn.Module
    label: str  # the report's Model column
    untrained: bool
    preprocess: PreprocessCfg
    num_classes: int
    key: dict = field(default_factory=dict)  # what identifies the export
    weights: str | None = None  # the checkpoint (a torch build compiles the network from it)

    @property
    def record(self) -> dict:
        """What a build records as its source, and what the torch backend compiles."""
        return {**self.key, **({"weights_path": self.weights} if self.weights else {})}

    @property
    def tag(self) -> str:
        k = self.key
        who = f"seed{RANDOM_SEED}" if self.untrained else k["weights_sha256"][:12]
        return f"{k['arch']}_{k['layout']}_{k['width_mult']:g}_{who}"


def open_source(weights, arch: str, layout: str, width_mult: float | None) -> Source:
    from mnv3.models import create_model, load_checkpoint

    if weights is not None:
        lm = load_checkpoint(weights, arch=arch, layout=layout, width_mult=width_mult)
        key = {"arch": lm.arch, "layout": lm.layout, "width_mult": lm.width_mult or 1.0,
               "num_classes": lm.num_classes, "weights_sha256": lm.source_sha256}
        return Source(lm, lm.module, _label(lm.arch, lm.layout, lm.width_mult), False,
                      lm.preprocess, int(lm.num_classes or 1000), key,
                      str(Path(weights).resolve()))
    arch = "mobilenetv3-small" if arch in (None, "auto") else arch
    layout = "seed" if layout in (None, "auto") else layout
    m = create_model(arch, layout=layout, width_mult=width_mult or 1.0, seed=RANDOM_SEED)
    key = {"arch": m.arch, "layout": m.layout, "width_mult": m.width_mult,
           "num_classes": m.num_classes, "random_seed": RANDOM_SEED}
    return Source(m, m, _label(m.arch, m.layout, m.width_mult), True, m.preprocess,
                  int(m.num_classes), key)


def _label(arch, layout, width) -> str:
    extra = [] if layout == "seed" else [f"{layout} layout"]
    if width not in (None, 1.0):
        extra.append(f"x{width:g}")
    return arch + (f" ({', '.join(extra)})" if extra else "")


def export_or_reuse(src: Source, onnx_dir: Path) -> tuple[Path, bool]:
    from mnv3.export import export_onnx

    path = onnx_dir / f"{src.tag}.onnx"
    sidecar = path.with_suffix(".json")
    request = {**src.key, "dynamic_batch": True, "image_size": src.preprocess.crop}
    if path.is_file() and sidecar.is_file():
        try:
            rec = json.loads(sidecar.read_text(encoding="utf-8"))
            if rec.get("request") == request and rec.get("sha256") == sha256_file(path):
                return path, True
        except (OSError, ValueError):
            pass  # unreadable record: export again
    report = export_onnx(src.model, path, dynamic_batch=True, image_size=src.preprocess.crop)
    atomic_write_text(sidecar, json.dumps({"request": request, "sha256": sha256_file(path),
                                           "report": report.to_dict()}, indent=2, default=str))
    return path, False


def reference_top1(src: Source, samples, out_dir: Path, threads: int) -> dict[str, int]:
    """PyTorch eager fp32 top-1 per image: what 'agreement with fp32' compares against."""
    from mnv3.baselines import TorchEagerSession
    from mnv3.inference import infer

    with TorchEagerSession(src.module, threads=threads, image_size=src.preprocess.crop,
                           num_classes=src.num_classes) as session:
        infer(session, samples, out_dir, batch_size=8, progress=False)
    return read_top1(out_dir)


def read_top1(result_dir: Path) -> dict[str, int]:
    """``{filename: top-1 class}`` from an ``eval_result_1.txt`` written by mnv3 infer."""
    out = {}
    for line in (result_dir / "eval_result_1.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            name, _, idx = line.rpartition(" ")
            out[name] = int(idx)
    return out


def build_or_reuse(onnx_path: Path, target: Path, request, src: Source,
                   threads: int) -> tuple[Path, bool, float, list[str]]:
    """(model dir, reused?, build seconds, what a rebuild replaced: [] or the settings that
    changed) for a ``BuildRequest``. A run rebuilds over a model built with other settings (it
    is resumable by design) but says so (issue 13)."""
    from mnv3 import model_settings
    from mnv3.builder import build_from_request

    settings = request.settings(sha256_file(onnx_path))
    if reusable(target, settings):
        return target, True, 0.0, []
    replaced = model_settings.check_replace(target, settings, force=True)
    if src.untrained:  # random weights have no accuracy to keep: measured and marked, not held
        request = request.replace(options={
            "allow_below_budget": True,
            "below_budget_reason": "the network is untrained (random weights)",
            **request.options})
    t0 = time.perf_counter()
    build_from_request(onnx_path, request, target, source=src.record, force=True)
    return target, False, time.perf_counter() - t0, replaced


def reusable(target: Path, request: dict) -> bool:
    """True when ``target`` holds a whole, intact model built for exactly this request
    (``BuildRequest.settings``)."""
    from mnv3.errors import ModelError
    from mnv3.model_settings import differences, recorded

    if not (target / META_FILE).is_file():
        return False
    try:
        meta = read_meta(target)
    except ModelError:
        return False
    compiled = target / meta.compiled_file
    return (not differences(recorded(meta), request)
            and compiled.is_file() and sha256_file(compiled) == meta.compiled_sha256)


def infer_and_score(row, samples, out_dir: Path, ref: dict[str, int], threads: int):
    """(accuracy dict, model notes): top-1/top-5 from mnv3 infer, agreement with the reference."""
    from mnv3.backends import load
    from mnv3.inference import infer

    with load(row.model_dir, threads=threads, spin=False) as session:
        res = infer(session, samples, out_dir, batch_size=row.batch, progress=False)
        notes = list(session.meta.notes)
    return accuracy_of(res, out_dir, ref), notes


def accuracy_of(res, out_dir: Path, ref: dict[str, int]) -> dict:
    """A row's accuracy cell: an InferResult plus top-1 agreement with the reference run."""
    top1 = read_top1(out_dir)
    common = [n for n in top1 if n in ref]
    agree = sum(top1[n] == ref[n] for n in common) / len(common) if common else None
    return {"top1": res.top1, "top5": res.top5, "agreement": agree, "images": res.processed,
            "labeled": res.labeled, "skipped": res.skipped,
            "end_to_end_images_per_s": res.images_per_s,
            "engine_images_per_s": res.engine_images_per_s}


def bench_batch(rows, src: Source, onnx_path: Path, batch: int, threads: int, iterations,
                duration, rounds: int, warmup: int, native=()):
    """Bench every model of this batch and both baselines, interleaved round by round.

    ``native``: (row, CppModel) pairs of ``mnv3 run --cpp``'s C++ rows; each of their rounds is
    one ``mnv3-infer-cpp --bench`` run, taken in turn with the others so that drift of a
    shared machine falls on every row alike.
    """
    from mnv3.backends import load
    from mnv3.baselines import PlainOrtSession, TorchEagerSession
    from mnv3.bench import benchmark, merge_results
    from mnv3.cpp_run import cpp_notes
    from mnv3.report import BASELINE_ORT, BASELINE_TORCH, BaselineRow

    sessions, load_s = {}, {}
    settings = {r.key: _run_settings(r, threads) for r in rows}
    for key, opener in [*((r.key, lambda r=r: load(r.model_dir, **settings[r.key])) for r in rows),
                        (BASELINE_TORCH, lambda: TorchEagerSession(
                            src.module, threads=threads, image_size=src.preprocess.crop,
                            num_classes=src.num_classes)),
                        (BASELINE_ORT, lambda: PlainOrtSession(onnx_path, threads=threads))]:
        t0 = time.perf_counter()
        sessions[key] = opener()
        load_s[key] = time.perf_counter() - t0
    programs = {row.key: (row, model) for row, model in native}
    runs: dict[str, list] = {k: [] for k in [*sessions, *programs]}
    order = list(sessions.items())
    order[len(rows):len(rows)] = [(key, None) for key in programs]  # after the Python rows
    try:
        for r in range(rounds):
            # each round starts one further along (A B C, B C A, ...): no configuration always
            # runs first after the previous batch's sessions, or last before the next
            shift = r % len(order)
            for key, sess in order[shift:] + order[:shift]:
                if key in programs:
                    runs[key].append(_native_round(programs[key], runs, duration, warmup))
                    continue
                run_as = settings.get(key, {"threads": threads, "streams": 1})
                runs[key].append(benchmark(
                    sess, batch=batch, iterations=iterations, duration=duration, warmup=warmup,
                    load_time_s=load_s[key], first_run=(r == 0), label=key, **run_as))
    finally:
        for sess in sessions.values():
            sess.close()
    for row in [*rows, *(row for row, _ in native)]:
        row.bench = merge_results(runs[row.key])
    for row, _ in native:
        row.notes = cpp_notes(row.bench)
    return [BaselineRow(k, batch, merge_results(runs[k])) for k in (BASELINE_TORCH, BASELINE_ORT)]


def _native_round(program, runs: dict, duration, warmup: int):
    """One round of a C++ row, as long as its Python twin's latest round when no duration."""
    from mnv3.cpp_run import bench_round

    row, model = program
    twin = runs.get(f"{model.meta.backend}/{row.name}", [])
    return bench_round(model, twin, duration=duration, warmup=warmup, label=row.name)


def _run_settings(row, threads: int) -> dict:
    """How a row runs: the run's threads and one stream, or what ``mnv3 tune`` chose."""
    if row.tuned:
        return {"threads": int(row.tuned["threads"]), "streams": int(row.tuned["streams"])}
    return {"threads": threads, "streams": 1}


def tuned_rows(onnx_path: Path, plan: dict, src: Source, calib: Path, calib_num: int,
               out: Path, build_options: dict | None, budget_s: float) -> list:
    """``mnv3 run --tune``: one row per batch for ``mnv3 tune``'s throughput winner, run with
    the threads and requests in flight it chose (its builds and report in ``out/tune``)."""
    from mnv3.report import ModelRow
    from mnv3.tune import tune

    report = tune(onnx_path, batch_sizes=plan["batches"], backends=plan["backends"],
                  objective="throughput", calib_dir=calib, calib_num=calib_num,
                  preprocess=src.preprocess, out=out / "tune", time_budget_s=budget_s,
                  build_options=build_options, progress=False,
                  decode_check=False,  # run's rows time the engine: no decode choice to make
                  network_source=src.record)
    rows = []
    for batch in plan["batches"]:
        win = report.winners.get(f"throughput_b{batch}")
        if win is None:
            continue
        meta = read_meta(Path(win["model_dir"]))
        rows.append(ModelRow(
            name=meta.name, quant_mode=meta.quant_mode, shape_mutable=meta.shape_mutable,
            batch=batch, model_dir=win["model_dir"], reused=True, backend=(
                f"{meta.backend} tuned ({win['threads']} thr x {win['streams']} req)"),
            tuned={"threads": win["threads"], "streams": win["streams"]}))
    return rows


class Progress:
    """Which of the N steps is running: a tqdm bar over steps (stderr), or silence."""

    def __init__(self, total: int, enabled: bool = True):
        self.enabled = enabled
        self.i = 0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="mnv3 run", unit="step", file=sys.stderr,
                            bar_format="{desc} |{bar:20}| {n_fmt}/{total_fmt} steps "
                                       "[{elapsed}<{remaining}]")
        self.total = total
        self._note = ""

    @contextlib.contextmanager
    def step(self, what: str, timings: dict, bucket: str):
        self.i += 1
        if self.bar is not None:
            self.bar.set_description(f"mnv3 run: step {self.i}/{self.total}: {what}")
        t0 = time.perf_counter()
        yield
        dt = time.perf_counter() - t0
        timings[bucket] = timings.get(bucket, 0.0) + dt
        if self.bar is not None:
            note, self._note = self._note, ""
            self.bar.write(f"[{self.i}/{self.total}] {what}: {note}{dt:.1f} s", file=sys.stderr)
            self.bar.update(1)

    def drop(self, n: int) -> None:
        """``n`` planned steps will not run (e.g. a batch tune found no winner for)."""
        self.total -= n
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def done(self, what: str) -> None:
        """A word on how the current step went, printed with its line (e.g. 'reused')."""
        self._note = f"{what}; "

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
