"""Which known network a state dict is: unwrap it, then match key names and shapes.

Layout and arch come from the key names, width multiplier and class count from the shapes,
searched over the registry's layouts x archs and a grid of widths. A mismatch names the closest
known network, the first missing and unexpected keys and the shape mismatches, and says which
arguments to pass. (``mnv3.models.checkpoints`` reads the file; this module never touches it.)
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from mnv3.data.files import QUOTE_CHARS, quote
from mnv3.errors import CheckpointError
from mnv3.models.registry import ARCHS, LAYOUT_NAMES, build_module, canonical_arch, check_layout

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
CLASSIFIER_KEY = {"seed": "classifier.1.weight", "torchvision": "classifier.3.weight"}
# Widths tried when none is given: multiples of 0.05 and of 0.125 up to 3.0.
WIDTH_GRID = tuple(sorted({round(k * 0.05, 4) for k in range(1, 61)}
                          | {round(k * 0.125, 4) for k in range(1, 25)}))


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


def fill_batch_counters(state: dict, module: nn.Module) -> dict:
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
