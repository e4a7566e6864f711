"""MobileNetV3 Small and Large in the two state-dict layouts mnv3 loads, written from the papers' tables.

Two *layouts* of the same published architecture ("Searching for MobileNetV3", Howard et al. 2019)
exist in the wild, and a checkpoint only loads strictly into the one it was trained with:

``seed``
    kuan-wang/pytorch-mobilenet-v3 (final commit), the network of ``mobilenetv3_small_67.4.pth.tar``.
    Every block has an expansion 1x1 conv (even when exp == in); the SE module sits *between* the
    depthwise BN and its activation, on the expanded channels, with bias-free Linear layers
    (``features.N.conv.5.fc.0.weight``) and squeeze = exp // 4; widths round *up* to a multiple of 8;
    the stem is always 16 channels and the 1280-wide head conv only widens for width_mult > 1.
    Head: 1x1 conv-BN-hardswish, global pool, biased 1x1 conv to 1280, hardswish,
    ``x.mean(3).mean(2)``, ``classifier = [Dropout(0.8), Linear]``. BatchNorm eps 1e-5.
``torchvision``
    torchvision's ``mobilenet_v3_small`` / ``mobilenet_v3_large``: keys ``features.N.block.M.*``,
    no expansion conv when exp == in, SE *after* the depthwise activation with biased 1x1 convs
    ``fc1``/``fc2`` and squeeze = make_divisible(exp // 4, 8), widths round to the *nearest*
    multiple of 8 (never below 90 %), head ``classifier = [Linear, Hardswish, Dropout, Linear]``,
    BatchNorm eps 0.001 - so torchvision's IMAGENET1K weights load strictly.

The architecture tables below are literal, one row per block, in the paper's column order.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# One row per bottleneck block: kernel, expansion channels, output channels, SE, activation, stride.
# The same paper tables serve both layouts; they differ only in how a block is wired and rounded.
LARGE = (
    # k, exp,  out, se,    act,  s
    (3, 16, 16, False, "RE", 1),     # 112x112 (the stem already halved 224)
    (3, 64, 24, False, "RE", 2),     # -> 56x56
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),      # -> 28x28
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),    # -> 14x14
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),    # -> 7x7
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
)
SMALL = (
    # k, exp,  out, se,    act,  s
    (3, 16, 16, True, "RE", 2),      # -> 56x56 (the stem already halved 224 to 112)
    (3, 72, 24, False, "RE", 2),     # -> 28x28
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),      # -> 14x14
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),     # -> 7x7
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
)
TABLES = {"mobilenetv3-large": LARGE, "mobilenetv3-small": SMALL}
STEM = 16  # stem output channels (the paper's first row)
# Width of the head's last conv (seed) / first classifier Linear (torchvision), before width_mult.
HEAD_WIDTH = {
    "seed": {"mobilenetv3-large": 1280, "mobilenetv3-small": 1280},
    "torchvision": {"mobilenetv3-large": 1280, "mobilenetv3-small": 1024},
}


def round_up8(x: float) -> int:
    """The seed's ``make_divisible``: round *up* to a multiple of 8."""
    return int(math.ceil(x / 8.0) * 8)


def round_near8(v: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: nearest multiple of 8, but never below 90 % of ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _act(kind: str) -> nn.Module:
    # nn.Hardswish / nn.Hardsigmoid compute exactly x*relu6(x+3)/6 and relu6(x+3)/6, and export to
    # single ONNX ops (HardSwish, HardSigmoid) that engines fuse; no parameters, so keys are unchanged.
    return nn.Hardswish() if kind == "HS" else nn.ReLU()


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int, eps: float, act: str | None):
    # (BN momentum only matters when training, so the originals' momenta are not reproduced.)
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=eps)]
    if act:
        layers.append(_act(act))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------------- seed layout
class SeedSE(nn.Module):
    """Squeeze-excitation of the seed: pooled vector -> Linear -> ReLU -> Linear -> hard sigmoid."""

    def __init__(self, channels: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channels, channels // 4, bias=False), nn.ReLU(),
                                nn.Linear(channels // 4, channels, bias=False), nn.Hardsigmoid())

    def forward(self, x):
        # flatten/None-index instead of the original .view(b, c): same numbers, no batch size baked in.
        y = self.fc(self.avg_pool(x).flatten(1))
        return x * y[:, :, None, None]


class SeedBlock(nn.Module):
    """pw 1x1 -> BN -> act -> dw kxk -> BN -> SE|Identity -> act -> pw-linear 1x1 -> BN (+ residual)."""

    def __init__(self, cin, cout, k, stride, exp, se, act):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, exp, 1, 1, 0, bias=False), nn.BatchNorm2d(exp), _act(act),
            nn.Conv2d(exp, exp, k, stride, (k - 1) // 2, groups=exp, bias=False), nn.BatchNorm2d(exp),
            SeedSE(exp) if se else nn.Identity(), _act(act),
            nn.Conv2d(exp, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class SeedMobileNetV3(nn.Module):
    """kuan-wang/pytorch-mobilenet-v3's MobileNetV3 with the same keys and the same numbers."""

    def __init__(self, arch: str, width_mult: float = 1.0, num_classes: int = 1000):
        super().__init__()
        table = TABLES[arch]
        head = HEAD_WIDTH["seed"][arch]
        last_channel = round_up8(head * width_mult) if width_mult > 1.0 else head
        layers: list[nn.Module] = [_conv_bn(3, STEM, 3, 2, 1, 1e-5, "HS")]  # 224 -> 112
        cin = STEM
        for k, exp, c, se, act, s in table:
            cout = round_up8(c * width_mult)
            layers.append(SeedBlock(cin, cout, k, s, round_up8(exp * width_mult), se, act))
            cin = cout
        last_conv = round_up8(table[-1][1] * width_mult)  # 960 (large) / 576 (small)
        layers += [_conv_bn(cin, last_conv, 1, 1, 1, 1e-5, "HS"), nn.AdaptiveAvgPool2d(1),
                   nn.Conv2d(last_conv, last_channel, 1, 1, 0), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(p=0.8), nn.Linear(last_channel, num_classes))

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.mean(3).mean(2))


# ---------------------------------------------------------------------------- torchvision layout
class TorchvisionSE(nn.Module):
    """torchvision.ops.SqueezeExcitation: pool -> 1x1 conv -> ReLU -> 1x1 conv -> hardsigmoid."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class TorchvisionBlock(nn.Module):
    """[expand 1x1 if exp != in] -> depthwise -> [SE] -> project 1x1 (no activation) (+ residual)."""

    def __init__(self, cin, cout, k, stride, exp, se, act):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(_conv_bn(cin, exp, 1, 1, 1, 1e-3, act))
        layers.append(_conv_bn(exp, exp, k, stride, exp, 1e-3, act))
        if se:
            layers.append(TorchvisionSE(exp, round_near8(exp // 4)))
        layers.append(_conv_bn(exp, cout, 1, 1, 1, 1e-3, None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return y + x if self.use_res_connect else y


class TorchvisionMobileNetV3(nn.Module):
    """torchvision's MobileNetV3 (same keys, eps 0.001), so its IMAGENET1K weights load strictly."""

    def __init__(self, arch: str, width_mult: float = 1.0, num_classes: int = 1000):
        super().__init__()
        table = TABLES[arch]
        cin = round_near8(STEM * width_mult)
        layers: list[nn.Module] = [_conv_bn(3, cin, 3, 2, 1, 1e-3, "HS")]  # 224 -> 112
        for k, exp, c, se, act, s in table:
            cout = round_near8(c * width_mult)
            layers.append(TorchvisionBlock(cin, cout, k, s, round_near8(exp * width_mult), se, act))
            cin = cout
        last_conv = 6 * cin
        last_channel = round_near8(HEAD_WIDTH["torchvision"][arch] * width_mult)
        layers.append(_conv_bn(cin, last_conv, 1, 1, 1, 1e-3, "HS"))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last_conv, last_channel), nn.Hardswish(),
                                        nn.Dropout(p=0.2), nn.Linear(last_channel, num_classes))

    def forward(self, x):
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


LAYOUTS = {"seed": SeedMobileNetV3, "torchvision": TorchvisionMobileNetV3}


def init_weights(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """The originals' initialisation (both repos use the same scheme): He-normal convs, unit BN,
    N(0, 0.01) Linear, zero biases. A generator makes it deterministic without touching the global RNG."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.weight.shape[0] * m.weight[0, 0].numel()  # kaiming_normal_(mode="fan_out")
            with torch.no_grad():
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            with torch.no_grad():
                m.weight.normal_(0.0, 0.01, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
