"""What a model was built with, comparable across builds: where it goes, and whether replacing
the model already there would lose something the user asked for.

One rule for ``mnv3 build`` and ``mnv3 run`` (issue 13): the default place of a model is
``data/models/<name>`` for the default engine (the seed's layout) and
``data/models/<backend>/<name>`` for every other, so an OpenVINO build no longer lands on the
ONNX Runtime model of the same name. A model built with different settings (engine, mode,
batch, source, preprocessing, calibration) is replaced only with ``force``; ``mnv3 run`` passes
it (its runs are resumable by design) and says what it replaced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnv3.backends import DEFAULT_BACKEND
from mnv3.errors import ModelError, UsageError
from mnv3.meta import META_FILE, ModelMeta, PreprocessCfg, read_meta
from mnv3.quant_mode import QuantMode


def model_subdir(backend: str, name: str) -> str:
    """``name`` for the default backend, ``<backend>/<name>`` for the others."""
    return name if backend == DEFAULT_BACKEND else f"{backend}/{name}"


def settings(backend: str, quant_mode, shape_mutable: bool, batch_size: int,
             source_sha256: str, preprocess: PreprocessCfg, calib: dict | None,
             device: str | None = None) -> dict[str, Any]:
    """What defines a built model, comparable between a request (``BuildRequest.settings``) and
    a model directory (``recorded``); ``calib``: meta.json's calibration (int8 only);
    ``device``: where it runs (a package compiled for a GPU is not the CPU's)."""
    return {"backend": backend, "quant_mode": QuantMode.parse(quant_mode),
            "shape_mutable": bool(shape_mutable), "batch_size": int(batch_size),
            "source sha256": source_sha256, "preprocess": preprocess,
            "calibration": _calib_key(calib), "device": device_key(device)}


def recorded(meta: ModelMeta) -> dict[str, Any]:
    """The same settings, as meta.json records them (engines that record no device: cpu)."""
    return settings(meta.backend, meta.quant_mode, meta.shape_mutable, meta.batch_size,
                    meta.source.get("sha256", ""), meta.preprocess, meta.calibration,
                    (meta.extra or {}).get("device"))


def device_key(device: str | None) -> str:
    """``cpu``, ``cuda:N``: one spelling per device (``cuda`` is GPU 0, as torch reads it)."""
    text = str(device or "cpu").strip().lower()
    return "cuda:0" if text == "cuda" else text


def _calib_key(calib: dict | None):
    if not calib:
        return None
    folder = calib.get("folder")
    return (str(Path(folder).resolve()) if folder else None, calib.get("requested"),
            calib.get("method"))


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["quant_mode force_float32 -> qint8_mixed_float16", ...]``; empty when they match."""
    out = []
    for key, new_value in new.items():
        old_value = old.get(key)
        if old_value != new_value:
            out.append(f"{key} {_show(old_value)} -> {_show(new_value)}")
    return out


def _show(value) -> str:
    if isinstance(value, PreprocessCfg):
        return f"resize {value.resize} crop {value.crop} mean {value.mean} std {value.std}"
    if isinstance(value, tuple):  # calibration: folder, count, method
        return f"{value[1]} images of {value[0]} ({value[2]})"
    if isinstance(value, str) and len(value) == 64:  # a sha256
        return value[:12]
    return str(value)


def check_replace(target: Path, new: dict[str, Any], force: bool) -> list[str]:
    """What replacing the model at ``target`` changes ([] when there is none or it matches).

    Without ``force`` a model built with other settings is refused: a build to the default
    path must not silently wipe out another one (issue 13).
    """
    if not (target / META_FILE).is_file():
        return []
    try:
        changes = differences(recorded(read_meta(target)), new)
    except ModelError:
        changes = [f"its {META_FILE} cannot be read"]
    if changes and not force:
        raise UsageError(f"{target} holds a model built with other settings ("
                         f"{'; '.join(changes)}); pass --force to replace it, or choose "
                         "another --output")
    return changes
