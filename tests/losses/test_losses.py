"""Losses: values equal direct formulas on small tensors; finite gradients on empty/full masks; clear errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from mambaseg.losses import (
    VMUNETV2_GT_WEIGHTS,
    BceDiceLoss,
    CeDiceLoss,
    DeepSupervisionLoss,
    build_loss,
    list_losses,
)


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_bce_dice_equals_direct_formula():
    logits = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]], [[[-0.3, 1.5], [0.1, -2.0]]]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]])
    got = BceDiceLoss()(logits, target)
    bce, dices = 0.0, []
    for b in range(2):
        ps = [_sig(v) for v in logits[b, 0].flatten().tolist()]
        ts = target[b].flatten().tolist()
        bce += sum(-(t * math.log(p) + (1 - t) * math.log(1 - p)) for p, t in zip(ps, ts))
        dices.append((2 * sum(p * t for p, t in zip(ps, ts)) + 1) / (sum(ps) + sum(ts) + 1))
    want = bce / 8 + (1 - sum(dices) / 2)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # weights and (B, 1, H, W) target
    got2 = BceDiceLoss(wb=0.3, wd=2.0)(logits, target.unsqueeze(1))
    assert got2.item() == pytest.approx(0.3 * bce / 8 + 2.0 * (1 - sum(dices) / 2), rel=1e-6)


def _ce_dice_direct(logits, target, c, w_ce, w_dice, smooth, class_w=None, ignore=None):
    b, _, h, w = logits.shape
    p = torch.softmax(logits.double(), 1)
    ce_num, ce_den = 0.0, 0.0
    inter = [0.0] * c
    zs = [0.0] * c
    ys = [0.0] * c
    for i in range(b):
        for y in range(h):
            for x in range(w):
                lab = int(target[i, y, x])
                if ignore is not None and lab == ignore:
                    continue
                wt = 1.0 if class_w is None else class_w[lab]
                ce_num += -wt * math.log(p[i, lab, y, x].item())
                ce_den += wt
                for k in range(c):
                    pk = p[i, k, y, x].item()
                    tk = 1.0 if k == lab else 0.0
                    inter[k] += pk * tk
                    zs[k] += pk * pk
                    ys[k] += tk * tk
    cw = [1.0] * c if class_w is None else class_w
    dice = sum(cw[k] * (1 - (2 * inter[k] + smooth) / (zs[k] + ys[k] + smooth)) for k in range(c)) / c
    return w_ce * ce_num / ce_den + w_dice * dice


def test_ce_dice_equals_transunet_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 3, 4)
    target = torch.randint(0, 3, (2, 3, 4))
    got = CeDiceLoss(3)(logits, target)
    assert got.item() == pytest.approx(_ce_dice_direct(logits, target, 3, 0.5, 0.5, 1e-5), rel=1e-5)
    got = CeDiceLoss(3, w_ce=1.0, w_dice=1.0, class_weights=[0.2, 1.0, 3.0])(logits, target)
    want = _ce_dice_direct(logits, target, 3, 1.0, 1.0, 1e-5, class_w=[0.2, 1.0, 3.0])
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_ce_dice_ignore_index_excludes_pixels_from_both_terms():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    target[0, 0, :] = 255
    got = CeDiceLoss(3, ignore_index=255)(logits, target)
    assert got.item() == pytest.approx(_ce_dice_direct(logits, target, 3, 0.5, 0.5, 1e-5, ignore=255), rel=1e-5)
    all_ignored = torch.full((1, 4, 4), 255)
    x = logits.clone().requires_grad_(True)
    val = CeDiceLoss(3, ignore_index=255)(x, all_ignored)
    val.backward()
    assert torch.isfinite(val) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_gradients_finite_for_empty_and_full_masks(fill):
    x = (torch.randn(2, 1, 8, 8) * 30).requires_grad_(True)  # saturated logits
    t = torch.full((2, 8, 8), fill)
    loss = BceDiceLoss()(x, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    y = (torch.randn(2, 4, 8, 8) * 30).requires_grad_(True)
    lab = torch.full((2, 8, 8), int(fill) * 3, dtype=torch.long)
    loss = CeDiceLoss(4)(y, lab)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(y.grad).all()


def test_bce_is_stable_for_extreme_logits():
    x = torch.tensor([[[[100.0, -100.0]]]])
    t = torch.tensor([[[0.0, 1.0]]])
    bce_part = BceDiceLoss(wb=1.0, wd=0.0)(x, t)
    assert bce_part.item() == pytest.approx(100.0, rel=1e-4)  # sigmoid-then-log would give inf (or 100 clamped)


def test_deep_supervision_weighted_sum_and_resize():
    torch.manual_seed(2)
    base = BceDiceLoss()
    t = (torch.rand(2, 16, 16) > 0.5).float()
    outs = [torch.randn(2, 1, 16, 16), torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4)]
    loss = DeepSupervisionLoss(base, [1.0, 0.5, 0.25])(outs, t)
    up = [F.interpolate(o, size=(16, 16), mode="bilinear", align_corners=False) for o in outs]
    want = base(up[0], t) + 0.5 * base(up[1], t) + 0.25 * base(up[2], t)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    # target resized to each output instead
    loss_t = DeepSupervisionLoss(base, [1.0, 0.5], resize="target")(outs[:2], t)
    t8 = t[:, ::2, ::2]  # nearest downsampling by 2 picks the top-left pixel of each 2x2 block
    assert loss_t.item() == pytest.approx((base(outs[0], t) + 0.5 * base(outs[1], t8)).item(), rel=1e-6)
    with pytest.raises(ValueError, match="weights"):
        DeepSupervisionLoss(base, [1.0, 0.5])(outs, t)
    with pytest.raises(ValueError, match="spatial size"):
        DeepSupervisionLoss(base, [1.0, 1.0], resize=None)(outs[:2], t)


def test_build_loss_registry_and_recipes():
    assert {"bce_dice", "ce_dice", "vmunet_synapse", "mamba_unet", "gt_bce_dice"} <= set(list_losses())
    syn = build_loss("vmunet_synapse", 9)
    assert (syn.w_ce, syn.w_dice, syn.smooth) == (1.0, 1.0, 1e-5)
    acdc = build_loss("mamba_unet", 4)
    assert (acdc.w_ce, acdc.w_dice) == (0.5, 0.5)
    gt = build_loss("gt_bce_dice", 1)
    assert gt.weights == list(VMUNETV2_GT_WEIGHTS) == [1.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    b = build_loss("bce_dice", 1, wb=2.0)
    assert isinstance(b, BceDiceLoss) and b.wb == 2.0
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("focal", 2)
    with pytest.raises(ValueError, match="num_classes=1"):
        build_loss("bce_dice", 3)
    with pytest.raises(ValueError, match="bad arguments"):
        build_loss("ce_dice", 3, gamma=2)


def test_loss_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BceDiceLoss()(torch.zeros(1, 1, 4, 4), torch.full((1, 4, 4), 255.0))
    with pytest.raises(ValueError, match="CeDiceLoss"):
        BceDiceLoss()(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="does not match"):
        BceDiceLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match="0..2"):
        CeDiceLoss(3)(torch.zeros(1, 3, 4, 4), torch.full((1, 4, 4), 3))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        CeDiceLoss(3)(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="class_weights"):
        CeDiceLoss(3, class_weights=[1.0, 2.0])
