"""nnU-Net's losses for 2-D and 3-D training: softmax CE + soft Dice, and region-based sigmoid BCE + soft Dice.

Written from nnU-Net v2 ``training/loss/compound_losses.py`` (``DC_and_CE_loss``, ``DC_and_BCE_loss``) and
``training/loss/dice.py`` (``MemoryEfficientSoftDiceLoss``); see ``shared/spec/volumetric_pipeline.md`` §6.

Soft Dice (both losses): with probabilities ``p`` (softmax over classes, or sigmoid per region), one-hot / region
target ``t`` and a validity mask ``m`` (0 on ignored voxels), per sample ``b`` and channel ``c``::

    I = sum(p * t * m),  P = sum(p * m),  G = sum(t * m)      (sums over the spatial axes)
    dice[b, c] = (2 I + smooth) / max(P + G + smooth, 1e-8)

with ``batch_dice=True`` the sums also run over the batch before the ratio (one Dice per channel). The Dice term is
``1 - mean(dice)`` over the (batch and) kept channels. nnU-Net returns ``-mean(dice)``; the two differ by the
constant 1 (same gradients); ``1 - dice`` keeps the loss non-negative like every other loss here.

* :class:`DiceCELoss` (``DC_and_CE_loss``; label-based training): ``w_ce * CE + w_dice * Dice`` with softmax,
  ``do_bg=False`` (background channel dropped from the Dice), ``smooth=1e-5``, ``batch_dice`` False for 3d_fullres
  and True for 2d plans. Ignored voxels (label ``ignore_index``, default -1, the "outside the nonzero crop" label of
  the volumetric contract) are excluded from both terms; CE is the mean over valid voxels (and 0 when there are
  none, as nnU-Net skips it).
* :class:`RegionDiceBCELoss` (``DC_and_BCE_loss``; region-based training, e.g. BraTS WT/TC/ET): one sigmoid output
  per region, region targets ``isin(labels, region)``; ``w_bce * BCEWithLogits + w_dice * Dice`` with
  ``do_bg=True`` (every region counts). Ignored voxels are excluded from both terms. Deliberate difference: with an
  ignore label nnU-Net divides the masked BCE sum over all region channels by the number of valid *voxels* (so the
  BCE weighs ``R`` times more than without an ignore label); we divide by valid voxels x regions, the same mean as
  without an ignore label.

All arithmetic is float32 (also under autocast); inputs are ``logits (B, C, *spatial)`` with any number of spatial
axes and ``target (B, *spatial)`` or ``(B, 1, *spatial)`` integer labels.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DiceCELoss", "RegionDiceBCELoss", "soft_dice", "region_targets"]


def soft_dice(prob: torch.Tensor, onehot: torch.Tensor, valid: Optional[torch.Tensor], batch_dice: bool,
              smooth: float) -> torch.Tensor:
    """nnU-Net's soft Dice per (sample,) channel: ``(B, C)`` or ``(C,)`` with ``batch_dice``. ``valid`` is
    ``(B, 1, *spatial)`` (1 = counted) or ``None``."""
    axes = tuple(range(2, prob.ndim))
    if valid is not None:
        vm = valid.to(prob.dtype)
        inter = (prob * onehot * vm).sum(axes)
        sum_pred = (prob * vm).sum(axes)
        sum_gt = (onehot * vm).sum(axes)
    else:
        inter, sum_pred, sum_gt = (prob * onehot).sum(axes), prob.sum(axes), onehot.sum(axes)
    if batch_dice:
        inter, sum_pred, sum_gt = inter.sum(0), sum_pred.sum(0), sum_gt.sum(0)
    return (2 * inter + smooth) / torch.clamp(sum_gt + sum_pred + smooth, min=1e-8)


def _labels(target: torch.Tensor, logits: torch.Tensor, name: str) -> torch.Tensor:
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if tuple(target.shape) != (logits.shape[0],) + tuple(logits.shape[2:]):
        raise ValueError(f"{name}: target shape {tuple(target.shape)} does not match logits "
                         f"{tuple(logits.shape)}; expected (B, *spatial) integer labels.")
    if target.is_floating_point():
        if target.numel() and not torch.equal(target, target.round()):
            raise ValueError(f"{name}: target must hold integer class labels, got non-integer floats.")
    return target.long()


def region_targets(labels: torch.Tensor, regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """``(B, *spatial)`` labels -> ``(B, R, *spatial)`` float region targets ``isin(labels, region)``."""
    return torch.stack([torch.isin(labels, torch.tensor(list(r), device=labels.device)) for r in regions],
                       1).float()


class DiceCELoss(nn.Module):
    """nnU-Net ``DC_and_CE_loss``: ``w_ce * CE + w_dice * (1 - soft Dice)`` on softmax outputs (see module doc).

    Args:
        num_classes: logit channels (background included), >= 2.
        batch_dice: one Dice per class over the batch (nnU-Net 2d) instead of per sample (3d_fullres, default).
        do_bg: include the background channel in the Dice (nnU-Net: False).
        smooth: Dice smoothing (nnU-Net: 1e-5).
        w_ce, w_dice: term weights (nnU-Net: 1, 1).
        ignore_index: label excluded from both terms (default -1; ``None``: none).
    """

    def __init__(self, num_classes: int, batch_dice: bool = False, do_bg: bool = False, smooth: float = 1e-5,
                 w_ce: float = 1.0, w_dice: float = 1.0, ignore_index: Optional[int] = -1) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"DiceCELoss needs num_classes >= 2, got {num_classes}; use a region loss or "
                             f"bce_dice for one channel.")
        self.num_classes = int(num_classes)
        self.batch_dice, self.do_bg, self.smooth = bool(batch_dice), bool(do_bg), float(smooth)
        self.w_ce, self.w_dice = float(w_ce), float(w_dice)
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = self.num_classes
        if logits.ndim < 3 or logits.shape[1] != c:
            raise ValueError(f"DiceCELoss(num_classes={c}) expects logits (B, {c}, *spatial), got "
                             f"{tuple(logits.shape)}.")
        target = _labels(target, logits, "DiceCELoss")
        valid = None if self.ignore_index is None else target != int(self.ignore_index)
        tv = target if valid is None else target[valid]
        if tv.numel() and (int(tv.min()) < 0 or int(tv.max()) >= c):
            raise ValueError(f"DiceCELoss: target labels must lie in 0..{c - 1} (or equal ignore_index "
                             f"{self.ignore_index}), found [{int(tv.min())}, {int(tv.max())}].")
        x = logits.float()
        safe = target if valid is None else torch.where(valid, target, torch.zeros_like(target))
        onehot = F.one_hot(safe, c).movedim(-1, 1).to(x.dtype)
        prob = torch.softmax(x, 1)
        vm = None if valid is None else valid.unsqueeze(1)
        if not self.do_bg:
            prob, onehot = prob[:, 1:], onehot[:, 1:]
        dice = soft_dice(prob, onehot, vm, self.batch_dice, self.smooth)
        loss = self.w_dice * (1 - dice.mean())
        if valid is None:
            loss = loss + self.w_ce * F.cross_entropy(x, safe)
        elif bool(valid.any()):
            loss = loss + self.w_ce * F.cross_entropy(x, target, ignore_index=int(self.ignore_index))
        return loss


class RegionDiceBCELoss(nn.Module):
    """nnU-Net ``DC_and_BCE_loss`` for region-based training (see module doc).

    Args:
        regions: one list of class indices per output channel (BraTS remapped 1 NCR, 2 ED, 3 ET:
            ``[[1, 2, 3], [1, 3], [3]]`` = WT, TC, ET).
        batch_dice, smooth, ignore_index: as :class:`DiceCELoss` (``do_bg`` is True: every region counts).
        w_bce, w_dice: term weights (nnU-Net: 1, 1).

    ``target`` is the integer label map; region targets are derived from it.
    """

    def __init__(self, regions: Sequence[Sequence[int]], batch_dice: bool = False, smooth: float = 1e-5,
                 w_bce: float = 1.0, w_dice: float = 1.0, ignore_index: Optional[int] = -1) -> None:
        super().__init__()
        regs = [[int(v) for v in r] for r in (regions or [])]
        if not regs or any(not r or min(r) < 0 for r in regs):
            raise ValueError(f"regions must be non-empty lists of class indices >= 0, got {regions!r}.")
        self.regions = regs
        self.batch_dice, self.smooth = bool(batch_dice), float(smooth)
        self.w_bce, self.w_dice = float(w_bce), float(w_dice)
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        r = len(self.regions)
        if logits.ndim < 3 or logits.shape[1] != r:
            raise ValueError(f"RegionDiceBCELoss with {r} regions expects logits (B, {r}, *spatial) (one sigmoid "
                             f"output per region), got {tuple(logits.shape)}.")
        target = _labels(target, logits, "RegionDiceBCELoss")
        x = logits.float()
        t = region_targets(target, self.regions).to(x.dtype)
        valid = None if self.ignore_index is None else (target != int(self.ignore_index)).unsqueeze(1)
        dice = soft_dice(torch.sigmoid(x), t, valid, self.batch_dice, self.smooth)
        bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        if valid is None:
            bce = bce.mean()
        else:
            vm = valid.to(x.dtype)
            bce = (bce * vm).sum() / torch.clamp(vm.sum() * r, min=1e-8)
        return self.w_bce * bce + self.w_dice * (1 - dice.mean())


def _check_regions(num_classes: int, regions) -> Tuple:
    if regions is None:
        raise ValueError("region loss needs regions=[[...], ...] (one list of class indices per output channel).")
    if len(regions) != int(num_classes):
        raise ValueError(f"region loss: {len(regions)} regions for a model with {num_classes} outputs; the model "
                         f"needs one sigmoid output per region.")
    return tuple(regions)
