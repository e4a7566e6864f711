"""What a built model *is*: ``ModelMeta`` written as ``meta.json`` beside the compiled file.

Preprocessing travels with the model (``PreprocessCfg``) so nothing downstream hard-codes 224 or
the ImageNet mean: a wrong normalization silently costs many top-1 points.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnv3.data.files import (QUOTE_CHARS, clip, open_regular, quote, read_text, shown,
                             with_deadline)
from mnv3.errors import ModelError, UsageError
from mnv3.quant_mode import QuantMode

FORMAT_VERSION = 1
META_FILE = "meta.json"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def model_dir_name(quant_mode: QuantMode | str, shape_mutable: bool, batch_size: int) -> str:
    """The seed's naming, e.g. ``qint8_mixed_float16_false_8``."""
    return f"{QuantMode.parse(quant_mode)}_{str(bool(shape_mutable)).lower()}_{int(batch_size)}"


@dataclass(frozen=True)
class PreprocessCfg:
    """The one preprocessing recipe: resize short side, center crop, scale to [0,1], normalize.

    ``mean`` and ``std`` are in 0-1 units, per channel in ``channel_order``.
    """

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"

    def __post_init__(self):
        if self.crop <= 0 or self.resize < self.crop:
            raise UsageError(
                f"preprocessing needs 0 < crop <= resize, got resize={self.resize} crop={self.crop}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise UsageError(
                f"mean and std need 3 values each and std > 0, got mean={self.mean} std={self.std}"
            )
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise UsageError(
                f"interpolation {quote(self.interpolation)} is not one of bilinear, bicubic, nearest"
            )
        if self.channel_order not in ("RGB", "BGR"):
            raise UsageError(f"channel_order must be RGB or BGR, got {quote(self.channel_order)}")
        # Normalise to tuples of floats so equality and JSON round-trips are exact.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessCfg:
        if not isinstance(d, dict):
            raise TypeError(f"preprocess must be a JSON object, got {quote(d)}")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        _check_types(kwargs, _PREPROCESS_TYPES, "preprocess.")
        return cls(**kwargs)


@dataclass
class ModelMeta:
    """Everything needed to load and trust a built model without the source code."""

    backend: str
    backend_version: str
    quant_mode: QuantMode  # a string in meta.json (the seed's name), parsed when read
    shape_mutable: bool
    batch_size: int
    compiled_file: str
    compiled_sha256: str
    input_name: str
    output_name: str
    input_shape: list  # e.g. ["batch", 3, 224, 224] for mutable, [8, 3, 224, 224] for fixed
    output_shape: list
    num_classes: int
    preprocess: PreprocessCfg = field(default_factory=PreprocessCfg)
    class_names: list[str] | None = None
    # op type -> precision it actually runs in, e.g. {"Conv": "int8", "HardSwish": "float16"}
    op_precisions: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # path, sha256, arch, layout, ...
    calibration: dict[str, Any] | None = None  # count, method, files_sha256
    fidelity: dict[str, Any] | None = None  # vs force_float32 on held-out images
    notes: list[str] = field(default_factory=list)  # honest caveats, e.g. slow fp16 on CPU
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific
    created: str = ""
    mnv3_version: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        self.quant_mode = QuantMode.parse(self.quant_mode)

    @property
    def default_batch(self) -> int:
        """Images per engine call when the caller does not say: the fixed batch, or the batch
        a shape-mutable model was built (or tuned) for. One rule for infer, bench and load."""
        return int(self.batch_size)

    @property
    def tuned(self) -> dict[str, Any] | None:
        """The runtime settings ``mnv3 tune`` chose (threads, streams = requests in flight,
        split = sub-batches per call, absent before it was measured), which ``mnv3.load``,
        ``mnv3 infer`` and ``mnv3 bench`` use by default; None: untuned."""
        tuned = (self.extra or {}).get("tuned")
        if not isinstance(tuned, dict) or "threads" not in tuned or "streams" not in tuned:
            return None
        counts = (tuned["threads"], tuned["streams"], tuned.get("split", 1))
        if not all(type(n) is int and n >= 1 for n in counts):  # not bool, float or str
            return None
        return tuned

    @property
    def name(self) -> str:
        return model_dir_name(self.quant_mode, self.shape_mutable, self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["quant_mode"] = self.quant_mode.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        _check_types(kwargs, _META_TYPES)
        kwargs["preprocess"] = PreprocessCfg.from_dict(d.get("preprocess", {}))
        return cls(**kwargs)


# The JSON type of each meta.json field (fuzzed in tests/reliability/test_fuzz_parsers.py): a
# wrong type is refused when read, not found later as a crash deep in an engine (issue 19).
_META_TYPES = {
    **dict.fromkeys(("backend", "backend_version", "quant_mode", "compiled_file",
                     "compiled_sha256", "input_name", "output_name", "created",
                     "mnv3_version"), str),
    "shape_mutable": bool, "batch_size": int, "num_classes": int, "format_version": int,
    "input_shape": list, "output_shape": list, "notes": list, "class_names": (list, type(None)),
    "op_precisions": dict, "source": dict, "extra": dict,
    "calibration": (dict, type(None)), "fidelity": (dict, type(None)),
}
_PREPROCESS_TYPES = {"resize": int, "crop": int, "interpolation": str, "channel_order": str,
                     "mean": tuple, "std": tuple}
_MAX_SIDE = 16384  # pixels: a resize/crop/batch beyond this is a damaged file, not a model


def _check_types(kwargs: dict, types: dict, prefix: str = "") -> None:
    for k, v in kwargs.items():
        want = types.get(k)
        if want is None:
            continue
        ok = isinstance(v, want) and not (want is int and isinstance(v, bool))
        if ok and want is tuple:
            ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        if ok and k in ("resize", "crop", "batch_size") and not 0 < v <= _MAX_SIDE:
            raise ValueError(f"{prefix}{k} is {quote(v)}, expected 1..{_MAX_SIDE}")
        if ok and k == "num_classes" and v < 1:
            raise ValueError(f"{prefix}{k} is {quote(v)}, expected at least 1")
        if not ok:
            wanted = " or ".join(_TYPE_WORDS[t] for t in (want if isinstance(want, tuple) else (want,)))
            raise TypeError(f"{prefix}{k} is {quote(v)}, expected {wanted}")


_TYPE_WORDS = {str: "a string", int: "an integer", bool: "true or false", list: "a list",
               dict: "an object", tuple: "a list of numbers", type(None): "null"}


def write_meta(meta: ModelMeta, model_dir: str | os.PathLike) -> Path:
    path = Path(model_dir) / META_FILE
    path.write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def read_meta(model_dir: str | os.PathLike) -> ModelMeta:
    """Read ``meta.json``; a clear ModelError when it is missing, unreadable or too new."""
    model_dir = Path(model_dir)
    path = model_dir / META_FILE
    if model_dir.is_file():
        raise ModelError(_file_for_dir(model_dir))
    if not model_dir.is_dir():
        raise ModelError(f"model directory {model_dir} does not exist; build one with 'mnv3 build'")
    if not path.exists():  # a FIFO or folder named meta.json: read_text says what it is
        raise ModelError(
            f"{model_dir} has no {META_FILE}, so it is not a built mnv3 model; "
            "rebuild it with 'mnv3 build'"
        )
    try:
        # a regular file under its cap: a FIFO named meta.json cannot hang a load (issue 19)
        d = json.loads(read_text(path, META_FILE, ModelError))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path} is not valid JSON ({clip(e)}); rebuild the model with "
                         "'mnv3 build'") from e
    if not isinstance(d, dict):
        raise ModelError(f"{path} does not hold a JSON object; rebuild the model with 'mnv3 build'")
    version = d.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(
            f"{path} has format_version {clip(repr(version), QUOTE_CHARS)} but this mnv3 reads up to {FORMAT_VERSION}; "
            "upgrade mnv3 (pip install -U mnv3) or rebuild the model with this version"
        )
    try:
        return ModelMeta.from_dict(d)
    except (TypeError, ValueError, UsageError) as e:
        raise ModelError(f"{path} is missing fields or has bad values ({clip(e)}); rebuild the "
                         "model") from e


def _file_for_dir(path: Path) -> str:
    """A file where a model directory was expected: say which folder to pass instead."""
    if (path.parent / META_FILE).is_file():
        return (f"{path} is a file inside a model directory; a model is given as its directory: "
                f"pass {path.parent} (the folder holding {META_FILE})")
    return (f"{path} is a file, not a model directory; build it into one first (e.g. 'mnv3 "
            f"build --onnx {path} ...' for an ONNX file) and pass that directory")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20, what: str = "compiled model",
                error=ModelError) -> str:
    """sha256 of a regular file (``open_regular``: never a FIFO or device, which could block),
    each open and read with the read deadline (a stalled network mount is an error)."""
    h = hashlib.sha256()
    doing = f"reading {what} {shown(path)}"
    with with_deadline(doing, error, open_regular, path, what, error) as f:
        while block := with_deadline(doing, error, f.read, chunk):
            h.update(block)
    return h.hexdigest()

