"""nnU-Net DC+CE and region DC+BCE losses against a slow per-voxel reference written from the formulas, a
hand-computed case, and the ignore-label property, in 2-D and 3-D."""
import math

import pytest
import torch

from mambaseg.losses import DiceCELoss, RegionDiceBCELoss, build_loss, region_targets


def _slow_dice(prob, onehot, valid, batch_dice, smooth):
    """Per (sample, channel) Dice by explicit loops over voxels (flattened)."""
    b, c = prob.shape[:2]
    p = prob.reshape(b, c, -1).tolist()
    t = onehot.reshape(b, c, -1).tolist()
    v = valid.reshape(b, -1).tolist()
    n = len(v[0])
    sums = [[[0.0, 0.0, 0.0] for _ in range(c)] for _ in range(b)]
    for i in range(b):
        for k in range(c):
            for j in range(n):
                if v[i][j]:
                    sums[i][k][0] += p[i][k][j] * t[i][k][j]
                    sums[i][k][1] += p[i][k][j]
                    sums[i][k][2] += t[i][k][j]
    dices = []
    if batch_dice:
        for k in range(c):
            it, sp, sg = (sum(sums[i][k][q] for i in range(b)) for q in range(3))
            dices.append((2 * it + smooth) / max(sp + sg + smooth, 1e-8))
    else:
        for i in range(b):
            for k in range(c):
                it, sp, sg = sums[i][k]
                dices.append((2 * it + smooth) / max(sp + sg + smooth, 1e-8))
    return sum(dices) / len(dices)


def _slow_ce(logits, target, valid):
    b, c = logits.shape[:2]
    lg = logits.reshape(b, c, -1)
    tg = target.reshape(b, -1)
    vv = valid.reshape(b, -1)
    tot, cnt = 0.0, 0
    for i in range(b):
        for j in range(lg.shape[-1]):
            if vv[i, j]:
                col = [float(lg[i, k, j]) for k in range(c)]
                m = max(col)
                lse = m + math.log(sum(math.exp(x - m) for x in col))
                tot += lse - col[int(tg[i, j])]
                cnt += 1
    return tot / cnt if cnt else 0.0


def _slow_bce(logits, t, valid):
    tot, cnt = 0.0, 0
    b, r = logits.shape[:2]
    lg, tt, vv = logits.reshape(b, r, -1), t.reshape(b, r, -1), valid.reshape(b, -1)
    for i in range(b):
        for k in range(r):
            for j in range(lg.shape[-1]):
                if vv[i, j]:
                    x, y = float(lg[i, k, j]), float(tt[i, k, j])
                    tot += max(x, 0) - x * y + math.log1p(math.exp(-abs(x)))
                    cnt += 1
    return tot / cnt


@pytest.mark.parametrize("spatial", [(5, 6), (4, 3, 5)])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_dice_ce_matches_slow_reference_with_ignore(spatial, batch_dice):
    g = torch.Generator().manual_seed(0)
    c = 4
    logits = torch.randn((2, c) + spatial, generator=g)
    target = torch.randint(0, c, (2,) + spatial, generator=g)
    target[0].view(-1)[:5] = -1  # "outside the crop" voxels
    loss = DiceCELoss(c, batch_dice=batch_dice)(logits, target)
    valid = target != -1
    safe = torch.where(valid, target, torch.zeros_like(target))
    onehot = torch.nn.functional.one_hot(safe, c).movedim(-1, 1).float()
    prob = torch.softmax(logits, 1)
    dice = _slow_dice(prob[:, 1:], onehot[:, 1:], valid, batch_dice, 1e-5)
    ref = _slow_ce(logits, target, valid) + (1 - dice)
    assert float(loss) == pytest.approx(ref, rel=1e-5)


def test_region_dice_bce_matches_slow_reference_3d():
    g = torch.Generator().manual_seed(1)
    regions = [[1, 2, 3], [1, 3], [3]]
    logits = torch.randn(2, 3, 4, 5, 3, generator=g)
    target = torch.randint(0, 4, (2, 4, 5, 3), generator=g)
    target[1, 0] = -1
    loss = RegionDiceBCELoss(regions)(logits, target)
    valid = target != -1
    t = torch.zeros_like(logits)
    for k, r in enumerate(regions):  # region targets by a loop over the label values
        for v in r:
            t[:, k] += (target == v).float()
    dice = _slow_dice(torch.sigmoid(logits), t, valid, False, 1e-5)
    ref = _slow_bce(logits, t, valid) + (1 - dice)
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    assert torch.equal(region_targets(target, regions), t)  # -1 is in no region


def test_ignored_voxels_do_not_change_loss_or_get_gradient():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 3, 6, 6, 4, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (1, 6, 6, 4), generator=g)
    target[0, :2] = -1
    for loss_fn in (DiceCELoss(3), RegionDiceBCELoss([[1, 2], [2]])):
        lg = logits[:, : (3 if isinstance(loss_fn, DiceCELoss) else 2)]
        a = loss_fn(lg, target)
        (grad,) = torch.autograd.grad(a, logits)
        assert float(grad[0, :, :2].abs().max()) == 0.0
        other = lg.detach().clone()
        other[0, :, :2] = 100.0
        assert float(loss_fn(other, target)) == pytest.approx(float(a.detach()), rel=1e-6)


def test_hand_computed_perfect_region_prediction():
    # one voxel of class 3 (in both regions), one background voxel; huge logits -> sigmoid exactly 0/1
    target = torch.tensor([[3, 0]])
    logits = torch.tensor([[[50.0, -50.0], [50.0, -50.0]]])
    loss = RegionDiceBCELoss([[1, 3], [3]], smooth=0.0)(logits, target)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    # all-wrong prediction: Dice 0 for both regions -> dice term 1; BCE = 50 per element
    loss = RegionDiceBCELoss([[1, 3], [3]], smooth=0.0)(-logits, target)
    assert float(loss) == pytest.approx(50.0 + 1.0, rel=1e-5)


def test_build_loss_names_and_errors():
    assert isinstance(build_loss("nnunet_dc_ce", 4), DiceCELoss)
    assert isinstance(build_loss("nnunet_region_dc_bce", 3, regions=[[1, 2, 3], [1, 3], [3]]), RegionDiceBCELoss)
    with pytest.raises(ValueError, match="one sigmoid output per region"):
        build_loss("nnunet_region_dc_bce", 4, regions=[[1, 2, 3], [1, 3], [3]])
    with pytest.raises(ValueError, match="needs regions"):
        build_loss("nnunet_region_dc_bce", 3)
    with pytest.raises(ValueError, match="labels must lie in 0..3"):
        DiceCELoss(4)(torch.zeros(1, 4, 2, 2), torch.full((1, 2, 2), 7))
