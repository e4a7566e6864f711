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
shapes (``mnv3.models.matching``); loading is strict. A mismatch names the closest known
network, the first missing and unexpected keys and the shape mismatches, and says which
arguments to pass.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mnv3.data.files import clip, read_bytes, shown
from mnv3.errors import CheckpointError
from mnv3.meta import PreprocessCfg
from mnv3.models.matching import fill_batch_counters, match_network, state_dict_from
from mnv3.models.registry import DEFAULT_PRESET, build_module, count_params, describe, preprocess_preset

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
    # Read once, whole, with the read deadline (not a FIFO, device or folder; a stalled network
    # mount is an error, not a hang: issue 19); everything below works on these bytes.
    data = read_bytes(path, "checkpoint", CheckpointError)
    if isinstance(preprocess, str):
        preprocess = preprocess_preset(preprocess)
    preprocess = preprocess or preprocess_preset(DEFAULT_PRESET)
    digest = hashlib.sha256(data).hexdigest()
    if is_torchscript(data):
        module = _load_torchscript(data, path)
        return LoadedModel(module, TORCHSCRIPT, TORCHSCRIPT, None, _probe_classes(module, path),
                           preprocess, str(path), digest)
    state = state_dict_from(read_pickle(data, path), path)
    found = match_network(state, path, arch, layout, width_mult, num_classes)
    lay, ar, wm, nc = found
    module = build_module(ar, lay, wm, nc)
    module.load_state_dict(fill_batch_counters(state, module), strict=True)
    describe(module.eval(), ar, lay, wm, nc, preprocess)
    return LoadedModel(module, ar, lay, wm, nc, preprocess, str(path), digest)


# ------------------------------------------------------------------------------------ reading
def is_torchscript(data: bytes) -> bool:
    """TorchScript archives are zips with a ``code/`` folder; state-dict zips have only ``data``."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return False
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())


def _load_torchscript(data: bytes, path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # still supported in torch 2.13
            return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
    # Broad on purpose: only torch's parser runs here, on a file from anywhere; on damaged
    # archives it raised RuntimeError, torch.jit.Error, UnicodeDecodeError and IndexError.
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path} looks like TorchScript but torch.jit.load failed: "
                              f"{clip(str(e).splitlines()[0])}") from None


def _probe_classes(module: nn.Module, path: Path) -> int:
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, 3, 224, 224))
    except (RuntimeError, torch.jit.Error) as e:  # torch.jit.Error: a `raise` in the script
        raise CheckpointError(f"TorchScript model {path} does not run on a 1x3x224x224 float "
                              f"image: {clip(str(e).splitlines()[0])}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise CheckpointError(f"TorchScript model {path} must return [batch, classes] logits")
    return int(out.shape[1])


def read_pickle(data: bytes, path: Path):
    """``torch.load`` of a checkpoint's bytes (``path`` names it in errors) with
    ``weights_only=True``: tensors and plain containers only, never code."""
    try:
        with warnings.catch_warnings():
            # torch warns that a pickle of protocol > 2 may not load: if it loads, that is
            # noise; if not, our error names the protocol. Either way not for the user's stderr
            warnings.filterwarnings("ignore", r"Detected pickle protocol", UserWarning)
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's first line advises weights_only=False; the GLOBAL line names the object refused
        first = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln), None)
        if first is None:  # bad opcodes: garbage or another format (ONNX, text), not objects
            raise CheckpointError(_unreadable(data, path, e)) from None
        raise CheckpointError(
            f"refused to load {path}: it pickles objects other than tensors, and mnv3 loads "
            f"checkpoints with weights_only=True so that a file can never run code ({clip(first)}). "
            "If you trust the file, re-save only the weights: "
            "torch.save(model.state_dict(), 'weights.pth')") from None
    # Broad on purpose: only torch's unpickler runs here, and a damaged file fails anywhere in
    # it (struct.error, KeyError, EOFError ...); no mnv3 code is inside to hide a bug of ours.
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(_unreadable(data, path, e)) from None


ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"  # the PROTO opcode opens every pickle of protocol 2 or later
WHAT_TO_PASS = ("pass a state dict saved with torch.save (a .pth, .pth.tar or .pt file) or a "
                "TorchScript file saved with torch.jit.save")


def _unreadable(data: bytes, path: Path, error: Exception) -> str:
    """Why torch.load failed, told from the file's first bytes rather than torch's advice."""
    head = data[:16]
    if not head:
        return f"{path} is not a PyTorch checkpoint: the file is empty (0 bytes); {WHAT_TO_PASS}"
    if not head.startswith((ZIP_MAGIC, PICKLE_PROTO)):  # a text file, an ONNX model, ...
        if _is_onnx(data):
            return (f"{path} is an ONNX model, not a PyTorch checkpoint; it needs no export: "
                    f"build it with 'mnv3 build --onnx {path} ...'")
        return (f"{path} is not a PyTorch checkpoint: it is neither a torch zip archive nor a "
                f"pickle written by torch.save (it starts with {head!r}); {WHAT_TO_PASS}")
    protocol = _pickle_protocol(data, head)
    if protocol and protocol > 2 and "Unsupported operand" in str(error):
        kind = "a torch zip archive pickled with" if head.startswith(ZIP_MAGIC) else "a pickle of"
        return (f"{path} is {kind} protocol {protocol}, which torch.load(weights_only=True) "
                "cannot read; re-save the weights with torch.save's default protocol (2): "
                "torch.save(model.state_dict(), 'weights.pth')")
    return (f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: "
            f"{clip(_torch_reason(error))}); expected a file written by torch.save")


def is_onnx_file(path: Path) -> bool:
    """True when ``path`` parses as an ONNX model with a graph (weights are not loaded)."""
    import onnx

    from mnv3.engine_errors import onnx_errors

    try:
        model = onnx.load(str(path), load_external_data=False)
    except onnx_errors():  # DecodeError on non-ONNX bytes
        return False
    return len(model.graph.node) > 0


def _is_onnx(data: bytes) -> bool:
    """``is_onnx_file`` for a file already read."""
    import onnx

    from mnv3.engine_errors import onnx_errors

    try:
        model = onnx.load_model_from_string(data)
    except onnx_errors():
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


def _pickle_protocol(data: bytes, head: bytes) -> int | None:
    """The pickle protocol of a raw pickle, or of the ``data.pkl`` inside a torch zip archive."""
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return None
                with z.open(name) as f:
                    head = f.read(2)
        except (zipfile.BadZipFile, OSError):  # truncated: no central directory
            return None
    return head[1] if head.startswith(PICKLE_PROTO) and len(head) > 1 else None


