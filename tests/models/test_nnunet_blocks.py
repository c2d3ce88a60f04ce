"""nnU-Net blocks (spec upstream_mamba1_models.md §2): upstream's duplicated keys, the ResNet-D skip variants and
their keys, the block's arithmetic, He init with nnU-Net's slope (std from the closed form), the canonical plans
and U-Mamba's block-count override."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.models.blocks.nnunet_blocks import (BasicBlockD, ConvDropoutNormReLU, StackedResidualBlocks,
                                           block_counts_umamba, init_last_norm_before_add_to_zero, init_weights_he,
                                           nnunet_plan_2d)


def test_conv_norm_nonlin_keys_appear_twice():
    keys = list(ConvDropoutNormReLU(3, 8, 3).state_dict())
    assert keys == ["conv.weight", "conv.bias", "norm.weight", "norm.bias", "all_modules.0.weight",
                    "all_modules.0.bias", "all_modules.1.weight", "all_modules.1.bias"]
    with_dropout = ConvDropoutNormReLU(3, 8, 3, dropout_p=0.1)
    assert "all_modules.2.weight" in with_dropout.state_dict()        # dropout shifts the norm to index 2
    assert sum(p.numel() for p in ConvDropoutNormReLU(3, 8, 3).parameters()) == 3 * 8 * 9 + 8 + 16


@pytest.mark.parametrize("cin,cout,stride,skip_keys", [
    (8, 8, 1, []),                                                           # identity: no module, no keys
    (8, 16, 2, ["skip.1.conv.weight", "skip.1.norm.weight", "skip.1.norm.bias"]),   # AvgPool + projection
    (8, 16, 1, ["skip.0.conv.weight", "skip.0.norm.weight", "skip.0.norm.bias"]),   # projection only
    (8, 8, 2, []),                                                           # AvgPool only
])
def test_basic_block_d_skip_variants(cin, cout, stride, skip_keys):
    torch.manual_seed(0)
    b = BasicBlockD(cin, cout, 3, stride)
    got = [k for k in b.state_dict() if k.startswith("skip.") and "all_modules" not in k]
    assert got == skip_keys
    assert "conv2.nonlin" not in dict(b.named_modules())                     # conv2: norm, no nonlinearity
    x = torch.randn(2, cin, 8, 8)
    with torch.no_grad():
        if stride == 1 and cin == cout:
            res = x
        else:
            res = F.avg_pool2d(x, stride) if stride > 1 else x
            if cin != cout:
                proj = b.skip[-1]
                res = proj.norm(proj.conv(res))
        c1 = b.conv1
        h = F.leaky_relu(c1.norm(c1.conv(x)), 0.01)
        h = b.conv2.norm(b.conv2.conv(h))
        torch.testing.assert_close(b(x), F.leaky_relu(h + res, 0.01))
    if skip_keys:
        assert b.skip[-1].conv.bias is None                                  # the 1x1 skip conv has no bias


def test_he_init_std_and_what_it_leaves_alone():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(128, 256, 3), nn.Linear(10, 10), nn.Conv1d(4, 4, 3), nn.InstanceNorm2d(4, affine=True))
    lin, c1 = m[1].weight.clone(), m[2].weight.clone()
    m.apply(init_weights_he)
    std = math.sqrt(2 / (1 + 0.01 ** 2)) / math.sqrt(128 * 9)
    assert abs(m[0].weight.std().item() / std - 1) < 0.01 and abs(m[0].weight.mean().item()) < 0.01 * std
    assert torch.equal(m[0].bias, torch.zeros(256))
    assert torch.equal(m[1].weight, lin) and torch.equal(m[2].weight, c1)     # Linear / Conv1d untouched


def test_last_norm_before_add_starts_at_zero():
    s = StackedResidualBlocks(2, 4, 8, 3, 2)
    s.apply(init_last_norm_before_add_to_zero)
    for b in s.blocks:
        assert not b.conv2.norm.weight.any() and not b.conv2.norm.bias.any()
        assert b.conv1.norm.weight.all()


def test_canonical_plans():
    p256, p512, p64 = nnunet_plan_2d(256), nnunet_plan_2d(512), nnunet_plan_2d(64)
    assert p256.features == [32, 64, 128, 256, 512, 512, 512] and p256.strides == [1] + [2] * 6
    assert p256.n_conv_encoder == [2] * 7 and p256.n_conv_decoder == [2] * 6 and p256.divisor == 64
    assert p512.features == [32, 64, 128, 256, 512, 512, 512, 512] and p512.divisor == 128
    assert p64.features == [32, 64, 128, 256, 512]
    assert block_counts_umamba([2] * 7, [2] * 6) == ([2, 2, 2, 2, 1, 1, 1], [2, 2, 2, 2, 1, 1])
    assert block_counts_umamba([2] * 8, [2] * 7) == ([2, 2, 2, 2, 1, 1, 1, 1], [2, 2, 2, 2, 1, 1, 1])
    with pytest.raises(ValueError, match="patch_size must be an integer"):
        nnunet_plan_2d(4)
