"""Engine registry. Each engine is one module, imported only when asked for.

``import mnv3.backends`` imports no engine; ``get_backend(name)`` imports one and says how to
install it when it is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from mnv3.errors import BackendUnavailable, ModelError, UsageError
from mnv3.data.files import quote
from mnv3.meta import read_meta, sha256_file

# name -> (module, class, pip extra that installs it)
_BACKENDS = {
    "onnxruntime": ("mnv3.backends.onnxruntime", "OnnxRuntimeBackend", 'pip install "mnv3"'),
    "openvino": ("mnv3.backends.openvino", "OpenVinoBackend", 'pip install "mnv3[openvino]"'),
}

DEFAULT_BACKEND = "onnxruntime"


def list_backends(available_only: bool = False) -> list[str]:
    names = [n for n, (mod, _, _) in _BACKENDS.items() if importlib.util.find_spec(mod)]
    if not available_only:
        return names
    out = []
    for n in names:
        try:
            get_backend(n)
            out.append(n)
        except BackendUnavailable:
            pass
    return out


def get_backend(name: str):
    """The backend instance for ``name``; BackendUnavailable with an install hint if missing."""
    if name not in _BACKENDS:
        raise UsageError(f"unknown backend {quote(name)}; choose one of {', '.join(_BACKENDS)}")
    module, cls, hint = _BACKENDS[name]
    try:
        mod = importlib.import_module(module)
        return getattr(mod, cls)()
    except ImportError as e:
        raise BackendUnavailable(
            f"backend {name!r} is not available ({e}); install it with: {hint}"
        ) from e


def load(model_dir: str | os.PathLike, threads: int | None = None, **options):
    """Load a built model directory; returns a Session with ``predict(x) -> logits``.

    Checks the compiled file against the sha256 in meta.json first, so a corrupted or swapped
    file is a clear error rather than wrong answers.
    """
    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    if Path(meta.compiled_file).name != meta.compiled_file or meta.compiled_file in ("", ".", ".."):
        raise ModelError(
            f"{model_dir}/meta.json names compiled file {quote(meta.compiled_file)}, which is not a plain "
            "file name inside the model directory; rebuild the model with 'mnv3 build'"
        )
    if meta.backend not in _BACKENDS:
        raise ModelError(
            f"{model_dir} was built for backend {quote(meta.backend)}, which this mnv3 does not know "
            f"(known: {', '.join(_BACKENDS)}); upgrade mnv3 or rebuild the model"
        )
    compiled = model_dir / meta.compiled_file
    if not compiled.exists():  # a FIFO or folder: sha256_file refuses it, saying what it is
        raise ModelError(f"{model_dir} lacks its compiled file {meta.compiled_file}; rebuild it")
    if sha256_file(compiled) != meta.compiled_sha256:
        raise ModelError(
            f"{compiled} does not match the sha256 recorded in meta.json: the file is corrupt or "
            "was replaced; rebuild the model with 'mnv3 build'"
        )
    warn_if_other_isa(model_dir, meta)
    return get_backend(meta.backend).open(model_dir, meta, threads=threads, **options)


_WARNED: set[str] = set()


def isa_mismatch(meta, isa: str | None = None) -> str | None:
    """Why an int8 model's fidelity may not hold on this CPU (None when it does)."""
    from mnv3.sysinfo import int8_isa, int8_saturates, isa_label

    built_on = (meta.extra or {}).get("isa")
    runs_int8 = any(str(p).startswith("int8") for p in (meta.op_precisions or {}).values())
    here = isa or int8_isa()
    if not built_on or not runs_int8 or int8_saturates(built_on) == int8_saturates(here):
        return None
    return (f"{meta.name} runs int8 and was validated on a {isa_label(built_on)} CPU, but this "
            f"CPU is {isa_label(here)}, whose int8 arithmetic differs; re-check its accuracy "
            f"here with: mnv3 verify {{model}} --images DIR")


def warn_if_other_isa(model_dir: Path, meta) -> None:
    """One warning per model and process when its int8 ISA class differs from this CPU's."""
    msg = isa_mismatch(meta)
    key = str(Path(model_dir).resolve())
    if msg and key not in _WARNED:
        _WARNED.add(key)
        print(f"mnv3: warning: {msg.replace('{model}', str(model_dir))}", file=sys.stderr)
