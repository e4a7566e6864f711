"""Write checkpoints in the real key layouts, the way training scripts save them (for tests).

    from ckpt_factory import write_checkpoint
    model = write_checkpoint(tmp_path / "m.pth", "mobilenetv3-small", "seed", wrap="module",
                             width_mult=0.35, num_classes=10)

``wrap``: ``raw`` (a bare state dict, like the seed's mobilenetv3_small_67.4.pth.tar), ``module``
(DataParallel's ``module.`` prefix), ``state_dict`` (``{'epoch', 'state_dict', 'best_prec1'}``,
the ImageNet example's format), ``model`` (``{'model': ..., 'epoch'}``, torchvision's references).
Weights are deterministic random with trained-looking BatchNorm statistics (``seed``).
Returns the eval-mode model whose weights were written, to compare outputs against.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mnv3.models import create_model

WRAPS = ("raw", "module", "state_dict", "model")


def write_checkpoint(path, arch="mobilenetv3-small", layout="seed", wrap="raw", width_mult=0.35,
                     num_classes=1000, seed=0):
    model = create_model(arch, layout, width_mult=width_mult, num_classes=num_classes, seed=seed)
    state = model.state_dict()
    if wrap == "raw":
        obj = state
    elif wrap == "module":
        obj = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "state_dict":
        obj = {"epoch": 150, "arch": arch, "state_dict": state, "best_prec1": 67.4}
    elif wrap == "model":
        obj = {"model": state, "epoch": 600, "args": {"lr": 0.064}}
    else:
        raise ValueError(f"wrap must be one of {WRAPS}, got {wrap!r}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return model
