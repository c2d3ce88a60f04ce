"""Per-class confusion counts and the scores derived from them.

``confusion(pred, target, num_classes)`` counts, for every class ``c`` (one-vs-rest), the pixels/voxels with

* ``TP``: ``pred == c`` and ``target == c``
* ``FP``: ``pred == c`` and ``target != c``
* ``FN``: ``pred != c`` and ``target == c``
* ``TN``: ``pred != c`` and ``target != c``

returned as an int64 array/tensor of shape ``(num_classes, 4)`` with columns in that order (``TP, FP, FN, TN``
are exported as the column indices). Binary segmentation is the case ``num_classes=2``: row 1 holds the
foreground counts, the numbers VM-UNet feeds to ``sklearn.metrics.confusion_matrix``.

Scores from one row (``scores_from_confusion``):

* ``dice``        = 2TP / (2TP + FP + FN)       (DSC, F1)
* ``iou``         = TP / (TP + FP + FN)         (Jaccard; VM-UNet's "mIoU" is this for the foreground row)
* ``accuracy``    = (TP + TN) / (TP + FP + FN + TN)
* ``precision``   = TP / (TP + FP)
* ``sensitivity`` = TP / (TP + FN)              (recall)
* ``specificity`` = TN / (TN + FP)

A zero denominator yields ``zero_division`` (``0.0`` as VM-UNet's ``engine.py``, ``nan`` as MONAI).
"""
from __future__ import annotations

from typing import Dict, Optional, Union

import numpy as np
import torch

__all__ = ["confusion", "scores_from_confusion", "CONFUSION_METRICS", "TP", "FP", "FN", "TN", "check_labels"]

TP, FP, FN, TN = 0, 1, 2, 3
CONFUSION_METRICS = ("dice", "iou", "accuracy", "precision", "sensitivity", "specificity")

ArrayLike = Union[np.ndarray, torch.Tensor]


def check_labels(x: torch.Tensor, num_classes: int, name: str, ignore_index: Optional[int] = None) -> torch.Tensor:
    """Validate an integer label map and return it as an int64 tensor (bool becomes 0/1)."""
    if x.dtype == torch.bool:
        return x.long()
    if x.is_floating_point() or x.is_complex():
        if x.numel() and not torch.equal(x, torch.round(x)):
            raise ValueError(
                f"{name} must hold integer class labels, got non-integer values of dtype {x.dtype}; convert "
                f"logits first (logits.argmax(1) for multi-class, sigmoid(logits) >= 0.5 for binary, or "
                f"mambaseg.metrics.logits_to_labels)."
            )
    x = x.long()
    if x.numel():
        valid = x if ignore_index is None else x[x != ignore_index]
        if valid.numel():
            lo, hi = int(valid.min()), int(valid.max())
            if lo < 0 or hi >= num_classes:
                raise ValueError(
                    f"{name} has labels in [{lo}, {hi}] but num_classes={num_classes} allows 0..{num_classes - 1}; "
                    f"remap masks (e.g. 0/255 -> 0/1) or raise num_classes."
                )
    return x


def confusion(pred: ArrayLike, target: ArrayLike, num_classes: int,
              ignore_index: Optional[int] = None) -> ArrayLike:
    """Per-class one-vs-rest confusion counts of two integer label maps of any (equal) shape.

    Args:
        pred: predicted labels (integer or bool; numpy array or torch tensor).
        target: reference labels, same shape.
        num_classes: number of classes (labels must lie in ``0..num_classes-1``; 2 for binary). ``1`` is read as
            binary and gives 2 rows.
        ignore_index: target label whose pixels are excluded from all counts (``None``: none).

    Returns:
        int64 counts of shape ``(num_classes, 4)``, columns ``TP, FP, FN, TN``; a torch tensor (on ``pred``'s
        device) if ``pred`` is a tensor, else a numpy array.
    """
    as_numpy = not isinstance(pred, torch.Tensor)
    p = torch.as_tensor(np.asarray(pred)) if as_numpy else pred
    t = torch.as_tensor(np.asarray(target)) if not isinstance(target, torch.Tensor) else target
    t = t.to(p.device)
    if tuple(p.shape) != tuple(t.shape):
        raise ValueError(f"pred and target should have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}.")
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    num_classes = max(num_classes, 2)
    p = check_labels(p, num_classes, "pred")
    t = check_labels(t, num_classes, "target", ignore_index=ignore_index)
    p, t = p.reshape(-1), t.reshape(-1)
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    cm = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    tp = cm.diagonal()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    tn = t.numel() - tp - fp - fn
    out = torch.stack([tp, fp, fn, tn], dim=1).to(torch.int64)
    return out.cpu().numpy() if as_numpy else out


def _div(num: np.ndarray, den: np.ndarray, zero_division: float) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, float(zero_division), dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def scores_from_confusion(counts: ArrayLike, zero_division: float = float("nan")) -> Dict[str, np.ndarray]:
    """Confusion-based scores from counts of shape ``(..., 4)`` (``TP, FP, FN, TN`` last).

    Returns a dict ``{name: float64 array of shape counts.shape[:-1]}`` for the names in ``CONFUSION_METRICS``.
    """
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().cpu().numpy()
    c = np.asarray(counts, dtype=np.float64)
    if c.shape[-1] != 4:
        raise ValueError(f"counts must have a last axis of size 4 (TP, FP, FN, TN), got shape {c.shape}.")
    tp, fp, fn, tn = c[..., TP], c[..., FP], c[..., FN], c[..., TN]
    return {
        "dice": _div(2 * tp, 2 * tp + fp + fn, zero_division),
        "iou": _div(tp, tp + fp + fn, zero_division),
        "accuracy": _div(tp + tn, tp + fp + fn + tn, zero_division),
        "precision": _div(tp, tp + fp, zero_division),
        "sensitivity": _div(tp, tp + fn, zero_division),
        "specificity": _div(tn, tn + fp, zero_division),
    }
