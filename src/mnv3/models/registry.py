"""Which networks mnv3 knows, how to build one, and the preprocessing each expects.

Networks are named by *arch* (``mobilenetv3-small``, ``mobilenetv3-large``) and *layout* (``seed``,
``torchvision``: whose state-dict keys the module reproduces; see ``mobilenetv3.py``).
Preprocessing is data (``PreprocessCfg``) attached to every model as ``model.preprocess`` so no
later stage hard-codes 224 or the ImageNet mean.
"""

from __future__ import annotations

import torch
from torch import nn

from mnv3.errors import UsageError
from mnv3.meta import PreprocessCfg
from mnv3.models.mobilenetv3 import LAYOUTS, TABLES, init_weights

ARCHS = tuple(sorted(TABLES))  # ("mobilenetv3-large", "mobilenetv3-small")
LAYOUT_NAMES = tuple(LAYOUTS)  # ("seed", "torchvision")

# Named preprocessing recipes. Every MobileNetV3 here was trained with the classic ImageNet
# recipe (resize 256, center crop 224, bilinear, ImageNet mean/std); torchvision's
# IMAGENET1K_V2 weights for Large were evaluated with resize 232 instead - a variant of the same
# network, so it is a preset you pick (e.g. load_checkpoint(..., preprocess="torchvision-large-v2")),
# not a different model.
PREPROCESS_PRESETS: dict[str, PreprocessCfg] = {
    "imagenet": PreprocessCfg(resize=256, crop=224, interpolation="bilinear"),
    "torchvision-large-v2": PreprocessCfg(resize=232, crop=224, interpolation="bilinear"),
}
DEFAULT_PRESET = "imagenet"

_ALIASES = {
    "small": "mobilenetv3-small", "mobilenet_v3_small": "mobilenetv3-small",
    "mobilenetv3_small": "mobilenetv3-small", "large": "mobilenetv3-large",
    "mobilenet_v3_large": "mobilenetv3-large", "mobilenetv3_large": "mobilenetv3-large",
}


def list_models() -> list[str]:
    """The architectures ``create_model`` builds (each in every layout of ``list_layouts()``)."""
    return list(ARCHS)


def list_layouts() -> list[str]:
    return list(LAYOUT_NAMES)


def canonical_arch(arch: str) -> str:
    """``small``, ``mobilenet_v3_small`` ... -> ``mobilenetv3-small``; UsageError when unknown."""
    name = _ALIASES.get(arch.strip().lower(), arch.strip().lower())
    if name not in TABLES:
        raise UsageError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return name


def check_layout(layout: str) -> str:
    name = layout.strip().lower()
    if name not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUT_NAMES)}")
    return name


def preprocess_preset(name: str = DEFAULT_PRESET) -> PreprocessCfg:
    try:
        return PREPROCESS_PRESETS[name]
    except KeyError:
        raise UsageError(
            f"unknown preprocessing preset {name!r}; choose one of {', '.join(PREPROCESS_PRESETS)}"
        ) from None


def build_module(arch: str, layout: str, width_mult: float, num_classes: int) -> nn.Module:
    """The bare network (parameters uninitialised where torch leaves them); no checks, no eval()."""
    return LAYOUTS[layout](arch, width_mult=width_mult, num_classes=num_classes)


def create_model(arch: str = "mobilenetv3-small", layout: str = "seed", width_mult: float = 1.0,
                 num_classes: int = 1000, seed: int | None = None) -> nn.Module:
    """A MobileNetV3 in eval mode with ``.preprocess``, ``.arch``, ``.layout``, ``.width_mult``,
    ``.num_classes`` attributes.

    ``seed=None`` initialises as the original repositories do (global RNG, identity BatchNorm).
    ``seed=int`` gives deterministic random weights *and* random BatchNorm statistics/affines, so a
    test model behaves like a trained one where it matters (BatchNorm folding is really exercised),
    without touching the global RNG.

    >>> m = create_model("mobilenetv3-small", "torchvision", width_mult=0.35, seed=0)
    >>> m(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
    """
    arch, layout = canonical_arch(arch), check_layout(layout)
    if not width_mult > 0:
        raise UsageError(f"width_mult must be > 0, got {width_mult}")
    if int(num_classes) < 1:
        raise UsageError(f"num_classes must be >= 1, got {num_classes}")
    model = build_module(arch, layout, float(width_mult), int(num_classes))
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    init_weights(model, gen)
    if gen is not None:
        randomize_batchnorm(model, gen)
    model = describe(model.eval(), arch, layout, float(width_mult), int(num_classes))
    # Never trained: export_onnx stamps this into the ONNX file and build into meta.json, so
    # every accuracy printed for it can say so (mnv3.provenance).
    model.untrained, model.random_seed = True, seed
    return model


def describe(model: nn.Module, arch: str, layout: str, width_mult: float | None,
             num_classes: int | None, preprocess: PreprocessCfg | None = None) -> nn.Module:
    """Attach what later stages need to know about a network (its preprocessing above all)."""
    model.preprocess = preprocess or preprocess_preset(DEFAULT_PRESET)
    model.arch, model.layout = arch, layout
    model.width_mult, model.num_classes = width_mult, num_classes
    return model


def randomize_batchnorm(model: nn.Module, gen: torch.Generator) -> None:
    """Trained-looking BatchNorm: scales near 1, small shifts, running stats away from (0, 1)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.num_batches_tracked.fill_(1000)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
