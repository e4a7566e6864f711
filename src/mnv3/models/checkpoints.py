"""Load a trained MobileNetV3 from a checkpoint file, safely, and say clearly when it does not fit.

What is accepted (issue 2):
- ``.pth`` / ``.pth.tar`` / ``.pt`` files holding a raw state dict, or one wrapped under
  ``state_dict`` / ``model`` (/ ``model_state_dict``), with or without DataParallel's ``module.``
  prefix;
- a TorchScript archive (``torch.jit.save``), which becomes an opaque model source
  (arch and layout ``"torchscript"``).

Safety: pickles are always read with ``torch.load(..., weights_only=True)``, which refuses any
object that is not a tensor / plain container, so a checkpoint can never execute code.

Detection: layout and arch come from the key names, width multiplier and class count from the
shapes; loading is strict. A mismatch names the closest known network, the first missing and
unexpected keys and the shape mismatches, and says which arguments to pass.
"""

from __future__ import annotations

import functools
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mnv3.data.files import QUOTE_CHARS, clip, open_regular, quote, shown
from mnv3.errors import CheckpointError
from mnv3.meta import PreprocessCfg, sha256_file
from mnv3.models.registry import (ARCHS, LAYOUT_NAMES, DEFAULT_PRESET, build_module, canonical_arch,
                                  check_layout, count_params, describe, preprocess_preset)

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
CLASSIFIER_KEY = {"seed": "classifier.1.weight", "torchvision": "classifier.3.weight"}
# Widths tried when none is given: multiples of 0.05 and of 0.125 up to 3.0.
WIDTH_GRID = tuple(sorted({round(k * 0.05, 4) for k in range(1, 61)}
                          | {round(k * 0.125, 4) for k in range(1, 25)}))
TORCHSCRIPT = "torchscript"


@dataclass
class LoadedModel:
    """A network ready for export, and where it came from."""

    module: nn.Module
    arch: str
    layout: str
    width_mult: float | None
    num_classes: int | None
    preprocess: PreprocessCfg = field(default_factory=PreprocessCfg)
    source_path: str = ""
    source_sha256: str = ""

    @property
    def num_params(self) -> int:
        return count_params(self.module)

    def to_dict(self) -> dict:
        """What ``meta.json``'s ``source`` records about the checkpoint."""
        return {"path": self.source_path, "sha256": self.source_sha256, "arch": self.arch,
                "layout": self.layout, "width_mult": self.width_mult,
                "num_classes": self.num_classes, "num_params": self.num_params}


def load_checkpoint(path, arch: str = "auto", layout: str = "auto", width_mult: float | None = None,
                    num_classes: int | None = None,
                    preprocess: PreprocessCfg | str | None = None) -> LoadedModel:
    """Read ``path`` and return the matching network with the weights loaded strictly, in eval mode.

    ``arch``/``layout`` = ``"auto"`` and ``width_mult``/``num_classes`` = None are detected from the
    checkpoint; pass them to restrict the search (a wrong value is then reported, not ignored).
    ``preprocess``: a PreprocessCfg or preset name (see ``PREPROCESS_PRESETS``); default ImageNet.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {shown(path)} does not exist (expected a .pth, "
                              ".pth.tar or .pt file)")
    open_regular(path, "checkpoint", CheckpointError).close()  # not a FIFO, device, folder
    if isinstance(preprocess, str):
        preprocess = preprocess_preset(preprocess)
    preprocess = preprocess or preprocess_preset(DEFAULT_PRESET)
    digest = sha256_file(path, what="checkpoint", error=CheckpointError)
    if is_torchscript(path):
        module = _load_torchscript(path)
        return LoadedModel(module, TORCHSCRIPT, TORCHSCRIPT, None, _probe_classes(module, path),
                           preprocess, str(path), digest)
    state = state_dict_from(read_pickle(path), path)
    found = match_network(state, path, arch, layout, width_mult, num_classes)
    lay, ar, wm, nc = found
    module = build_module(ar, lay, wm, nc)
    module.load_state_dict(_fill_batch_counters(state, module), strict=True)
    describe(module.eval(), ar, lay, wm, nc, preprocess)
    return LoadedModel(module, ar, lay, wm, nc, preprocess, str(path), digest)


# ------------------------------------------------------------------------------------ reading
def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips with a ``code/`` folder; state-dict zips have only ``data``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())


def _load_torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # still supported in torch 2.13
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:  # torch raises RuntimeError subclasses with long C++ traces
        raise CheckpointError(f"{path} looks like TorchScript but torch.jit.load failed: "
                              f"{clip(str(e).splitlines()[0])}") from None


def _probe_classes(module: nn.Module, path: Path) -> int:
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, 3, 224, 224))
    except Exception as e:
        raise CheckpointError(f"TorchScript model {path} does not run on a 1x3x224x224 float "
                              f"image: {clip(str(e).splitlines()[0])}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise CheckpointError(f"TorchScript model {path} must return [batch, classes] logits")
    return int(out.shape[1])


def read_pickle(path: Path):
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, never code."""
    try:
        with warnings.catch_warnings():
            # torch warns that a pickle of protocol > 2 may not load: if it loads, that is
            # noise; if not, our error names the protocol. Either way not for the user's stderr
            warnings.filterwarnings("ignore", r"Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's first line advises weights_only=False; the GLOBAL line names the object refused
        first = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln), None)
        if first is None:  # bad opcodes: garbage or another format (ONNX, text), not objects
            raise CheckpointError(_unreadable(path, e)) from None
        raise CheckpointError(
            f"refused to load {path}: it pickles objects other than tensors, and mnv3 loads "
            f"checkpoints with weights_only=True so that a file can never run code ({clip(first)}). "
            "If you trust the file, re-save only the weights: "
            "torch.save(model.state_dict(), 'weights.pth')") from None
    except Exception as e:  # a damaged file fails anywhere in unpickling (struct.error, KeyError, ...)
        raise CheckpointError(_unreadable(path, e)) from None


ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"  # the PROTO opcode opens every pickle of protocol 2 or later
WHAT_TO_PASS = ("pass a state dict saved with torch.save (a .pth, .pth.tar or .pt file) or a "
                "TorchScript file saved with torch.jit.save")


def _unreadable(path: Path, error: Exception) -> str:
    """Why torch.load failed, told from the file's first bytes rather than torch's advice."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return f"{path} is not a PyTorch checkpoint: the file is empty (0 bytes); {WHAT_TO_PASS}"
    if not head.startswith((ZIP_MAGIC, PICKLE_PROTO)):  # a text file, an ONNX model, ...
        if is_onnx_file(path):
            return (f"{path} is an ONNX model, not a PyTorch checkpoint; it needs no export: "
                    f"build it with 'mnv3 build --onnx {path} ...'")
        return (f"{path} is not a PyTorch checkpoint: it is neither a torch zip archive nor a "
                f"pickle written by torch.save (it starts with {head!r}); {WHAT_TO_PASS}")
    protocol = _pickle_protocol(path, head)
    if protocol and protocol > 2 and "Unsupported operand" in str(error):
        kind = "a torch zip archive pickled with" if head.startswith(ZIP_MAGIC) else "a pickle of"
        return (f"{path} is {kind} protocol {protocol}, which torch.load(weights_only=True) "
                "cannot read; re-save the weights with torch.save's default protocol (2): "
                "torch.save(model.state_dict(), 'weights.pth')")
    return (f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: "
            f"{clip(_torch_reason(error))}); expected a file written by torch.save")


def is_onnx_file(path: Path) -> bool:
    """True when ``path`` parses as an ONNX model with a graph (weights are not loaded)."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf raises several kinds on non-ONNX bytes
        return False
    return len(model.graph.node) > 0


def looks_like_checkpoint(path: Path) -> bool:
    """True when ``path`` starts like a torch.save file (a zip archive or a pickle)."""
    try:
        with open(path, "rb") as f:
            return f.read(4).startswith((ZIP_MAGIC, PICKLE_PROTO))
    except OSError:
        return False


def _torch_reason(error: Exception) -> str:
    """The first sentence of what went wrong, skipping torch's advice to set weights_only=False."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:  # the reason follows, on this line or the next
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            lines = [rest] if rest else lines[i + 1:i + 2]
            break
    return lines[0].split(". ")[0] if lines else ""


def _pickle_protocol(path: Path, head: bytes) -> int | None:
    """The pickle protocol of a raw pickle, or of the ``data.pkl`` inside a torch zip archive."""
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return None
                with z.open(name) as f:
                    head = f.read(2)
        except (zipfile.BadZipFile, OSError):  # truncated: no central directory
            return None
    return head[1] if head.startswith(PICKLE_PROTO) and len(head) > 1 else None


def state_dict_from(obj, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap ``{'state_dict': ...}`` / ``{'model': ...}`` and strip DataParallel's ``module.``."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a state dict "
                              "(a dict of tensors, optionally under 'state_dict' or 'model')")
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad or not state:
        raise CheckpointError(
            f"{path} is not a state dict: {'it is empty' if not state else f'{_keys(bad)} are not tensors'}"
            f" (top-level keys: {_keys(list(obj), 5)}); expected a dict of tensors, optionally wrapped "
            f"under one of {', '.join(WRAPPER_KEYS)}")
    return state


# ---------------------------------------------------------------------------------- matching
@functools.lru_cache(maxsize=256)
def expected_shapes(layout: str, arch: str, width_mult: float, num_classes: int) -> dict:
    """Key -> shape of a network, built on the meta device (no memory, ~20 ms)."""
    with torch.device("meta"):
        module = build_module(arch, layout, width_mult, num_classes)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _diff(state: dict, shapes: dict) -> tuple[list, list, list]:
    """Missing keys, unexpected keys, shape mismatches; BatchNorm batch counters are optional."""
    missing = [k for k in shapes if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in shapes]
    wrong = [(k, tuple(state[k].shape), s) for k, s in shapes.items()
             if k in state and tuple(state[k].shape) != s]
    return missing, unexpected, wrong


def _width_candidates(state: dict, layout: str, arch: str) -> list[float]:
    """Grid widths near the median ratio of conv widths to their width-1.0 sizes, nearest first."""
    ref = expected_shapes(layout, arch, 1.0, 1000)
    ratios = sorted(state[k].shape[0] / s[0] for k, s in ref.items()
                    if len(s) == 4 and k in state and state[k].dim() == 4)
    if not ratios:
        return [1.0]
    est = ratios[len(ratios) // 2]  # the median ignores fixed-width layers (stem, seed's head)
    near = [w for w in WIDTH_GRID if abs(w - est) <= 0.15 * est + 0.05]
    return sorted(near, key=lambda w: (abs(w - est), w % 0.25 != 0)) or [1.0]


def match_network(state: dict, path: Path, arch="auto", layout="auto", width_mult=None,
                  num_classes=None) -> tuple[str, str, float, int]:
    """(layout, arch, width_mult, num_classes) whose keys and shapes equal the checkpoint's."""
    layouts = LAYOUT_NAMES if layout in (None, "auto") else (check_layout(layout),)
    archs = ARCHS if arch in (None, "auto") else (canonical_arch(arch),)
    tried = []  # (score, layout, arch, width, classes, diff)
    for lay, ar in _by_key_overlap(state, layouts, archs):
        nc = num_classes or _classes_from(state, lay)
        widths = [float(width_mult)] if width_mult else _width_candidates(state, lay, ar)
        for wm in widths:
            diff = _diff(state, expected_shapes(lay, ar, wm, nc))
            if not any(diff):
                return lay, ar, wm, nc
            tried.append((sum(map(len, diff)), lay, ar, wm, nc, diff))
    message = _mismatch_message(path, min(tried, key=lambda t: t[0]), layouts, archs)
    if (layout, arch, width_mult, num_classes) != ("auto", "auto", None, None):
        try:  # a wrong hint is the likeliest cause: say what the file really is
            lay, ar, wm, nc = match_network(state, path)
            message += (f". Detected without hints: --layout {lay} --arch {ar} --width-mult {wm:g} "
                        f"--num-classes {nc}")
        except CheckpointError:
            pass
    raise CheckpointError(message)


def _by_key_overlap(state: dict, layouts, archs) -> list[tuple[str, str]]:
    """(layout, arch) pairs whose key names best overlap the checkpoint's (key names barely depend
    on the width), so the width search runs only where it can succeed."""
    keys = set(state)
    scored = [(len(keys & set(expected_shapes(lay, ar, 1.0, 1000))) /
               len(keys | set(expected_shapes(lay, ar, 1.0, 1000))), lay, ar)
              for lay in layouts for ar in archs]
    best = max(s for s, _, _ in scored)
    return [(lay, ar) for s, lay, ar in scored if s == best]


def _classes_from(state: dict, layout: str) -> int:
    w = state.get(CLASSIFIER_KEY[layout])
    return int(w.shape[0]) if w is not None and w.dim() == 2 else 1000


def _mismatch_message(path, best, layouts, archs) -> str:
    _, lay, ar, wm, nc, (missing, unexpected, wrong) = best
    parts = [f"{len(missing)} missing keys (first: {_keys(missing)})" if missing else "",
             f"{len(unexpected)} unexpected keys (first: {_keys(unexpected)})"
             if unexpected else "",
             "shape mismatches: " + "; ".join(f"{k} is {list(a)} in the checkpoint, {list(b)} in "
                                              "the network" for k, a, b in wrong[:3]) if wrong else ""]
    return (f"{path} does not match any known MobileNetV3 (tried layouts {', '.join(layouts)} x "
            f"archs {', '.join(archs)}); closest is layout={lay} arch={ar} width_mult={wm:g} "
            f"num_classes={nc}: " + ", ".join(p for p in parts if p) +
            ". Pass --arch/--layout/--width-mult/--num-classes (load_checkpoint(arch=..., "
            "layout=..., width_mult=..., num_classes=...)) to match how it was trained, or re-save "
            "it with one of these layouts' keys")


def _fill_batch_counters(state: dict, module: nn.Module) -> dict:
    """Old checkpoints may lack BatchNorm's ``num_batches_tracked`` (unused at inference): add them."""
    own = module.state_dict()
    extra = {k: torch.zeros_like(own[k]) for k in own
             if k.endswith("num_batches_tracked") and k not in state}
    return {**state, **extra} if extra else state


def _keys(keys, n: int = 3) -> str:
    """The first ``n`` keys of a checkpoint for a message, each cut to a bounded prefix (a key
    is user content: a 50 MB key must not make a 50 MB message; issue 19)."""
    return ", ".join(quote(k) if not isinstance(k, str) or len(k) > QUOTE_CHARS else k
                     for k in list(keys)[:n])
