"""Stage 2: build a deployable model directory (compiled file + meta.json), atomically.

``build`` validates everything it can before any slow work, fixes the ONNX batch dimension
(a number for ``shape_mutable=False``, symbolic otherwise), lets the backend quantize/compile
into a temporary directory beside the target, measures fidelity against float32 on images
not used for calibration, writes meta.json, and only then renames the directory into place.
An interrupted or failed build leaves nothing at the output path; a rebuild over an existing
model swaps it atomically, so the path always holds the old model or the new one.
"""

from __future__ import annotations

import datetime as _dt
import math
import glob
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mnv3 import __version__
from mnv3 import calibration as cal
from mnv3 import model_settings as settings
from mnv3 import provenance
from mnv3.atomic import build_lock, normal_mode, publish_dir
from mnv3.backends import get_backend
from mnv3.backends.base import BuildConfig
from mnv3.data.files import escape_name, open_regular
from mnv3.errors import DataError, Mnv3Warning, UsageError
from mnv3.meta import (META_FILE, ModelMeta, PreprocessCfg, check_mode_backend, model_dir_name,
                       normalize_quant_mode, sha256_file, write_meta)
from mnv3.gate import Budget, gated_build
from mnv3.onnx_source import prepare_source
from mnv3.sysinfo import int8_isa

DEFAULT_MODELS_DIR = Path("data/models")
# Held-out images compared against float32 at build time (the accuracy budget's evidence):
# 200 resolve a 99% top-1 agreement to +-0.7 points; 100 let 98.25% pass as 99% (Lite0, AVX2).
FIDELITY_NUM = 200


def build(onnx_path, output_dir=None, *, quant_mode: str, shape_mutable: bool, batch_size: int,
          preprocess: PreprocessCfg | None = None, calib_dir=None, calib_num: int = 100,
          calib_method: str = "minmax", backend: str = "onnxruntime",
          class_names: Sequence[str] | None = None, source: dict | None = None,
          options: dict | None = None, strict: bool = False, force: bool = False) -> ModelMeta:
    """Quantize/compile ``onnx_path`` into a model directory; returns its ModelMeta.

    ``output_dir`` defaults to ``data/models/<quant_mode>_<mutable>_<batch>`` (``data/models/
    <backend>/...`` for backends other than onnxruntime, as ``mnv3 run``); a model built there
    with other settings is replaced only with ``force``. int8 modes
    calibrate on ``calib_num`` images of ``calib_dir`` (a seeded, sorted subset; the bundled
    demo images when None); if fewer exist, all are used and meta.json notes it. ``options``
    are backend knobs (e.g. ``{"fidelity_num": 400, "progress": False}``). Images that cannot
    be decoded are skipped and counted (meta.json's calibration.skipped), as ``infer`` does;
    ``strict=True`` makes the first one an error.
    """
    quant_mode = normalize_quant_mode(quant_mode)
    options = dict(options or {})
    onnx_path = Path(onnx_path)
    preprocess = preprocess or PreprocessCfg()
    _check_args(onnx_path, shape_mutable, batch_size, calib_num, calib_method)
    check_mode_backend(quant_mode, backend)
    check_max_drop(options.get("max_drop"), quant_mode, backend)
    Budget.from_options(options)  # a bad budget fails before any slow work
    if (provenance.source_fields(onnx_path).get("untrained") or (source or {}).get("untrained")) \
            and "allow_below_budget" not in options:
        # random weights have no accuracy to keep: the budget is measured and marked, not held
        options.update(allow_below_budget=True,
                       below_budget_reason="the network is untrained (random weights)")
    engine = get_backend(backend)
    name = model_dir_name(quant_mode, shape_mutable, batch_size)
    target = Path(output_dir) if output_dir is not None else default_output(backend, name)
    _check_target(target)
    calib, held_out, calib_info = _calibration_files(quant_mode, calib_dir, calib_num,
                                                     calib_method)
    settings.check_replace(target, settings.requested(
        engine.name, quant_mode, shape_mutable, batch_size,
        (source or {}).get("sha256") or sha256_file(onnx_path), preprocess, calib_info), force)
    calib, held_out = _skip_undecodable(calib, held_out, calib_info, preprocess, strict,
                                        int(options.get("fidelity_num", FIDELITY_NUM)))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, a read-only place: the user's to fix
        raise UsageError(f"cannot create {target.parent} for the model ({e.strerror or e}); "
                         "choose a writable --output") from None
    with build_lock(target):
        _remove_temps(target)  # left by a killed build (SIGKILL cannot be cleaned up after)
        try:
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
            normal_mode(tmp, directory=True)  # it becomes the model folder: not mkdtemp's 0700
            meta = _build_into(tmp, engine, onnx_path, quant_mode, bool(shape_mutable),
                               int(batch_size), preprocess, calib, held_out, calib_info,
                               calib_method, class_names, source or {}, options)
            publish_dir(tmp, target)
        except BaseException:
            _remove_temps(target)  # by pattern: Ctrl-C may land inside mkdtemp, before `tmp =`
            raise
    return meta


def default_output(backend: str, name: str) -> Path:
    """Where a model goes without --output: one rule for build and run (issue 13)."""
    return DEFAULT_MODELS_DIR / settings.model_subdir(backend, name)


def check_max_drop(max_drop, quant_mode: str, backend: str) -> None:
    """``max_drop`` (top-1 points) is the budget of a reduced-precision build (mnv3.gate)."""
    if max_drop is None:
        return
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or max_drop < 0:
        raise UsageError(f"max_drop is a top-1 drop in points (>= 0, e.g. 0.3), got {max_drop!r}")
    if quant_mode == "force_float32":
        raise UsageError("max_drop bounds the accuracy a reduced precision may lose; "
                         "force_float32 is the reference. Use an int8 or 16-bit mode, or drop it")


def _remove_temps(target: Path) -> None:
    """Delete ``.<name>.tmp-*`` beside ``target``; only the lock holder may call this."""
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _build_into(tmp: Path, engine, onnx_path, quant_mode, mutable, batch, preprocess, calib,
                held_out, calib_info, calib_method, class_names, source, options) -> ModelMeta:
    src = prepare_source(onnx_path, tmp / ".source.onnx", mutable, batch, preprocess)
    if class_names is not None and len(class_names) != src.num_classes:
        raise UsageError(f"{len(class_names)} class names given but the model has "
                         f"{src.num_classes} classes; pass a synsets file with one name per class")
    cfg = BuildConfig(quant_mode=quant_mode, shape_mutable=mutable, batch_size=batch,
                      preprocess=preprocess, calib_files=calib, calib_method=calib_method,
                      options=options)
    calib_notes = calib_info.pop("notes", []) if calib_info else []

    def make_meta(compiled) -> ModelMeta:
        shape_in = ["batch" if mutable else batch, 3, src.image_size, src.image_size]
        return ModelMeta(
            backend=engine.name, backend_version=engine.version(), quant_mode=quant_mode,
            shape_mutable=mutable, batch_size=batch, compiled_file=compiled.compiled_file,
            compiled_sha256=sha256_file(tmp / compiled.compiled_file),
            input_name=src.input_name, output_name=src.output_name, input_shape=shape_in,
            output_shape=[shape_in[0], src.num_classes], num_classes=src.num_classes,
            preprocess=preprocess, class_names=list(class_names) if class_names else None,
            op_precisions=compiled.op_precisions,
            source={"path": str(onnx_path.resolve()), "sha256": sha256_file(onnx_path),
                    **provenance.source_fields(onnx_path), **source},
            calibration=calib_info, notes=calib_notes + compiled.notes,
            extra={**compiled.extra, "isa": int8_isa()},
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            mnv3_version=__version__,
        )

    num = int(options.get("fidelity_num", FIDELITY_NUM))
    fid_files, unseen = (held_out[:num], True) if held_out else (calib[:num], not calib)
    if fid_files and "validation_files" not in cfg.options:
        # an engine's own accuracy control (NNCF) validates on the budget's held-out images
        cfg.options = {**cfg.options, "validation_files": list(fid_files)}
    decoded: list = []  # the fidelity images, decoded once for every round of the gate

    def measure(session) -> dict[str, Any]:
        if fid_files and not decoded:
            decoded.append(np.concatenate(list(cal.iter_batches(fid_files, preprocess, 16))))
        return measure_fidelity(src.reference_path, session, fid_files, preprocess,
                                held_out=unseen, images=decoded[0] if decoded else None)

    try:
        meta = gated_build(engine, src, tmp, cfg, make_meta, measure)
    finally:
        for d in cfg.state.get("cleanup", []):
            shutil.rmtree(d, ignore_errors=True)
    (tmp / ".source.onnx").unlink(missing_ok=True)
    src.cleanup()
    write_meta(meta, tmp)
    return meta


# ----------------------------------------------------------------------------- validation
def _check_args(onnx_path: Path, mutable, batch_size, calib_num, calib_method) -> None:
    if not onnx_path.exists():
        raise UsageError(f"ONNX model {onnx_path} does not exist; check the path ('mnv3 "
                         "export --weights CKPT --output FILE.onnx' makes one from a MobileNetV3 "
                         "checkpoint; README.md shows how to get lite0.onnx)")
    open_regular(onnx_path, "ONNX model", UsageError, 16 << 30).close()  # not a FIFO (issue 19)
    if not isinstance(mutable, bool):
        raise UsageError(f"shape_mutable must be true or false, got {mutable!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise UsageError(f"batch size must be a whole number >= 1, got {batch_size!r}")
    if not isinstance(calib_num, int) or calib_num < 1:
        raise UsageError(f"--calib-num must be >= 1, got {calib_num!r}")
    if calib_method not in cal.CALIB_METHODS:
        raise UsageError(f"unknown calibration method {calib_method!r}; "
                         f"choose one of {', '.join(cal.CALIB_METHODS)}")


def _check_target(target: Path) -> None:
    """Only a built model (or an empty folder) may be replaced; never a user's other files."""
    if target.exists() and not target.is_dir():
        raise UsageError(f"output {target} exists and is not a directory; choose another --output")
    if target.is_dir() and any(target.iterdir()) and not (target / META_FILE).is_file():
        raise UsageError(f"output {target} is a non-empty directory without {META_FILE}, so it "
                         "is not a model this tool built; choose another --output or remove it")


def _demo_dir() -> Path | None:
    try:
        from mnv3.data.datasets import demo_dir
        return Path(demo_dir())
    except (ImportError, AttributeError):  # the data stage is not installed yet
        return None


def _calibration_files(quant_mode, calib_dir, calib_num, method):
    """(calibration files, held-out files, meta.calibration) for this build."""
    int8 = quant_mode.startswith("qint8")
    folder = Path(calib_dir) if calib_dir is not None else _demo_dir()
    if folder is None:
        if int8:
            raise UsageError("int8 modes need calibration images: pass --calib-dir DIR "
                             "(a folder of training-like images, ~100 are enough)")
        return [], [], None
    files = cal.list_images(folder)
    if int8 and not files:
        raise UsageError(f"calibration folder {folder} holds no images "
                         f"({', '.join(cal.IMAGE_EXTS)}); pass --calib-dir with images")
    if not int8:
        return [], files, None
    calib, held_out = cal.split_calibration(files, calib_num)
    info: dict[str, Any] = {"count": len(calib), "requested": calib_num, "method": method,
                            "folder": str(folder), "files_sha256": cal.files_sha256(calib),
                            "seed": cal.CALIB_SEED, "notes": []}
    if calib_num > len(files):
        info["notes"].append(f"--calib-num {calib_num} asked for more images than {folder} holds "
                             f"({len(files)}): all were used for calibration")
    return calib, held_out, info


def _skip_undecodable(calib, held_out, info, cfg, strict: bool, fidelity_num: int):
    """Drop the images that cannot be decoded from the calibration set and from the held-out
    images the fidelity check will use; record and warn about them. One broken JPEG in
    --calib-dir stopped the build, while infer skips it (issue 13)."""
    calib, bad = cal.decodable(calib, cfg, strict) if calib else ([], [])
    fid, bad_fid = cal.decodable(held_out[:fidelity_num], cfg, strict) if held_out else ([], [])
    if bad and info is not None:
        info["count"] = len(calib)
        info["files_sha256"] = cal.files_sha256(calib)
        info["skipped"] = [f"{escape_name(p.name)}: {why}" for p, why in bad]
        info["notes"].append(f"{len(bad)} calibration image(s) could not be decoded and were "
                             f"skipped (first: {escape_name(bad[0][0].name)}); calibrated on {len(calib)}")
    for what, skipped in (("calibration", bad), ("fidelity-check", bad_fid)):
        if skipped:
            warnings.warn(f"skipped {len(skipped)} {what} image(s) that could not be decoded "
                          f"(first: {escape_name(skipped[0][0])}: {skipped[0][1]}); --strict makes this an "
                          "error", Mnv3Warning, stacklevel=3)
    if info is not None and not calib:
        raise DataError(f"none of the calibration images in {info['folder']} could be decoded "
                        f"(first: {bad[0][1]}); pass --calib-dir with valid images")
    return calib, fid + held_out[fidelity_num:]


# ----------------------------------------------------------------------------- fidelity
def measure_fidelity(reference_onnx: Path, session, files: Sequence[Path], cfg: PreprocessCfg,
                     held_out: bool = True, chunk: int = 16,
                     images: np.ndarray | None = None) -> dict[str, Any]:
    """Top-1 agreement, cosine similarity and max |diff| of logits vs float32 ONNX Runtime.

    Uses ``files`` (images not seen by calibration); without images it falls back to seeded
    random inputs, which checks numerics but says nothing about accuracy (labelled as such).
    """
    import onnxruntime as ort

    ref = ort.InferenceSession(str(reference_onnx), providers=["CPUExecutionProvider"])
    name = ref.get_inputs()[0].name
    size = session.image_size
    if files and images is not None:  # already decoded by the caller
        batches = (images[i:i + chunk] for i in range(0, len(images), chunk))
        inputs = f"{len(files)} images" + ("" if held_out else " (also used for calibration)")
    elif files:
        batches = cal.iter_batches(list(files), cfg, chunk)
        inputs = f"{len(files)} images" + ("" if held_out else " (also used for calibration)")
    else:
        rng = np.random.default_rng(0)
        batches = iter([rng.standard_normal((8, 3, size, size), dtype=np.float32)])
        inputs = "8 random-normal tensors (no images: pass --calib-dir for real figures)"
    agree, cos, max_abs, n, flips = 0, [], 0.0, 0, 0.0
    for x in batches:
        a = _run_padded(ref, name, x).astype(np.float64)
        b = session.predict(x).astype(np.float64)
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        flips += float(flip_probability(a, b).sum())
        cos.extend((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30))
        max_abs = max(max_abs, float(np.abs(a - b).max()))
        n += len(x)
    return {"reference": "force_float32 (source ONNX on ONNX Runtime CPU)", "inputs": inputs,
            "count": n, "top1_agreement": agree / n,
            "top1_agreement_expected": 1.0 - flips / n, "cosine_mean": float(np.mean(cos)),
            "cosine_min": float(np.min(cos)), "max_abs_diff": max_abs,
            "files_sha256": cal.files_sha256(files) if files else None}


def flip_probability(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image, the chance that noise like ``b - a`` swaps ``a``'s top two classes.

    Counting flips on a few hundred images is coarse (on Lite0 int8 the same build measured
    99.0% on one 200 and 97.5% on the next); this uses every image's margin instead: a flip
    needs the noise difference of the top two logits (std ~ sqrt(2) x the image's logit
    noise std) to exceed their margin. Its mean predicted 98.3-98.6% where 98.25% was counted
    on 400 images.
    """
    top2 = np.argsort(-a, axis=1)[:, :2]
    rows = np.arange(len(a))
    margin = a[rows, top2[:, 0]] - a[rows, top2[:, 1]]
    noise = (b - a).std(axis=1) * np.sqrt(2.0) + 1e-30
    return 0.5 * np.vectorize(math.erfc)(margin / noise / np.sqrt(2.0))


def _run_padded(sess, name: str, x: np.ndarray) -> np.ndarray:
    """Run an ORT session whose batch may be fixed: split and pad like Session.predict."""
    b = sess.get_inputs()[0].shape[0]
    if not isinstance(b, int) or b == len(x):
        return sess.run(None, {name: x})[0]
    out = []
    for i in range(0, len(x), b):
        chunk = x[i:i + b]
        pad = np.repeat(chunk[-1:], b - len(chunk), axis=0)
        out.append(sess.run(None, {name: np.concatenate([chunk, pad])})[0][:len(chunk)])
    return np.concatenate(out)
