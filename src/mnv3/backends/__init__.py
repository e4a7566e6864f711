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

# name -> "module:class". Adding an engine is one module plus one line here; what it can do is
# the class's ``capabilities`` (readable without the engine installed).
_BACKENDS = {
    "onnxruntime": "mnv3.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "mnv3.backends.openvino:OpenVinoBackend",
    "torch": "mnv3.backends.torch_aot:TorchAotBackend",
}

DEFAULT_BACKEND = "onnxruntime"


def register(name: str, target: str) -> None:
    """Register a backend class (``"package.module:Class"``), e.g. a plug-in's or a test's."""
    _BACKENDS[name] = target


def list_backends(available_only: bool = False) -> list[str]:
    names = [n for n, target in _BACKENDS.items()
             if importlib.util.find_spec(target.partition(":")[0])]
    return [n for n in names if not available_only or backend_class(n).missing() is None]


def backend_class(name: str) -> type:
    """The Backend class registered as ``name`` (imports its module, not necessarily its engine)."""
    if name not in _BACKENDS:
        raise UsageError(f"unknown backend {quote(name)}; choose one of {', '.join(_BACKENDS)}")
    module, _, cls = _BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def capabilities(name: str):
    """What backend ``name`` can do (``mnv3.backends.base.Capabilities``)."""
    return backend_class(name).capabilities


def builders_of(mode) -> list[str]:
    """The registered backends that build quant mode ``mode``."""
    return [n for n in list_backends() if capabilities(n).builds(mode)]


def check_builds(name: str, mode) -> None:
    """UsageError when backend ``name`` cannot build ``mode``, naming the backends that can."""
    if capabilities(name).builds(mode):
        return
    others = builders_of(mode)
    if not others:
        raise UsageError(f"no installed backend builds quant mode {mode}; the {name} backend "
                         f"builds {', '.join(capabilities(name).modes)}")
    who = (f"the {others[0]} backend" if len(others) == 1
           else f"the {', '.join(others[:-1])} and {others[-1]} backends")
    raise UsageError(f"quant mode {mode} is built only by {who}, not {name}; add --backend "
                     f"{others[0]} or choose one of {', '.join(capabilities(name).modes)}")


def get_backend(name: str):
    """The backend instance for ``name``; BackendUnavailable with an install hint if missing."""
    cls = backend_class(name)
    why = cls.missing()
    if why is not None:
        raise BackendUnavailable(f"backend {name!r} is not available ({why}); install it "
                                 f"with: {cls.capabilities.install_hint}")
    return cls()


def load(model_dir: str | os.PathLike, threads: int | None = None, **options):
    """Load a built model directory; returns a Session with ``predict(x) -> logits``.

    Checks the compiled file against the sha256 in meta.json first, so a corrupted or swapped
    file is a clear error rather than wrong answers. ``threads``, ``streams`` (requests in
    flight) and ``split`` (each call's batch run as that many sub-batches at once, on backends
    whose capabilities have ``split_batch``) default to the settings ``mnv3 tune`` recorded.
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
    tuned = meta.tuned if threads is None and "streams" not in options \
        and "split" not in options else None
    if tuned:  # what 'mnv3 tune' measured fastest here, unless the caller says otherwise
        threads, options["streams"] = tuned["threads"], tuned["streams"]
        options["split"] = tuned.get("split", 1)
    split = options.pop("split", None)
    split = _check_split(meta, 1 if split is None else int(split), options.get("streams"))
    if split > 1:
        options["split"] = split
    session = get_backend(meta.backend).open(model_dir, meta, threads=threads, **options)
    session.in_flight = int(options.get("streams") or 1)
    session.split = split
    return session


def _check_split(meta, split: int, streams) -> int:
    """``split=S``: one call's batch runs as S sub-batches at once (a batch's latency)."""
    if split < 1:
        raise UsageError(f"split must be at least 1, got {split}")
    if split == 1:
        return 1
    if not capabilities(meta.backend).split_batch:
        able = [n for n in _BACKENDS if capabilities(n).split_batch]
        raise UsageError(f"split={split}: the {meta.backend} backend runs one call as one "
                         f"request; splitting a batch needs {' or '.join(able) or 'another'}")
    if int(streams or 1) > 1:
        raise UsageError(f"split={split} runs each call's sub-batches on their own streams; "
                         "it does not combine with several requests in flight (streams)")
    if not meta.shape_mutable and int(meta.batch_size) % split:
        raise UsageError(f"split={split} does not divide the fixed batch of {meta.name} "
                         f"({meta.batch_size}); choose a divisor, or build with "
                         "--shape-mutable true")
    return split


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
