"""Swin-UNet baseline and the Swin pieces: window partition, relative position index, shifted-window mask
(hand-built case and a slow all-pairs reference), constant-image shift invariance, parameter count from the
per-block component counts, shapes, resolution errors, upstream parameter names."""

import itertools

import pytest
import torch
import torch.nn as nn

from mambaseg.models import create_model, model_info
from mambaseg.models.blocks.swin_blocks import (MASK_VALUE, PatchExpand, SwinTransformerBlock, WindowAttention,
                                         relative_position_index, shifted_window_mask, window_partition,
                                         window_reverse)
from mambaseg.models.networks.swin_unet import SwinUNet, resolve_window_size


# ----------------------------------------------------------------------------------------------- windows
def test_window_partition_and_reverse():
    x = torch.arange(2 * 4 * 6 * 3, dtype=torch.float32).view(2, 4, 6, 3)
    w = window_partition(x, 2)
    assert w.shape == (2 * 2 * 3, 2, 2, 3)
    # window k of image b covers rows 2*(k//3).., cols 2*(k%3)..
    for b, k in itertools.product(range(2), range(6)):
        r, c = 2 * (k // 3), 2 * (k % 3)
        assert torch.equal(w[b * 6 + k], x[b, r:r + 2, c:c + 2])
    assert torch.equal(window_reverse(w, 2, 4, 6), x)


def test_relative_position_index_hand_built_window_2():
    # tokens (0,0), (0,1), (1,0), (1,1); index = (dh + 1) * 3 + (dw + 1)
    expected = torch.tensor([[4, 3, 1, 0],
                             [5, 4, 2, 1],
                             [7, 6, 4, 3],
                             [8, 7, 5, 4]])
    assert torch.equal(relative_position_index(2), expected)
    idx7 = relative_position_index(7)
    assert idx7.shape == (49, 49) and idx7.min() == 0 and idx7.max() == 13 * 13 - 1
    assert (idx7.diagonal() == 6 * 13 + 6).all()


def test_shift_mask_hand_built_case():
    # 4x4 grid, window 2, shift 1. Rolled row/col bands: [0,2) -> 0, [2,3) -> 1, [3,4) -> 2; region = 3*row + col.
    # window (0,0): regions 0 0 / 0 0        -> all pairs allowed
    # window (0,1): regions 1 2 / 1 2        -> tokens {0,2} and {1,3}
    # window (1,0): regions 3 3 / 6 6        -> tokens {0,1} and {2,3}
    # window (1,1): regions 4 5 / 7 8        -> each token only itself
    A = torch.ones(4, 4, dtype=torch.bool)
    B = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    C = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    D = torch.eye(4, dtype=torch.bool)
    mask = shifted_window_mask(4, 4, 2, 1)
    assert mask.shape == (4, 4, 4)
    assert torch.equal(mask == 0, torch.stack([A, B, C, D]))
    assert set(mask.unique().tolist()) == {0.0, MASK_VALUE}
    assert shifted_window_mask(4, 4, 2, 0) is None


def test_mask_blocks_attention_across_regions():
    # Window (1,1) of the hand-built case: every token is alone in its region, so with the mask each output
    # token depends on its own input only; without the mask it depends on the others.
    torch.manual_seed(0)
    attn = WindowAttention(dim=4, window_size=2, num_heads=2)
    mask = shifted_window_mask(4, 4, 2, 1)
    x = torch.randn(4, 4, 4)                  # batch 1 x 4 windows, 4 tokens, 4 channels
    x2 = x.clone()
    x2[3, 1:] += 5 * torch.randn(3, 4)         # perturb tokens 1..3 of window (1,1)
    with torch.no_grad():
        y, y2 = attn(x, mask), attn(x2, mask)
        u, u2 = attn(x), attn(x2)
    torch.testing.assert_close(y2[3, 0], y[3, 0])
    torch.testing.assert_close(y2[:3], y[:3])
    assert not torch.allclose(u2[3, 0], u[3, 0])


def reference_block(block, x, H, W):
    """Slow all-pairs Swin block written from the definition: token p attends to q iff both fall in the same
    window after the cyclic shift and they are genuine neighbours (no wrap-around: their row and column
    differences are the same before and after the shift); bias from the in-window offset."""
    ws, s, heads = block.window_size, block.shift_size, block.num_heads
    B, L, C = x.shape
    hd = C // heads
    coords = [(i, j) for i in range(H) for j in range(W)]
    rolled = [((i - s) % H, (j - s) % W) for i, j in coords]
    table = block.attn.relative_position_bias_table
    bias = torch.full((heads, L, L), float("-inf"))
    for p, q in itertools.product(range(L), range(L)):
        (rp, cp), (rq, cq) = rolled[p], rolled[q]
        same_window = (rp // ws, cp // ws) == (rq // ws, cq // ws)
        genuine = (rp - rq == coords[p][0] - coords[q][0]) and (cp - cq == coords[p][1] - coords[q][1])
        if same_window and genuine:
            dh, dw = rp % ws - rq % ws, cp % ws - cq % ws
            bias[:, p, q] = table[(dh + ws - 1) * (2 * ws - 1) + (dw + ws - 1)]
    h = block.norm1(x)
    q, k, v = block.attn.qkv(h).view(B, L, 3, heads, hd).permute(2, 0, 3, 1, 4)
    att = torch.softmax(q @ k.transpose(-1, -2) * hd ** -0.5 + bias, -1)
    x = x + block.attn.proj((att @ v).transpose(1, 2).reshape(B, L, C))
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("shift", [0, 2])
def test_block_matches_all_pairs_reference(shift):
    torch.manual_seed(0)
    blk = SwinTransformerBlock(8, (8, 8), num_heads=2, window_size=4, shift_size=shift).eval()
    with torch.no_grad():
        blk.attn.relative_position_bias_table.normal_(0, 1.0)
        x = torch.randn(2, 64, 8)
        torch.testing.assert_close(blk(x), reference_block(blk, x, 8, 8), atol=1e-5, rtol=1e-5)


def test_shift_of_constant_image_changes_nothing():
    torch.manual_seed(0)
    plain = SwinTransformerBlock(8, (8, 8), num_heads=2, window_size=4, shift_size=0).eval()
    shifted = SwinTransformerBlock(8, (8, 8), num_heads=2, window_size=4, shift_size=2).eval()
    with torch.no_grad():
        plain.attn.relative_position_bias_table.normal_(0, 1.0)
    shifted.load_state_dict(plain.state_dict(), strict=False)   # attn_mask differs (None vs tensor)
    x = torch.randn(1, 1, 8).expand(2, 64, 8).contiguous()
    with torch.no_grad():
        y0, y1 = plain(x), shifted(x)
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(y1, y1[:, :1].expand_as(y1))     # still constant over the image
    # on a non-constant image the shift does matter
    z = torch.randn(2, 64, 8)
    with torch.no_grad():
        assert not torch.allclose(plain(z), shifted(z))


def test_block_drops_shift_when_grid_fits_one_window():
    blk = SwinTransformerBlock(8, (7, 7), num_heads=2, window_size=7, shift_size=3)
    assert blk.shift_size == 0 and blk.attn_mask is None
    blk = SwinTransformerBlock(8, (4, 4), num_heads=2, window_size=8, shift_size=4)
    assert blk.window_size == 4 and blk.attn.relative_position_bias_table.shape == (49, 2)


def test_patch_expand_places_channel_chunks():
    # token (h, w) with channels ordered (p1, p2, c) goes to pixel (2h + p1, 2w + p2)
    pe = PatchExpand((2, 3), dim=4)
    pe.expand = nn.Identity()
    pe.norm = nn.Identity()
    x = torch.arange(6 * 8, dtype=torch.float32).view(1, 6, 8)
    y = pe(x).view(1, 4, 6, 2)
    for h, w, p1, p2 in itertools.product(range(2), range(3), range(2), range(2)):
        chunk = x[0, h * 3 + w].view(2, 2, 2)[p1, p2]
        assert torch.equal(y[0, 2 * h + p1, 2 * w + p2], chunk)


# ----------------------------------------------------------------------------------------- parameter count
def swin_block(d, heads, w):
    return (2 * d                            # norm1
            + 3 * d * d + 3 * d              # qkv
            + d * d + d                      # proj
            + (2 * w - 1) ** 2 * heads       # relative position bias table
            + 2 * d                          # norm2
            + d * 4 * d + 4 * d + 4 * d * d + d)   # mlp fc1, fc2


def swin_unet_params(in_ch, n_cls, img=224, C=96, depths=(2, 2, 2, 2), heads=(3, 6, 12, 24), window=7, patch=4):
    grid = [img // patch // 2 ** i for i in range(4)]
    win = [min(window, g) for g in grid]             # a grid no larger than the window is one window
    dims = [C * 2 ** i for i in range(4)]
    n = patch * patch * in_ch * C + C + 2 * C         # patch_embed conv + LN
    for i in range(4):                               # encoder
        n += depths[i] * swin_block(dims[i], heads[i], win[i])
        if i < 3:
            n += 2 * 4 * dims[i] + 4 * dims[i] * 2 * dims[i]       # PatchMerging: LN(4d), Linear(4d->2d)
    n += 2 * dims[3]                                 # norm
    n += dims[3] * 2 * dims[3] + 2 * dims[2]         # layers_up.0: PatchExpand(8C): Linear(8C->16C), LN(4C)
    for s in (2, 1, 0):                              # decoder stages
        d = dims[s]
        n += 2 * d * d + d                           # concat_back_dim Linear(2d->d)
        n += depths[s] * swin_block(d, heads[s], win[s])
        if s > 0:
            n += d * 2 * d + 2 * (d // 2)            # PatchExpand: Linear(d->2d), LN(d/2)
    n += 2 * C                                       # norm_up
    n += C * 16 * C + 2 * C                          # FinalPatchExpand_X4: Linear(C->16C), LN(C)
    return n + C * n_cls                             # output conv 1x1, no bias


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_count_default_224():
    with torch.device("meta"):                       # no storage, no init: counting only
        m = create_model("swin_unet")
    assert m.window_size == 7
    assert n_params(m) == swin_unet_params(3, 1)


def test_parameter_count_256_uses_window_8():
    with torch.device("meta"):
        m = create_model("swin_unet", img_size=256, in_channels=1, num_classes=4)
    assert m.window_size == 8
    assert n_params(m) == swin_unet_params(1, 4, img=256, window=8)


def test_parameter_count_small_config():
    m = SwinUNet(in_channels=1, num_classes=4, img_size=64, embed_dim=12, depths=(1, 2, 1, 2))
    assert n_params(m) == swin_unet_params(1, 4, img=64, C=12, depths=(1, 2, 1, 2), window=8)


def test_registered_as_baseline():
    info = model_info("swin_unet")
    assert info.family == "baseline" and info.default_size == 224 and "Cao" in info.paper


def test_upstream_parameter_names():
    keys = set(SwinUNet(img_size=64, embed_dim=12).state_dict())
    for k in ["patch_embed.proj.weight", "patch_embed.norm.weight",
              "layers.0.blocks.1.attn.relative_position_bias_table", "layers.0.blocks.1.attn.qkv.weight",
              "layers.0.blocks.0.mlp.fc1.weight", "layers.0.downsample.reduction.weight", "norm.weight",
              "layers_up.0.expand.weight", "layers_up.1.blocks.0.attn.proj.weight",
              "layers_up.1.upsample.expand.weight", "concat_back_dim.1.weight", "norm_up.weight",
              "up.expand.weight", "output.weight"]:
        assert k in keys, k
    assert "output.bias" not in keys and "layers.3.downsample.reduction.weight" not in keys


# ------------------------------------------------------------------------------------------- forward
def test_forward_224_small_width():
    torch.manual_seed(0)
    m = SwinUNet(in_channels=3, num_classes=2, img_size=224, embed_dim=12).eval()
    with torch.no_grad():
        y = m(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 2, 224, 224)
    assert (y < 0).any() or (y > 1).any()             # logits, not probabilities


def test_forward_256_small_width():
    m = SwinUNet(in_channels=1, num_classes=1, img_size=256, embed_dim=12, depths=(1, 1, 1, 1)).eval()
    assert m.window_size == 8
    with torch.no_grad():
        assert m(torch.randn(1, 1, 256, 256)).shape == (1, 1, 256, 256)


@pytest.mark.parametrize("in_ch", [1, 3])
@pytest.mark.parametrize("n_cls", [1, 4])
def test_output_shape(in_ch, n_cls):
    m = create_model("swin_unet", in_channels=in_ch, num_classes=n_cls, img_size=64, embed_dim=12,
                     depths=(1, 1, 1, 1))
    assert m(torch.randn(2, in_ch, 64, 64)).shape == (2, n_cls, 64, 64)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = SwinUNet(in_channels=1, num_classes=2, img_size=64, embed_dim=12, drop_path_rate=0.0)
    y = m(torch.randn(2, 1, 64, 64))
    (y * torch.randn_like(y)).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_eval_is_deterministic():
    m = SwinUNet(img_size=64, embed_dim=12, depths=(1, 1, 1, 1), drop_path_rate=0.5).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), m(x))


# -------------------------------------------------------------------------------------- size handling
def test_window_choice():
    assert resolve_window_size(224) == 7
    assert resolve_window_size(256) == 8
    assert resolve_window_size(448) == 7
    assert resolve_window_size(256, window_size=4) == 4
    with pytest.raises(ValueError, match="window_size 7 does not tile"):
        resolve_window_size(256, window_size=7)
    with pytest.raises(ValueError, match="224"):
        resolve_window_size(320)              # grids 80/40/20/10: neither 7 nor 8
    with pytest.raises(ValueError, match="multiple of 32"):
        resolve_window_size(100)


def test_input_size_must_match_img_size():
    m = SwinUNet(img_size=64, embed_dim=12, depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="img_size=32"):
        m(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="divisible by 32"):
        m(torch.randn(1, 3, 50, 50))
    with pytest.raises(ValueError, match="in_channels=1"):
        m(torch.randn(1, 1, 64, 64))


def test_bad_widths_give_clear_errors():
    with pytest.raises(ValueError, match="num_heads"):
        SwinUNet(img_size=64, embed_dim=10)
    with pytest.raises(ValueError, match="same length"):
        SwinUNet(img_size=64, depths=(2, 2, 2), num_heads=(3, 6, 12, 24))


def test_batch_of_one_on_a_non_square_grid():
    # Fault test: with B=1 and a window as tall as a stage's grid (2x4 tokens, window 2), the partitioned
    # windows were not viewable (RuntimeError: view size is not compatible ...).
    m = create_model("swin_unet", img_size=(64, 128), window_size=2, embed_dim=12, depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        one = m(torch.randn(1, 3, 64, 128))
    assert one.shape == (1, 1, 64, 128)
