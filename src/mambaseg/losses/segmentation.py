"""Segmentation losses of the Mamba U-Net papers, taking logits.

* :class:`BceDiceLoss` -- VM-UNet / VM-UNetV2 binary loss (ISIC, polyp): ``wb * BCE + wd * Dice`` with weights 1:1
  and a per-sample soft Dice (smooth 1) averaged over the batch. Upstream applies ``nn.BCELoss`` to sigmoid outputs
  (log clamped at -100); we use ``binary_cross_entropy_with_logits`` (same value wherever the clamp is inactive,
  finite gradients everywhere).
* :class:`CeDiceLoss` -- multi-class loss of the Synapse/ACDC recipes: ``w_ce * CE + w_dice * Dice`` with the
  TransUNet/SSL4MIS soft Dice: softmax probabilities, one-hot target, one Dice per class over the whole batch,
  squared denominators (``sum p^2 + sum t^2``), smooth 1e-5, averaged over **all** classes including background.
  Recipes: VM-UNet Synapse ``CeDiceLoss(9, w_ce=1, w_dice=1)`` (its config passes ``loss_weight=[1, 1]``: the sum);
  Mamba-UNet ACDC ``CeDiceLoss(4, w_ce=0.5, w_dice=0.5)`` (``0.5 * (CE + Dice)``).
* :class:`DeepSupervisionLoss` -- a weighted sum of a base loss over several outputs. VM-UNetV2's ``utils.py``
  defines ``GT_BceDiceLoss`` = ``BceDice(out) + 0.1*BceDice(gt5) + 0.2*BceDice(gt4) + 0.3*BceDice(gt3) +
  0.4*BceDice(gt2) + 0.5*BceDice(gt1)`` (``gt5`` deepest); no upstream repository actually calls it (spec 2.1).

All losses compute in float32 (also under autocast) and return a scalar.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "BceDiceLoss",
    "CeDiceLoss",
    "DeepSupervisionLoss",
    "VMUNETV2_GT_WEIGHTS",
    "build_loss",
    "list_losses",
]

#: weights of VM-UNetV2 ``GT_BceDiceLoss`` for outputs ordered ``[final, gt5 (deepest), gt4, gt3, gt2, gt1]``.
VMUNETV2_GT_WEIGHTS: Tuple[float, ...] = (1.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def _binary_target(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Bring a binary/soft target to the logits' shape (B, 1, *spatial) and float32; check values in [0, 1]."""
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    if tuple(target.shape) != tuple(logits.shape):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}; expected target "
            f"(B, H, W) or (B, 1, H, W) for logits (B, 1, H, W)."
        )
    t = target.float()
    if t.numel():
        lo, hi = float(t.min()), float(t.max())
        if lo < 0 or hi > 1:
            raise ValueError(
                f"binary target values must lie in [0, 1], found [{lo:g}, {hi:g}]; scale 0/255 masks by 1/255."
            )
    return t


class BceDiceLoss(nn.Module):
    """``wb * BCE(logits, target) + wd * (1 - mean_b Dice_b)`` for binary segmentation (VM-UNet, VM-UNetV2).

    ``Dice_b = (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)`` per sample ``b``, ``p = sigmoid(logits)``.

    Args:
        wb: weight of the BCE term (VM-UNet: 1).
        wd: weight of the Dice term (VM-UNet: 1).
        smooth: Dice smoothing constant (VM-UNet: 1).

    Inputs: ``logits`` ``(B, 1, *spatial)``; ``target`` ``(B, *spatial)`` or ``(B, 1, *spatial)`` with values in
    ``[0, 1]`` (hard or soft masks).
    """

    def __init__(self, wb: float = 1.0, wd: float = 1.0, smooth: float = 1.0) -> None:
        super().__init__()
        self.wb, self.wd, self.smooth = float(wb), float(wd), float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim < 3 or logits.shape[1] != 1:
            raise ValueError(
                f"BceDiceLoss expects logits (B, 1, H, W), got {tuple(logits.shape)}; use CeDiceLoss for "
                f"multi-class logits."
            )
        x = logits.float()
        t = _binary_target(target, x)
        bce = F.binary_cross_entropy_with_logits(x, t)
        b = x.shape[0]
        p = torch.sigmoid(x).reshape(b, -1)
        tt = t.reshape(b, -1)
        dice = (2 * (p * tt).sum(1) + self.smooth) / (p.sum(1) + tt.sum(1) + self.smooth)
        return self.wb * bce + self.wd * (1 - dice.mean())


class CeDiceLoss(nn.Module):
    """``w_ce * CE + w_dice * DiceLoss`` for multi-class segmentation (Synapse / ACDC recipes).

    Dice term (TransUNet / SSL4MIS ``DiceLoss`` with ``softmax=True``): for every class ``c`` of ``0..C-1``,
    ``d_c = 1 - (2 * sum(p_c t_c) + smooth) / (sum(p_c^2) + sum(t_c^2) + smooth)`` summed over batch and pixels;
    the loss is ``sum_c w_c d_c / C``.

    Args:
        num_classes: number of classes ``C`` (logit channels), >= 2.
        w_ce: weight of the cross-entropy term (Mamba-UNet ACDC 0.5; VM-UNet Synapse 1).
        w_dice: weight of the Dice term (Mamba-UNet ACDC 0.5; VM-UNet Synapse 1).
        smooth: Dice smoothing (1e-5 upstream).
        ignore_index: target label excluded from both terms (``None``: none).
        class_weights: optional per-class weights ``w_c``, used as CE's ``weight`` and as the Dice class weights
            (TransUNet's ``weight`` argument); default all 1.
        squared: squared Dice denominators as upstream (``False``: ``sum p + sum t``).

    Inputs: ``logits`` ``(B, C, *spatial)``; ``target`` ``(B, *spatial)`` (or ``(B, 1, *spatial)``) integer labels.
    """

    def __init__(self, num_classes: int, w_ce: float = 0.5, w_dice: float = 0.5, smooth: float = 1e-5,
                 ignore_index: Optional[int] = None, class_weights: Optional[Sequence[float]] = None,
                 squared: bool = True) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"CeDiceLoss needs num_classes >= 2, got {num_classes}; use BceDiceLoss for 1 channel.")
        self.num_classes = int(num_classes)
        self.w_ce, self.w_dice, self.smooth = float(w_ce), float(w_dice), float(smooth)
        self.ignore_index = ignore_index
        self.squared = bool(squared)
        if class_weights is not None:
            cw = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
            if cw.numel() != self.num_classes:
                raise ValueError(f"class_weights has {cw.numel()} entries for num_classes={self.num_classes}.")
            self.register_buffer("class_weights", cw)
        else:
            self.class_weights = None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = self.num_classes
        if logits.ndim < 3 or logits.shape[1] != c:
            raise ValueError(f"CeDiceLoss(num_classes={c}) expects logits (B, {c}, H, W), got {tuple(logits.shape)}.")
        if target.ndim == logits.ndim and target.shape[1] == 1:
            target = target[:, 0]
        if tuple(target.shape) != (logits.shape[0],) + tuple(logits.shape[2:]):
            raise ValueError(
                f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}; expected "
                f"(B, H, W) integer labels."
            )
        if target.is_floating_point():
            if target.numel() and not torch.equal(target, target.round()):
                raise ValueError("CeDiceLoss target must hold integer class labels, got non-integer floats.")
        target = target.long()
        valid = torch.ones_like(target, dtype=torch.bool) if self.ignore_index is None else target != self.ignore_index
        if target.numel():
            tv = target[valid]
            if tv.numel() and (int(tv.min()) < 0 or int(tv.max()) >= c):
                raise ValueError(
                    f"target labels must lie in 0..{c - 1} (or equal ignore_index), found "
                    f"[{int(tv.min())}, {int(tv.max())}]."
                )
        x = logits.float()
        cw = self.class_weights
        n_valid = int(valid.sum())
        if n_valid == 0:
            ce = x.sum() * 0.0
        else:
            ce = F.cross_entropy(x, target, weight=cw,
                                 ignore_index=-100 if self.ignore_index is None else int(self.ignore_index))
        prob = torch.softmax(x, dim=1)
        safe_t = torch.where(valid, target, torch.zeros_like(target))
        onehot = F.one_hot(safe_t, c).movedim(-1, 1).float()
        vm = valid.unsqueeze(1).float()
        prob, onehot = prob * vm, onehot * vm
        dims = [0] + list(range(2, x.ndim))
        inter = (prob * onehot).sum(dims)
        if self.squared:
            den = (prob * prob).sum(dims) + (onehot * onehot).sum(dims)
        else:
            den = prob.sum(dims) + onehot.sum(dims)
        dice_loss_c = 1 - (2 * inter + self.smooth) / (den + self.smooth)
        w = torch.ones(c, device=x.device) if cw is None else cw.to(x.device)
        dice = (dice_loss_c * w).sum() / c
        return self.w_ce * ce + self.w_dice * dice


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``base_loss`` over several outputs: ``sum_i weights[i] * base_loss(outputs[i], target)``.

    Args:
        base_loss: a loss ``(logits, target) -> scalar`` (e.g. :class:`BceDiceLoss`).
        weights: one weight per output, in the order the model returns them. VM-UNetV2 ``GT_BceDiceLoss``:
            :data:`VMUNETV2_GT_WEIGHTS` = ``(1, 0.1, 0.2, 0.3, 0.4, 0.5)`` for ``[final, gt5 (deepest), ..., gt1]``.
        resize: what to do when an output's spatial size differs from the target's: ``"logits"`` (default)
            bilinearly upsamples the logits to the target size (as VM-UNetV2/EGE-UNet upsample their side outputs),
            ``"target"`` resizes the target to the output (nearest), ``None`` raises.
    """

    def __init__(self, base_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 weights: Sequence[float], resize: Optional[str] = "logits") -> None:
        super().__init__()
        if len(weights) == 0:
            raise ValueError("weights must name one weight per output, got an empty list.")
        if resize not in ("logits", "target", None):
            raise ValueError(f"resize must be 'logits', 'target' or None, got {resize!r}.")
        self.base_loss = base_loss
        self.weights = [float(w) for w in weights]
        self.resize = resize

    def _match(self, out: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        spatial_t = tuple(target.shape[-(out.ndim - 2):])
        if tuple(out.shape[2:]) == spatial_t:
            return out, target
        if self.resize is None:
            raise ValueError(f"output spatial size {tuple(out.shape[2:])} differs from target {spatial_t}; "
                             f"set resize='logits' or 'target'.")
        if self.resize == "logits":
            mode = "bilinear" if out.ndim == 4 else "trilinear"
            return F.interpolate(out.float(), size=spatial_t, mode=mode, align_corners=False), target
        squeeze = target.ndim == out.ndim - 1
        t = target.unsqueeze(1) if squeeze else target
        t = F.interpolate(t.float(), size=tuple(out.shape[2:]), mode="nearest")
        t = t[:, 0] if squeeze else t
        return out, (t.to(target.dtype) if not target.is_floating_point() else t)

    def forward(self, outputs: Union[Sequence[torch.Tensor], torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        outputs = list(outputs)
        if len(outputs) != len(self.weights):
            raise ValueError(
                f"DeepSupervisionLoss has {len(self.weights)} weights but the model returned {len(outputs)} "
                f"output(s); give one weight per output."
            )
        total = None
        for w, out in zip(self.weights, outputs):
            o, t = self._match(out, target)
            term = w * self.base_loss(o, t)
            total = term if total is None else total + term
        return total


# ---------------------------------------------------------------------------------------------- registry
def _bce_dice(num_classes: int, **kw) -> nn.Module:
    if int(num_classes) != 1:
        raise ValueError(f"'bce_dice' needs a 1-channel model (num_classes=1), got num_classes={num_classes}; "
                         f"use 'ce_dice' for multi-class logits.")
    return BceDiceLoss(**kw)


def _ce_dice(num_classes: int, **kw) -> nn.Module:
    return CeDiceLoss(num_classes, **kw)


def _vmunet_synapse(num_classes: int, **kw) -> nn.Module:
    kw = {"w_ce": 1.0, "w_dice": 1.0, **kw}
    return CeDiceLoss(num_classes, **kw)


def _mamba_unet(num_classes: int, **kw) -> nn.Module:
    kw = {"w_ce": 0.5, "w_dice": 0.5, **kw}
    return CeDiceLoss(num_classes, **kw)


def _gt_bce_dice(num_classes: int, weights: Sequence[float] = VMUNETV2_GT_WEIGHTS, resize: Optional[str] = "logits",
                 **kw) -> nn.Module:
    return DeepSupervisionLoss(_bce_dice(num_classes, **kw), weights, resize=resize)


def _nnunet_dc_ce(num_classes: int, **kw) -> nn.Module:
    from .nnunet import DiceCELoss
    return DiceCELoss(num_classes, **kw)


def _nnunet_region_dc_bce(num_classes: int, regions=None, **kw) -> nn.Module:
    from .nnunet import RegionDiceBCELoss, _check_regions
    return RegionDiceBCELoss(_check_regions(num_classes, regions), **kw)


_LOSSES: Dict[str, Tuple[Callable[..., nn.Module], str]] = {
    "bce_dice": (_bce_dice, "BCE + Dice on 1-channel logits (VM-UNet/VM-UNetV2 ISIC & polyp: wb=wd=1, smooth=1)"),
    "ce_dice": (_ce_dice, "CE + softmax Dice over all classes (defaults 0.5/0.5, smooth 1e-5)"),
    "vmunet_synapse": (_vmunet_synapse, "VM-UNet Synapse recipe: CE + Dice with weights 1/1"),
    "mamba_unet": (_mamba_unet, "Mamba-UNet ACDC recipe: 0.5*CE + 0.5*Dice"),
    "nnunet_dc_ce": (_nnunet_dc_ce, "nnU-Net DC_and_CE: CE + softmax soft Dice without background, smooth 1e-5, "
                                    "per-sample Dice (batch_dice=False, 3d_fullres), ignore label -1; N-D"),
    "nnunet_region_dc_bce": (_nnunet_region_dc_bce, "nnU-Net DC_and_BCE for regions (BraTS WT/TC/ET): BCE + sigmoid "
                                                    "soft Dice per region, needs regions=[[...]], ignore label -1"),
    "gt_bce_dice": (_gt_bce_dice, "VM-UNetV2 GT_BceDiceLoss: BceDice on [final, gt5..gt1] weighted 1,.1,.2,.3,.4,.5"),
}


def list_losses() -> List[str]:
    """Names accepted by :func:`build_loss`."""
    return sorted(_LOSSES)


def build_loss(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a loss by name (see :func:`list_losses`); ``kwargs`` go to the loss constructor.

    ``num_classes`` is the model's number of output channels (1 for binary ``bce_dice``).
    """
    try:
        factory = _LOSSES[name][0]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; available: {list_losses()}.") from None
    try:
        return factory(num_classes, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for loss {name!r}: {e}") from None


def describe_losses() -> Dict[str, str]:
    """``{name: one-line description}`` for the CLI."""
    return {k: v[1] for k, v in sorted(_LOSSES.items())}
