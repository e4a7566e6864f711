"""One build request, validated once where it enters (``mnv3 build``, ``mnv3.build``,
``mnv3 run``'s planner, ``mnv3 tune``), before any slow work.

Below this point nothing re-checks a batch size or re-parses a quant mode. Its ``settings``
are what a model directory records (``mnv3.model_settings.recorded``): reusing or replacing
a model compares whole requests, not a hand-picked subset of fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnv3.backends import DEFAULT_BACKEND
from mnv3.defaults import CALIB_METHOD, CALIB_NUM
from mnv3.errors import UsageError
from mnv3.meta import PreprocessCfg
from mnv3.quant_mode import QuantMode

# Every activation-range method some backend offers (each backend declares its own subset).
CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class BuildRequest:
    """What model to build: engine, precision, shape, preprocessing and calibration."""

    quant_mode: QuantMode
    shape_mutable: bool
    batch_size: int
    backend: str = DEFAULT_BACKEND
    preprocess: PreprocessCfg = field(default_factory=PreprocessCfg)
    calib_dir: Path | None = None  # None: the bundled demo images
    calib_num: int = CALIB_NUM
    calib_method: str | None = None  # None: the backend's default (its first calib method)
    strict: bool = False  # an undecodable calibration image is an error, not skipped
    # Backend knobs and the accuracy budget (min_agreement, max_drop, min_cosine, ...).
    options: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        # frozen: normalized here, once
        object.__setattr__(self, "quant_mode", QuantMode.parse(self.quant_mode))
        object.__setattr__(self, "options", dict(self.options or {}))
        if self.calib_dir is not None:
            object.__setattr__(self, "calib_dir", Path(self.calib_dir))
        self._validate()

    def _validate(self) -> None:
        from mnv3.backends import capabilities, check_builds
        from mnv3.gate import Budget

        if not isinstance(self.shape_mutable, bool):
            raise UsageError(f"shape_mutable must be true or false, got {self.shape_mutable!r}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) \
                or self.batch_size < 1:
            raise UsageError(f"batch size must be a whole number >= 1, got {self.batch_size!r}")
        if not isinstance(self.calib_num, int) or isinstance(self.calib_num, bool) \
                or self.calib_num < 1:
            raise UsageError(f"--calib-num must be >= 1, got {self.calib_num!r}")
        check_builds(self.backend, self.quant_mode)  # also: an unknown backend
        methods = capabilities(self.backend).calib_methods if self.int8 else CALIB_METHODS
        if self.calib_method is None:  # frozen: resolved here, once
            object.__setattr__(self, "calib_method", methods[0] if methods else CALIB_METHOD)
        if self.calib_method not in methods:
            raise UsageError(f"--calib-method {self.calib_method} is not offered by the "
                             f"{self.backend} backend; use {' or '.join(methods)}")
        check_device(self.options.get("device"), self.backend)
        check_max_drop(self.options.get("max_drop"), self.quant_mode)
        Budget.from_options(self.options)

    @property
    def int8(self) -> bool:
        return self.quant_mode.int8

    @property
    def name(self) -> str:
        """The seed's model name, e.g. ``qint8_mixed_float16_false_8``."""
        from mnv3.meta import model_dir_name

        return model_dir_name(self.quant_mode, self.shape_mutable, self.batch_size)

    def replace(self, **changes) -> BuildRequest:
        return dataclasses.replace(self, **changes)

    def settings(self, source_sha256: str, calibration: dict | None = None) -> dict[str, Any]:
        """What the model built from this request records; ``calibration``: meta.json's (the
        folder actually used), else this request's calib_dir."""
        if calibration is None and self.int8:
            calibration = {"folder": str(self.calib_dir) if self.calib_dir else None,
                           "requested": self.calib_num, "method": self.calib_method}
        from mnv3.model_settings import settings

        return settings(self.backend, self.quant_mode, self.shape_mutable, self.batch_size,
                        source_sha256, self.preprocess, calibration if self.int8 else None,
                        self.options.get("device"))


def check_device(device, backend: str) -> None:
    """``device`` (a build option: cpu, cuda, cuda:N) must be a kind the backend runs on;
    whether this machine has that GPU is the backend's to say when it builds."""
    import re

    from mnv3.backends import capabilities

    if device is None:
        return
    m = re.fullmatch(r"(cpu|cuda)(:\d+)?", str(device).strip().lower())
    if not m or (m.group(1) == "cpu" and m.group(2)):
        raise UsageError(f"--device must be cpu, cuda or cuda:N (N = GPU index), got {device!r}")
    devices = capabilities(backend).devices
    if m.group(1) not in devices:
        from mnv3.backends import list_backends

        others = [b for b in list_backends() if m.group(1) in capabilities(b).devices]
        raise UsageError(f"the {backend} backend builds for {' and '.join(devices)} only, not "
                         f"{device}" + (f"; use --backend {others[0]}" if others else ""))


def check_max_drop(max_drop, quant_mode: QuantMode) -> None:
    """``max_drop`` (top-1 points) is the budget of a reduced-precision build (mnv3.gate)."""
    if max_drop is None:
        return
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or max_drop < 0:
        raise UsageError(f"max_drop is a top-1 drop in points (>= 0, e.g. 0.3), got {max_drop!r}")
    if quant_mode.is_reference:
        raise UsageError("max_drop bounds the accuracy a reduced precision may lose; "
                         "force_float32 is the reference. Use an int8 or 16-bit mode, or drop it")
