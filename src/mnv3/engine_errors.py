"""What each engine raises when it refuses an input, so that an ``except`` names those and no more.

A wrapper that turns an engine's refusal into one of our errors (BuildError, ModelError, ...)
catches one of these tuples, never ``Exception``: a bug in mnv3 (TypeError, AttributeError,
NameError ...) keeps its traceback (issue 14). Each tuple was checked against what the pinned
engines really raise on bad graphs, files and settings; several engines' error types derive
from Exception only, so RuntimeError alone would miss them.

Each is a cached function that imports its engine only when called. ``except ort_errors()``
is evaluated only while an exception is being matched, so no engine is imported early.
"""

from __future__ import annotations

import functools
import inspect


def _exception_classes(module) -> list[type[Exception]]:
    return [v for v in vars(module).values() if inspect.isclass(v) and issubclass(v, Exception)]


@functools.cache
def ort_errors() -> tuple[type[Exception], ...]:
    """ONNX Runtime: its own types (Fail, InvalidGraph, InvalidArgument, NoSuchFile,
    InvalidProtobuf ...: a custom op, a bad input shape, a missing or garbage file) and
    RuntimeError, which pybind11 raises for other C++ errors."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (*_exception_classes(state), RuntimeError)


@functools.cache
def onnx_errors() -> tuple[type[Exception], ...]:
    """onnx: a file that is not a protobuf (DecodeError), a graph the checker or shape
    inference refuses, ValueError (external data outside the folder, a model over 2 GB) and
    OSError (missing or unreadable file)."""
    import onnx
    from google.protobuf.message import DecodeError

    return (DecodeError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError,
            ValueError, OSError)


@functools.cache
def ort_quantization_errors() -> tuple[type[Exception], ...]:
    """onnxruntime.quantization and its float16 converter: ValueError and RuntimeError
    (NotImplementedError too) for graphs they do not support, plus the errors of the ORT
    sessions and onnx calls they make. (Their TypeErrors are about argument types: our bug.)"""
    return (*ort_errors(), *onnx_errors())


@functools.cache
def openvino_errors() -> tuple[type[Exception], ...]:
    """OpenVINO: RuntimeError (compile, reshape, save_model), its own failure types, which
    derive from Exception only (OpConversionFailure for an unknown op, GeneralFailure ...),
    ``openvino.exceptions.OVError`` and the converter's ``ovc`` errors (a garbage or missing
    file given to convert_model)."""
    import openvino
    import openvino._pyopenvino as native

    found = [RuntimeError, openvino.exceptions.OVError, *_exception_classes(native)]
    try:
        from openvino.tools.ovc.error import BasicError

        found.append(BasicError)
    except ImportError:  # an OpenVINO without the converter: convert_model is absent too
        pass
    return tuple(found)


@functools.cache
def nncf_errors() -> tuple[type[Exception], ...]:
    """NNCF: its own types (``nncf.errors``: InternalError, ValidationError,
    UnsupportedModelError ..., Exception only), ValueError and RuntimeError, plus what the
    OpenVINO calls it makes raise."""
    import nncf.errors

    return (*_exception_classes(nncf.errors), ValueError, *openvino_errors())
