"""The networks: parameter counts of the originals, their key names, and their block arithmetic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mnv3.errors import UsageError
from mnv3.meta import PreprocessCfg
from mnv3.models import PREPROCESS_PRESETS, count_params, create_model, list_layouts, list_models
from mnv3.models.mobilenetv3 import round_near8, round_up8

# Issue 2: the originals' counts at 1000 classes, width 1.0.
PARAMS = {
    ("seed", "mobilenetv3-small"): 2_938_368,
    ("seed", "mobilenetv3-large"): 5_476_416,
    ("torchvision", "mobilenetv3-small"): 2_542_856,
    ("torchvision", "mobilenetv3-large"): 5_483_032,
}


def test_registry_lists_both_archs_and_layouts():
    assert list_models() == ["mobilenetv3-large", "mobilenetv3-small"]
    assert list_layouts() == ["seed", "torchvision"]


@pytest.mark.parametrize(("layout", "arch"), sorted(PARAMS))
def test_parameter_counts_match_the_originals(layout, arch):
    model = create_model(arch, layout)
    assert count_params(model) == PARAMS[layout, arch]
    assert not model.training
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_seed_keys_and_batchnorm_eps():
    sd = create_model("mobilenetv3-small", "seed").state_dict()
    # SE between the depthwise BN (conv.4) and its activation (conv.6), bias-free Linear layers.
    assert sd["features.1.conv.5.fc.0.weight"].shape == (4, 16)
    assert "features.1.conv.5.fc.0.bias" not in sd
    assert "features.2.conv.0.weight" in sd and "features.2.conv.5.fc.0.weight" not in sd
    # Every block has the expansion conv, even block 1 where exp == in == 16.
    assert sd["features.1.conv.0.weight"].shape == (16, 16, 1, 1)
    assert sd["features.14.weight"].shape == (1280, 576, 1, 1) and "features.14.bias" in sd
    assert sd["classifier.1.weight"].shape == (1000, 1280)
    bns = [m for m in create_model("mobilenetv3-large", "seed").modules()
           if isinstance(m, torch.nn.BatchNorm2d)]
    assert {m.eps for m in bns} == {1e-5}


def test_torchvision_keys_and_batchnorm_eps():
    model = create_model("mobilenetv3-small", "torchvision")
    sd = model.state_dict()
    # No expansion conv when exp == in; SE convs fc1/fc2 with squeeze made divisible by 8.
    assert sd["features.1.block.0.0.weight"].shape == (16, 1, 3, 3)
    assert sd["features.1.block.1.fc1.weight"].shape == (8, 16, 1, 1)
    assert sd["features.5.block.2.fc1.weight"].shape == (64, 240, 1, 1)  # 240 // 4 = 60 -> 64
    assert sd["features.12.0.weight"].shape == (576, 96, 1, 1)
    assert sd["classifier.0.weight"].shape == (1024, 576)
    assert sd["classifier.3.weight"].shape == (1000, 1024)
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}


def test_channel_rounding_rules():
    assert [round_up8(x) for x in (16 * 0.35, 24 * 0.35, 960 * 0.35)] == [8, 16, 336]
    # torchvision: nearest multiple of 8, bumped up when that loses more than 10 %.
    assert [round_near8(x) for x in (16 * 0.35, 24 * 0.35, 60, 1280 * 0.75)] == [8, 8, 64, 960]
    assert round_near8(20) == 24  # int(24)//8*8 = 24 and not < 18


def test_seeded_models_are_deterministic_and_trained_looking():
    a = create_model("mobilenetv3-small", "torchvision", width_mult=0.35, num_classes=7, seed=3)
    b = create_model("mobilenetv3-small", "torchvision", width_mult=0.35, num_classes=7, seed=3)
    c = create_model("mobilenetv3-small", "torchvision", width_mult=0.35, num_classes=7, seed=4)
    x = torch.randn(2, 3, 96, 96)
    assert torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))
    assert a(x).shape == (2, 7)
    bn = a.features[0][1]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


def test_preprocessing_travels_as_data():
    model = create_model("mobilenetv3-large", "torchvision", width_mult=0.35)
    assert model.preprocess == PreprocessCfg(resize=256, crop=224, interpolation="bilinear")
    assert (model.arch, model.layout, model.width_mult, model.num_classes) == (
        "mobilenetv3-large", "torchvision", 0.35, 1000)
    assert PREPROCESS_PRESETS["torchvision-large-v2"].resize == 232


@pytest.mark.parametrize("kwargs", [
    {"arch": "mobilenetv2"}, {"layout": "timm"}, {"width_mult": 0}, {"num_classes": 0}])
def test_bad_arguments_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        create_model(**({"arch": "mobilenetv3-small", "layout": "seed"} | kwargs))


def test_arch_aliases():
    assert create_model("small", "seed", width_mult=0.35).arch == "mobilenetv3-small"
    assert create_model("mobilenet_v3_large", "torchvision", width_mult=0.35).arch == "mobilenetv3-large"


# ---- behaviour: one block of each layout against a functional transcription of the original
def _hswish(x):
    return x * F.relu6(x + 3.0) / 6.0


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def test_seed_block_matches_the_original_forward():
    model = create_model("mobilenetv3-small", "seed", width_mult=1.0, seed=0)
    block = model.features[5]  # k5, exp 240, SE, hardswish, residual
    c = block.conv
    x = torch.randn(2, 40, 14, 14)
    y = _hswish(_bn(F.conv2d(x, c[0].weight), c[1]))
    y = _bn(F.conv2d(y, c[3].weight, stride=1, padding=2, groups=240), c[4])
    s = F.linear(F.relu(F.linear(y.mean((2, 3)), c[5].fc[0].weight)), c[5].fc[2].weight)
    y = _hswish(y * (F.relu6(s + 3.0) / 6.0).view(2, 240, 1, 1))  # SE, then the activation
    ref = x + _bn(F.conv2d(y, c[7].weight), c[8])
    with torch.no_grad():
        assert torch.allclose(block(x), ref, atol=1e-5, rtol=1e-5)


def test_torchvision_block_matches_the_original_forward():
    model = create_model("mobilenetv3-small", "torchvision", width_mult=1.0, seed=0)
    blk = model.features[5].block  # k5, exp 240, SE (squeeze 64), hardswish, residual
    x = torch.randn(2, 40, 14, 14)
    y = _hswish(_bn(F.conv2d(x, blk[0][0].weight), blk[0][1]))
    y = _hswish(_bn(F.conv2d(y, blk[1][0].weight, padding=2, groups=240), blk[1][1]))
    se = blk[2]
    s = F.conv2d(F.relu(F.conv2d(y.mean((2, 3), keepdim=True), se.fc1.weight, se.fc1.bias)),
                 se.fc2.weight, se.fc2.bias)
    y = y * F.hardsigmoid(s)  # activation first, then SE
    ref = x + _bn(F.conv2d(y, blk[3][0].weight), blk[3][1])
    with torch.no_grad():
        assert torch.allclose(model.features[5](x), ref, atol=1e-5, rtol=1e-5)
