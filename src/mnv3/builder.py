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
from mnv3.backends import DEFAULT_BACKEND, get_backend
from mnv3.backends.base import BuildConfig
from mnv3.build_request import BuildRequest
from mnv3.data.datasets import IMAGE_EXTENSIONS
from mnv3.defaults import CALIB_NUM
from mnv3.data.files import escape_name, open_regular
from mnv3.errors import DataError, Mnv3Warning, UsageError
from mnv3.fidelity import measure_fidelity
from mnv3.meta import META_FILE, ModelMeta, PreprocessCfg, sha256_file, write_meta
from mnv3.gate import gated_build
from mnv3.quant_mode import QuantMode
from mnv3.onnx_source import prepare_source
from mnv3.sysinfo import int8_isa

DEFAULT_MODELS_DIR = Path("data/models")
# Held-out images compared against float32 at build time (the accuracy budget's evidence):
# 200 resolve a 99% top-1 agreement to +-0.7 points; 100 let 98.25% pass as 99% (Lite0, AVX2).
FIDELITY_NUM = 200


def build(onnx_path, output_dir=None, *, quant_mode: str | QuantMode, shape_mutable: bool,
          batch_size: int, preprocess: PreprocessCfg | None = None, calib_dir=None,
          calib_num: int = CALIB_NUM, calib_method: str | None = None,
          backend: str = DEFAULT_BACKEND, class_names: Sequence[str] | None = None,
          source: dict | None = None, options: dict | None = None, strict: bool = False,
          force: bool = False) -> ModelMeta:
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
    request = BuildRequest(quant_mode=quant_mode, shape_mutable=shape_mutable,
                           batch_size=batch_size, backend=backend,
                           preprocess=preprocess or PreprocessCfg(), calib_dir=calib_dir,
                           calib_num=calib_num, calib_method=calib_method, strict=strict,
                           options=options or {})
    return build_from_request(onnx_path, request, output_dir, class_names=class_names,
                         source=source, force=force)


def build_from_request(onnx_path, request: BuildRequest, output_dir=None, *,
                  class_names: Sequence[str] | None = None, source: dict | None = None,
                  force: bool = False) -> ModelMeta:
    """``build`` for a validated ``BuildRequest`` (what ``mnv3 run`` and ``mnv3 tune`` pass)."""
    onnx_path = Path(onnx_path)
    _check_onnx(onnx_path)
    options = dict(request.options)
    if (provenance.source_fields(onnx_path).get("untrained") or (source or {}).get("untrained")) \
            and "allow_below_budget" not in options:
        # random weights have no accuracy to keep: the budget is measured and marked, not held
        options.update(allow_below_budget=True,
                       below_budget_reason="the network is untrained (random weights)")
    engine = get_backend(request.backend)
    target = Path(output_dir) if output_dir is not None else default_output(request.backend,
                                                                            request.name)
    _check_target(target)
    calib, held_out, calib_info = _calibration_files(request)
    settings.check_replace(target, request.settings(
        (source or {}).get("sha256") or sha256_file(onnx_path), calib_info), force)
    calib, held_out = _skip_undecodable(calib, held_out, calib_info, request.preprocess,
                                        request.strict,
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
            meta = _build_into(tmp, engine, onnx_path, request.replace(options=options),
                               calib, held_out, calib_info, class_names, source or {})
            publish_dir(tmp, target)
        except BaseException:
            _remove_temps(target)  # by pattern: Ctrl-C may land inside mkdtemp, before `tmp =`
            raise
    return meta


def default_output(backend: str, name: str) -> Path:
    """Where a model goes without --output: one rule for build and run (issue 13)."""
    return DEFAULT_MODELS_DIR / settings.model_subdir(backend, name)


def _remove_temps(target: Path) -> None:
    """Delete ``.<name>.tmp-*`` beside ``target``; only the lock holder may call this."""
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _build_into(tmp: Path, engine, onnx_path, request: BuildRequest, calib, held_out,
                calib_info, class_names, source) -> ModelMeta:
    mutable, batch, preprocess = request.shape_mutable, request.batch_size, request.preprocess
    options = request.options
    src = prepare_source(onnx_path, tmp / ".source.onnx", mutable, batch, preprocess)
    if class_names is not None and len(class_names) != src.num_classes:
        raise UsageError(f"{len(class_names)} class names given but the model has "
                         f"{src.num_classes} classes; pass a synsets file with one name per class")
    described = {"path": str(onnx_path.resolve()), "sha256": sha256_file(onnx_path),
                 **provenance.source_fields(onnx_path), **source}
    cfg = BuildConfig(quant_mode=request.quant_mode, shape_mutable=mutable, batch_size=batch,
                      preprocess=preprocess, calib_files=calib,
                      calib_method=request.calib_method, options=options, source=described)
    calib_notes = calib_info.pop("notes", []) if calib_info else []

    def make_meta(compiled) -> ModelMeta:
        shape_in = ["batch" if mutable else batch, 3, src.image_size, src.image_size]
        return ModelMeta(
            backend=engine.name, backend_version=engine.version(), quant_mode=cfg.quant_mode,
            shape_mutable=mutable, batch_size=batch, compiled_file=compiled.compiled_file,
            compiled_sha256=sha256_file(tmp / compiled.compiled_file),
            input_name=src.input_name, output_name=src.output_name, input_shape=shape_in,
            output_shape=[shape_in[0], src.num_classes], num_classes=src.num_classes,
            preprocess=preprocess, class_names=list(class_names) if class_names else None,
            op_precisions=compiled.op_precisions,
            source=described,
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
            decoded.append(np.concatenate(list(cal.decode_batches(fid_files, preprocess, 16))))
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
def _check_onnx(onnx_path: Path) -> None:
    if not onnx_path.exists():
        raise UsageError(f"ONNX model {onnx_path} does not exist; check the path ('mnv3 "
                         "export --weights CKPT --output FILE.onnx' makes one from a MobileNetV3 "
                         "checkpoint; README.md shows how to get lite0.onnx)")
    open_regular(onnx_path, "ONNX model", UsageError, 16 << 30).close()  # not a FIFO (issue 19)


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


def _calibration_files(request: BuildRequest):
    """(calibration files, held-out files, meta.calibration) for this build."""
    int8, calib_num, method = request.int8, request.calib_num, request.calib_method
    folder = request.calib_dir if request.calib_dir is not None else _demo_dir()
    if folder is None:
        if int8:
            raise UsageError("int8 modes need calibration images: pass --calib-dir DIR "
                             "(a folder of training-like images, ~100 are enough)")
        return [], [], None
    files = cal.list_images(folder)
    if int8 and not files:
        raise UsageError(f"calibration folder {folder} holds no images "
                         f"({', '.join(IMAGE_EXTENSIONS)}); pass --calib-dir with images")
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
