"""Empty-mask policies: what a per-case metric reports when the prediction or the reference is empty.

For one case (an image or a volume) and one class there are three empty cases:

* ``both_empty``: prediction and reference empty (a correctly predicted absent class),
* ``pred_empty``: prediction empty, reference not (the class was missed),
* ``ref_empty``:  reference empty, prediction not (a false-positive class).

Overlap scores (``dice``, ``iou``) and surface distances (``hd``, ``hd95``, ``asd``, ``assd``) of these cases are
undefined or degenerate, and the papers in this field differ. A policy fixes one value for the overlap scores and
one for the distances in each case; ``nan`` means "excluded from the mean" (and counted). The other confusion
scores (accuracy, precision, sensitivity, specificity) keep their formula; a zero denominator gives the policy's
``zero_division`` value.

Presets (values as ``(overlap, distance)``):

=============  ===========  ===========  ============  ==============  ============================================
preset         both_empty   pred_empty   ref_empty     zero_division   source
=============  ===========  ===========  ============  ==============  ============================================
``vmunet``     (0, 0)       (0, 0)       (1, 0)        0               VM-UNet / TransUNet ``calculate_metric_
                                                                       percase`` (Synapse): pred>0 & gt>0 ->
                                                                       (dice, hd95); pred>0 & gt==0 -> (1, 0);
                                                                       else (0, 0). ``engine.py`` returns 0 for a
                                                                       zero denominator.
``mamba_unet`` (0, 0)       (0, 0)       (0, nan)      0               Mamba-UNet / SSL4MIS ``val_2D.py``: pred
                                                                       empty -> (0, 0); otherwise medpy ``dc``
                                                                       (= 0 when gt is empty) and ``hd95``, which
                                                                       *raises* when gt is empty. We do not raise:
                                                                       the distance is ``nan`` (excluded, counted).
``monai``      (nan, nan)   (0, nan)     (nan, nan)    nan             MONAI ``DiceMetric(ignore_empty=True)``
                                                                       (nan when the reference is empty) and
                                                                       ``HausdorffDistanceMetric`` /
                                                                       ``SurfaceDistanceMetric`` (nan, with a
                                                                       warning, when either mask is empty; some
                                                                       MONAI versions give inf for an empty
                                                                       prediction -- we use nan).
``nnunet``     (nan, nan)   (0, nan)     (0, nan)      nan             nnU-Net v2 ``evaluation/evaluate_predictions``
                                                                       (``compute_metrics``): Dice/IoU = 2TP/(2TP+
                                                                       FP+FN) -> nan only when both are empty (means
                                                                       use nanmean); nnU-Net reports no distances.
``segmamba``   (0, 50)      (0, 50)      (0, 50)       0               SegMamba ``5_compute_metrics.py``: Dice 0 and
                                                                       HD95 50 whenever *either* mask is empty,
                                                                       both-empty included.
``umamba``     (1, nan)     (0, nan)     (0, nan)      0               U-Mamba abdomen ``evaluation/`` scripts: DSC
                                                                       and NSD 1 when both are empty, 0 when only
                                                                       one is; no distances there (nan).
=============  ===========  ===========  ============  ==============  ============================================

Normalised surface Dice (``nsd``) is an overlap-like score; by default an empty case reports the policy's overlap
value for it. A policy may set ``nsd`` = ``(both_empty, pred_empty, ref_empty)`` explicitly: ``monai`` does
(``compute_surface_dice``: nan when both are empty, 0 when only one is).

A custom :class:`EmptyPolicy` can be passed wherever a preset name is accepted.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple, Union

__all__ = ["EmptyPolicy", "EMPTY_POLICIES", "get_empty_policy", "empty_case"]

NAN = float("nan")


@dataclass(frozen=True)
class EmptyPolicy:
    """Values reported for empty cases.

    Args:
        name: name written to the summary JSON.
        both_empty: ``(overlap, distance)`` when prediction and reference are empty.
        pred_empty: ``(overlap, distance)`` when only the prediction is empty.
        ref_empty: ``(overlap, distance)`` when only the reference is empty.
        zero_division: value of accuracy/precision/sensitivity/specificity (and of pooled scores) whose
            denominator is 0.
    """

    name: str
    both_empty: Tuple[float, float]
    pred_empty: Tuple[float, float]
    ref_empty: Tuple[float, float]
    zero_division: float = 0.0
    nsd: Optional[Tuple[float, float, float]] = None

    def nsd_value(self, case: str) -> float:
        """NSD reported for ``case`` (the explicit ``nsd`` triple, else the overlap value)."""
        if self.nsd is not None:
            return float(self.nsd[("both_empty", "pred_empty", "ref_empty").index(case)])
        return float(self.values(case)[0])

    def values(self, case: str) -> Tuple[float, float]:
        """``(overlap, distance)`` for ``case`` in ``{"both_empty", "pred_empty", "ref_empty"}``."""
        if case not in ("both_empty", "pred_empty", "ref_empty"):
            raise ValueError(f"unknown empty case {case!r}.")
        return getattr(self, case)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


EMPTY_POLICIES: Dict[str, EmptyPolicy] = {
    "vmunet": EmptyPolicy("vmunet", both_empty=(0.0, 0.0), pred_empty=(0.0, 0.0), ref_empty=(1.0, 0.0),
                          zero_division=0.0),
    "mamba_unet": EmptyPolicy("mamba_unet", both_empty=(0.0, 0.0), pred_empty=(0.0, 0.0), ref_empty=(0.0, NAN),
                              zero_division=0.0),
    "monai": EmptyPolicy("monai", both_empty=(NAN, NAN), pred_empty=(0.0, NAN), ref_empty=(NAN, NAN),
                         zero_division=NAN, nsd=(NAN, 0.0, 0.0)),
    "nnunet": EmptyPolicy("nnunet", both_empty=(NAN, NAN), pred_empty=(0.0, NAN), ref_empty=(0.0, NAN),
                          zero_division=NAN),
    "segmamba": EmptyPolicy("segmamba", both_empty=(0.0, 50.0), pred_empty=(0.0, 50.0), ref_empty=(0.0, 50.0),
                            zero_division=0.0),
    "umamba": EmptyPolicy("umamba", both_empty=(1.0, NAN), pred_empty=(0.0, NAN), ref_empty=(0.0, NAN),
                          zero_division=0.0),
}


def get_empty_policy(policy: Union[str, EmptyPolicy]) -> EmptyPolicy:
    """Return a preset by name (``vmunet``, ``mamba_unet``, ``monai``, ``nnunet``, ``segmamba``, ``umamba``) or
    pass a custom policy through."""
    if isinstance(policy, EmptyPolicy):
        return policy
    try:
        return EMPTY_POLICIES[str(policy)]
    except KeyError:
        raise ValueError(
            f"unknown empty_policy {policy!r}; choose one of {sorted(EMPTY_POLICIES)} or pass an EmptyPolicy."
        ) from None


def empty_case(pred_nonempty: bool, ref_nonempty: bool) -> str:
    """``"none"`` if both masks are non-empty, else ``"both_empty"``, ``"pred_empty"`` or ``"ref_empty"``."""
    if pred_nonempty and ref_nonempty:
        return "none"
    if not pred_nonempty and not ref_nonempty:
        return "both_empty"
    return "pred_empty" if not pred_nonempty else "ref_empty"
