"""NNCF int8 for the OpenVINO backend: plain post-training quantization and accuracy control.

Calibration images are the build's ``cfg.calib_files`` (sorted, chosen by ``mnv3.build``), each
preprocessed by ``mnv3.data.preprocess.preprocess_image`` with the model's ``cfg.preprocess``:
the same files and the same tensors as the ONNX Runtime backend's CalibrationDataReader. They
are decoded one at a time as NNCF iterates (never all in memory).

Accuracy control (``cfg.options["max_drop"]``, in top-1 points) uses
``nncf.quantize_with_accuracy_control``. Its metric is top-1 *agreement with the fp32 model* in
percent, which needs no labels; since top-1 accuracy can only fall where predictions change, an
agreement drop within ``max_drop`` bounds the top-1 drop on those images by ``max_drop`` too.
NNCF returns the layers that hurt most to float until the budget holds.

Defaults (``DEFAULTS``) were chosen by measurement on the real EfficientNet-Lite0 weights, 100
calibration / 400 held-out images of the ImageNet sample (``benchmarks/openvino_fidelity.py``);
every one can be overridden through ``cfg.options`` (``--option`` style knobs of ``mnv3.build``).
"""

from __future__ import annotations

import io
import logging
import sys
from typing import Any

import numpy as np
import openvino as ov

from mnv3.backends.base import BuildConfig
from mnv3.data.preprocess import preprocess_image
from mnv3.engine_errors import nncf_errors
from mnv3.errors import BackendUnavailable, BuildError, UsageError

# See the module docstring: measured, not guessed. None = NNCF's own default.
DEFAULTS: dict[str, Any] = {
    "preset": None,  # NNCF: "performance" (symmetric activations) for CNNs; "mixed" measured worse
    "fast_bias_correction": True,  # full BiasCorrection measured no better here, 2-3x slower
    # None = by the CPU's int8 ISA class (``overflow_fix_for``).
    "overflow_fix": None,
    # The first / last N convolutions kept float: more accurate (measured below) but slower,
    # the stem at the highest resolution then running in float; options, not the default.
    "float_first": 0,
    "float_last": 0,
    # The classifier's Linear layers stay float (~1% of MobileNetV3-Large's MACs): with the two
    # settings above, Lite0 int8 measured +0.25 point top-1 and 98.25% agreement vs fp32 on
    # the 400 held-out images, against -0.5 / 96.75% with NNCF's plain defaults.
    "ignored_types": ["MatMul"],
    # NNCF gives a depthwise convolution's input per-channel activation scales (the CPU plugin
    # takes them), calibrated by min/max per channel; unseen images overshoot a channel's
    # calibrated maximum far more often than a tensor's, so those ranges clip (figures below
    # DEFAULTS). False: every activation per tensor, as ONNX Runtime quantizes them.
    "per_channel_activations": False,
}
# --calib-method -> NNCF activation range estimator. "minmax" = NNCF's own min/max estimator
# (mean of per-image minima/maxima, global for some quantizers); "entropy" = NNCF's histogram
# estimator. Setting any *mean/median/quantile* estimator explicitly measured -20 to -48 points
# on Lite0 (it then also applies to quantizers NNCF otherwise treats specially), so
# "percentile" is refused rather than silently broken (the backend's capabilities leave it out).
_RANGE = {"minmax": None, "entropy": "HISTOGRAM"}


def _nncf():
    try:
        import nncf
    except ImportError as e:
        raise BackendUnavailable(
            f"int8 with OpenVINO needs NNCF ({e}); install it with: pip install \"mnv3[openvino]\""
        ) from e
    _nncf_log_to_stderr()
    return nncf


# Measured on EfficientNet-Lite0 real weights, AVX2 (Zen 3), calibrated on 100 images, 400
# held-out images, no budget (top-1 agreement / mean logit cosine vs OpenVINO f32;
# ``python benchmarks/openvino_fidelity.py --recipes``, 2026-12-01): overflow fix "enable"
# 97.00% / 0.99017; "disable" (saturating) 87.75% / 0.90183; "enable" with the first 3 and the
# last convolution float 98.75% / 0.99615. With NNCF's per-channel activation scales
# (``per_channel_activations``, mnv3's default until then): 96.25% / 0.98735, and 98.75% /
# 0.99344 with the float ends. Why: per-channel ranges calibrated on 100 images clip unseen
# images far more than per-tensor ones; a matter of ranges, not of the CPU's kernels
# (``benchmarks/int8_floor_lite0.py`` measures it on ONNX Runtime's fake quantization: 12.4
# expected flips with per-channel activation ranges against 4.5 per tensor). Per tensor comes
# at no speed cost (``python benchmarks/ir_variants.py``, benchmark_app, 1 thread, batch 1,
# AVX2: per tensor / per channel 0.99x / 0.98x the plain IR on MobileNetV3-Large, 1.05x / 1.04x
# on Small, within the rounds' noise). NNCF's 8-bit weights re-scaled pair-safe afterwards
# (``mnv3.backends.int8_pairs``; the same command at b1ca07c, which offered it) measured worse,
# 96.25% / 0.98499 (97.50% / 0.99265 with the float ends): NNCF's bias correction had run on
# the saturating model. So it is not offered; it would need its own bias correction.


def overflow_fix_for(isa: str) -> str:
    """NNCF's overflow fix for a CPU of int8 ISA class ``isa`` (mnv3.sysinfo.INT8_ISAS).

    Without VNNI the u8 x s8 multiply-add (vpmaddubsw) sums pairs in int16 and saturates;
    NNCF's fix quantizes weights to 7 bits so it cannot. Measured on EfficientNet-Lite0
    (calibrated on 100 images, 500 evaluated): on an AVX2 CPU (Zen 3) "disable" lost 8.4
    points top-1 (agreement 85.4%, cosine min 0.42) and "enable" 1.6 points; on an AVX-512
    VNNI CPU (Zen 5) "disable" gained 0.25 point and 0.75% agreement over NNCF's default
    ("first_layer_only"), since VNNI accumulates in int32 and never saturates.
    """
    from mnv3.sysinfo import int8_saturates

    return "enable" if int8_saturates(isa) else "disable"


class _Stderr:
    """Whatever ``sys.stderr`` is at the time of each write (pytest and callers swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _nncf_log_to_stderr() -> None:
    """NNCF logs through a handler bound to stdout at import: its lines landed in the middle of
    tables and of ``--json -`` output (issue 13). Diagnostics go to stderr."""
    try:  # exactly NNCF's own handler: others on its logger (e.g. pytest's) are not ours
        from nncf.common.logging.logger import stdout_handler
    except ImportError:  # another NNCF layout: leave it as it is
        return
    if not isinstance(stdout_handler.stream, _Stderr):
        stdout_handler.setStream(_Stderr())


def _progress_to_stderr(enabled: bool):
    """NNCF draws its progress bars (rich) on sys.stdout: send them to stderr, or nowhere with
    ``progress=False`` (--no-progress), until the returned function is called. rich looks
    sys.stdout up when it writes, so swapping it for the call is enough."""
    before = sys.stdout
    sys.stdout = sys.stderr if enabled else io.StringIO()

    def restore() -> None:
        sys.stdout = before

    return restore


def settings(cfg: BuildConfig) -> dict[str, Any]:
    """The quantization settings for ``cfg``: DEFAULTS overridden by ``cfg.options``."""
    from mnv3.sysinfo import int8_isa

    s = {k: cfg.options.get(k, v) for k, v in DEFAULTS.items()}
    s["isa"] = cfg.options.get("isa") or int8_isa()
    if s["overflow_fix"] is None:
        s["overflow_fix"] = overflow_fix_for(s["isa"])
    s["range_estimator"] = cfg.options.get("range_estimator", _RANGE[cfg.calib_method])
    s["ignored_layers"] = list(cfg.options.get("ignored_layers", []))
    if cfg.options.get("max_drop") is not None:  # validated by BuildRequest
        s["max_drop"] = float(cfg.options["max_drop"])
    return s


def quantize(model: ov.Model, cfg: BuildConfig) -> tuple[ov.Model, dict[str, Any]]:
    """int8 ``model`` (batch 1) with NNCF; returns the quantized model and what was done."""
    nncf = _nncf()
    s = settings(cfg)
    files = [str(p) for p in cfg.calib_files]
    calib = nncf.Dataset(files, lambda f: preprocess_image(f, cfg.preprocess)[None])
    s["float_ends"] = _end_convolutions(model, s["float_first"], s["float_last"])
    kwargs = _nncf_kwargs(nncf, s, len(files))
    logger = logging.getLogger("nncf")  # its INFO lines list every op it skips: noise here
    level = logger.level
    logger.setLevel(logging.WARNING)
    restore_stdout = _progress_to_stderr(bool(cfg.options.get("progress", True)))
    try:
        if "max_drop" in s:
            quantized, control = _with_accuracy_control(nncf, model, calib, cfg, s, kwargs)
            s["accuracy_control"] = control
        else:
            quantized = nncf.quantize(model, calib, **kwargs)
    except (BuildError, UsageError, BackendUnavailable):
        raise
    except nncf_errors() as e:
        raise BuildError(f"NNCF int8 quantization failed: {e}") from e
    finally:
        logger.setLevel(level)
        restore_stdout()
    s.update(tool=f"nncf {nncf.__version__}", calibration_images=len(files))
    return quantized, s


def _nncf_kwargs(nncf, s: dict[str, Any], subset: int) -> dict[str, Any]:
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters, OverflowFix,
                                                       QuantizationParameters)
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(s["overflow_fix"]))
    if not s["per_channel_activations"]:
        advanced.activations_quantization_params = QuantizationParameters(per_channel=False)
    if s["range_estimator"]:
        advanced.activations_range_estimator_params = getattr(
            RangeEstimatorParametersSet, s["range_estimator"].upper())
    kwargs: dict[str, Any] = dict(subset_size=subset, target_device=nncf.TargetDevice.CPU,
                                  fast_bias_correction=bool(s["fast_bias_correction"]),
                                  advanced_parameters=advanced)
    if s["preset"]:
        kwargs["preset"] = nncf.QuantizationPreset(s["preset"])
    names = [*s["ignored_layers"], *s.get("float_ends", [])]
    if s["ignored_types"] or names:
        kwargs["ignored_scope"] = nncf.IgnoredScope(
            names=names, types=list(s["ignored_types"]), validate=False)
    return kwargs


_CONVS = ("Convolution", "GroupConvolution")


def _end_convolutions(model: ov.Model, first: int, last: int) -> list[str]:
    """The first ``first`` and last ``last`` convolutions (graph order): kept float."""
    convs = [op.get_friendly_name() for op in model.get_ordered_ops()
             if op.get_type_name() in _CONVS]
    chosen = convs[:max(first, 0)] + (convs[-last:] if last > 0 else [])
    return list(dict.fromkeys(chosen))


def _with_accuracy_control(nncf, model, calib, cfg: BuildConfig, s, kwargs):
    """Quantize, then restore float layers until top-1 agreement drops by <= max_drop points."""
    files = [str(p) for p in cfg.options.get("validation_files") or cfg.calib_files]
    images = [preprocess_image(f, cfg.preprocess)[None] for f in files]  # reused every round
    reference = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    items = [(x, int(np.argmax(reference(x)[0]))) for x in images]

    def agreement(compiled, data) -> tuple[float, list[float]]:
        hits = [float(np.argmax(compiled(x)[0]) == label) for x, label in data]
        return 100.0 * float(np.mean(hits)), hits

    kwargs = dict(kwargs)
    kwargs["advanced_quantization_parameters"] = kwargs.pop("advanced_parameters")
    quantized = nncf.quantize_with_accuracy_control(
        model, calib, nncf.Dataset(items), agreement, max_drop=s["max_drop"],
        drop_type=nncf.DropType.ABSOLUTE, **kwargs)
    q = ov.Core().compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return quantized, {"metric": "top-1 agreement with fp32 (%)", "validation_images": len(files),
                       "agreement": agreement(q, items)[0]}
