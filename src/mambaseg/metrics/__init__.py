"""Segmentation metrics with declared semantics.

* :func:`confusion` / :func:`scores_from_confusion`: per-class TP/FP/FN/TN counts and DSC, IoU, accuracy,
  precision, sensitivity, specificity.
* :mod:`~mambaseg.metrics.surface`: Hausdorff, HD95 (``"medpy"`` pooled or ``"monai"`` max-of-directed), ASD
  (directed, medpy's ``asd``), ASSD and normalised surface Dice (NSD) on 2-D/3-D masks with voxel spacing (mm).
* :mod:`~mambaseg.metrics.policy`: named empty-mask policies (``vmunet``, ``mamba_unet``, ``monai``, ``nnunet``,
  ``segmamba``, ``umamba``); every summary names its policy.
* :class:`SegmentationMetrics`: streaming, DDP-safe accumulator with ``aggregation="pooled"|"per_image"|
  "per_volume"``.
* :func:`write_summary`: ``per_case.csv`` + ``summary.json``.
"""
from .confusion import CONFUSION_METRICS, FN, FP, TN, TP, confusion, scores_from_confusion
from .policy import EMPTY_POLICIES, EmptyPolicy, get_empty_policy
from .segmentation import AGGREGATIONS, DISTANCE_METRICS, SegmentationMetrics, logits_to_labels
from .summary import write_summary
from .surface import (
    HD95_MODES,
    DirectedDistances,
    EmptyMaskError,
    average_surface_distance,
    hausdorff_distance,
    hd95,
    normalized_surface_dice,
    surface_distance_metrics,
    surface_distances,
)

__all__ = [
    "AGGREGATIONS",
    "CONFUSION_METRICS",
    "DISTANCE_METRICS",
    "EMPTY_POLICIES",
    "HD95_MODES",
    "TP",
    "FP",
    "FN",
    "TN",
    "DirectedDistances",
    "EmptyMaskError",
    "EmptyPolicy",
    "SegmentationMetrics",
    "average_surface_distance",
    "confusion",
    "get_empty_policy",
    "hausdorff_distance",
    "hd95",
    "logits_to_labels",
    "normalized_surface_dice",
    "scores_from_confusion",
    "surface_distance_metrics",
    "surface_distances",
    "write_summary",
]
