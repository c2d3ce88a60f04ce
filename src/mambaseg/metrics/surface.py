"""Surface distances on binary 2-D and 3-D masks: Hausdorff, HD95 (medpy and MONAI modes), ASD, ASSD.

Definitions (``A`` = prediction, ``B`` = reference, both boolean arrays of the same shape):

* **surface** of a mask ``M``: ``M XOR binary_erosion(M, structure)`` with
  ``structure = generate_binary_structure(ndim, connectivity)`` (``connectivity=1`` by default: the 4-/6-neighbour
  cross). Voxels outside the array count as background, so a mask touching the image border has its border voxels
  on its surface. This is exactly medpy's ``__surface_distances`` and MONAI's ``get_mask_edges`` without
  sub-voxel areas (MONAI uses the same erosion/XOR rule; its default structure is also the cross).
* **directed distances** ``d(A->B)``: for every surface voxel of ``A``, the Euclidean distance (in physical units,
  ``spacing`` per axis) to the nearest surface voxel of ``B``, computed with
  ``scipy.ndimage.distance_transform_edt(~surface(B), sampling=spacing)``.
* ``hd``   = ``max(max d(A->B), max d(B->A))`` (classic Hausdorff distance).
* ``hd95`` mode ``"medpy"`` = ``percentile(concat(d(A->B), d(B->A)), 95)`` -- medpy's ``hd95``: the 95th percentile
  of the *pooled* distances of both directions.
* ``hd95`` mode ``"monai"`` = ``max(percentile(d(A->B), 95), percentile(d(B->A), 95))`` -- MONAI's
  ``compute_hausdorff_distance(percentile=95, directed=False)``: the larger of the two *directed* 95th percentiles.
  Both modes use numpy's default linear interpolation (same as ``torch.quantile``). The MONAI value is always
  ``>=`` the medpy value.
* ``asd``  = ``mean d(A->B)`` -- medpy's ``asd(result, reference)``; directed, prediction to reference.
* ``nsd(tau)`` = ``(#{d(A->B) <= tau} + #{d(B->A) <= tau}) / (|surface(A)| + |surface(B)|)`` -- the normalised
  surface Dice at tolerance ``tau`` (in the units of ``spacing``, i.e. mm when the header's spacing is given):
  MONAI's ``compute_surface_dice(use_subvoxels=False)`` (same surfaces, same Euclidean distance transform,
  ``<=`` comparison). U-Mamba's DeepMind port weights every surface element by its area instead (MONAI's
  ``use_subvoxels=True``); that variant is not implemented here.
* ``assd`` = ``mean(concat(d(A->B), d(B->A)))`` -- the mean of the pooled distances of both directions, as medpy
  >= 0.5 ``assd`` and MONAI ``SurfaceDistanceMetric(symmetric=True)``. (medpy <= 0.4 averaged the two directed
  means instead; the values differ when the two surfaces have different voxel counts.)

Speed: all work happens on the bounding box of ``A | B``. This is exact, not an approximation: voxels outside the
box are background in both masks, so cropping changes neither the eroded surfaces (the erosion treats the outside
as background too) nor Euclidean distances between voxels inside the box. Two erosions and two distance transforms
per pair, no Python loops over voxels.

All functions work on masks of any number of axes (2-D images and 3-D volumes share this code).

Empty masks: these functions need both masks non-empty and raise :class:`EmptyMaskError` otherwise (medpy raises
``RuntimeError``). What a *metric* reports for empty cases is decided by an empty-mask policy, see
:mod:`mambaseg.metrics.policy`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

__all__ = [
    "EmptyMaskError",
    "DirectedDistances",
    "surface_distances",
    "hausdorff_distance",
    "hd95",
    "average_surface_distance",
    "surface_distance_metrics",
    "normalized_surface_dice",
    "HD95_MODES",
]

HD95_MODES = ("medpy", "monai")

SpacingLike = Optional[Union[float, Sequence[float]]]


class EmptyMaskError(ValueError):
    """Raised when a surface distance is requested for an empty mask (the distance is undefined)."""


def _to_bool_mask(x, name: str) -> np.ndarray:
    """Convert a 0/1 or bool array/tensor to a numpy bool array; reject anything else."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    x = np.asarray(x)
    if x.dtype == np.bool_:
        return x
    if x.size and (x.dtype.kind not in "biuf"):
        raise ValueError(f"{name} must be a binary mask (bool or 0/1 numbers), got dtype {x.dtype}.")
    if x.size:
        bad = (x != 0) & (x != 1)
        if bad.any():
            vals = np.unique(x[bad])[:5].tolist()
            raise ValueError(
                f"{name} must be a binary mask with values in {{0, 1}}, found {vals}; threshold probabilities "
                f"(p >= 0.5) or compare label maps with a class index (labels == c) first."
            )
    return x.astype(bool)


def _check_spacing(spacing: SpacingLike, ndim: int) -> Tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        sp = (float(spacing),) * ndim
    else:
        sp = tuple(float(s) for s in np.asarray(spacing, dtype=float).ravel())
        if len(sp) != ndim:
            raise ValueError(
                f"spacing must have one value per spatial axis: got {len(sp)} values {list(sp)} for "
                f"{ndim}-D masks."
            )
    if not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing values must be finite and > 0, got {list(sp)}.")
    return sp


def _check_pair(pred, ref) -> Tuple[np.ndarray, np.ndarray]:
    a = _to_bool_mask(pred, "pred")
    b = _to_bool_mask(ref, "reference")
    if a.shape != b.shape:
        raise ValueError(f"pred and reference should have the same shape, got {a.shape} and {b.shape}.")
    if a.ndim < 1:
        raise ValueError("masks must have at least one dimension.")
    return a, b


def _bbox_crop(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union (exact for the surface distances, see module doc)."""
    union = a | b
    slices = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        nz = np.flatnonzero(union.any(axis=other)) if other else np.flatnonzero(union)
        slices.append(slice(int(nz[0]), int(nz[-1]) + 1))
    sl = tuple(slices)
    return a[sl], b[sl]


@dataclass
class DirectedDistances:
    """Distances from each surface voxel of one mask to the other mask's surface.

    Attributes:
        pred_to_ref: 1-D float64 array, one entry per surface voxel of the prediction.
        ref_to_pred: 1-D float64 array, one entry per surface voxel of the reference.
    """

    pred_to_ref: np.ndarray
    ref_to_pred: np.ndarray

    def hd(self) -> float:
        return float(max(self.pred_to_ref.max(), self.ref_to_pred.max()))

    def hd95(self, mode: str = "medpy", percentile: float = 95.0) -> float:
        if mode == "medpy":
            return float(np.percentile(np.concatenate([self.pred_to_ref, self.ref_to_pred]), percentile))
        if mode == "monai":
            return float(
                max(np.percentile(self.pred_to_ref, percentile), np.percentile(self.ref_to_pred, percentile))
            )
        raise ValueError(f"hd95 mode must be one of {HD95_MODES}, got {mode!r}.")

    def asd(self) -> float:
        return float(self.pred_to_ref.mean())

    def assd(self) -> float:
        return float(np.concatenate([self.pred_to_ref, self.ref_to_pred]).mean())

    def nsd(self, tolerance: float) -> float:
        """Normalised surface Dice: the fraction of surface voxels of both masks within ``tolerance``."""
        tol = _check_tolerance(tolerance)
        n = self.pred_to_ref.size + self.ref_to_pred.size
        within = int((self.pred_to_ref <= tol).sum()) + int((self.ref_to_pred <= tol).sum())
        return float(within / n)


def _check_tolerance(tolerance) -> float:
    try:
        tol = float(tolerance)
    except (TypeError, ValueError):
        raise ValueError(f"NSD tolerance must be a number (mm, or voxels without spacing), got {tolerance!r}.") \
            from None
    if not np.isfinite(tol) or tol < 0:
        raise ValueError(f"NSD tolerance must be finite and >= 0, got {tolerance!r}.")
    return tol


def _surface(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    return mask ^ ndimage.binary_erosion(mask, structure=structure, iterations=1, border_value=0)


def surface_distances(pred, reference, spacing: SpacingLike = None, connectivity: int = 1) -> DirectedDistances:
    """Directed surface distances between two binary masks (2-D or 3-D, any ndim >= 1).

    Args:
        pred: binary prediction mask (bool or 0/1), numpy array or torch tensor.
        reference: binary reference mask of the same shape.
        spacing: voxel spacing, one value per axis (or a scalar); ``None`` means 1 (pixel units, as the
            upstream VM-UNet/TransUNet/Mamba-UNet evaluations).
        connectivity: connectivity of the erosion structure (1 = cross, ``ndim`` = full box), as medpy.

    Returns:
        :class:`DirectedDistances`.

    Raises:
        EmptyMaskError: if either mask is empty.
        ValueError: shape mismatch, non-binary values, bad spacing.
    """
    a, b = _check_pair(pred, reference)
    sp = _check_spacing(spacing, a.ndim)
    if not 1 <= int(connectivity) <= a.ndim:
        raise ValueError(f"connectivity must be in [1, {a.ndim}] for {a.ndim}-D masks, got {connectivity}.")
    a_empty, b_empty = not a.any(), not b.any()
    if a_empty or b_empty:
        which = "both masks are" if (a_empty and b_empty) else ("pred is" if a_empty else "reference is")
        raise EmptyMaskError(
            f"surface distance undefined: {which} empty; use an empty_policy (see mambaseg.metrics.policy)."
        )
    a, b = _bbox_crop(a, b)
    structure = ndimage.generate_binary_structure(a.ndim, int(connectivity))
    sa = _surface(a, structure)
    sb = _surface(b, structure)
    # distance of every voxel to the nearest surface voxel of the other mask
    dt_b = ndimage.distance_transform_edt(~sb, sampling=sp)
    dt_a = ndimage.distance_transform_edt(~sa, sampling=sp)
    return DirectedDistances(pred_to_ref=np.asarray(dt_b[sa], dtype=np.float64),
                             ref_to_pred=np.asarray(dt_a[sb], dtype=np.float64))


def surface_distance_metrics(pred, reference, spacing: SpacingLike = None, connectivity: int = 1) -> dict:
    """All surface metrics of one pair at once: ``hd``, ``hd95_medpy``, ``hd95_monai``, ``asd``, ``assd``.

    Raises :class:`EmptyMaskError` if either mask is empty.
    """
    d = surface_distances(pred, reference, spacing=spacing, connectivity=connectivity)
    return {
        "hd": d.hd(),
        "hd95_medpy": d.hd95("medpy"),
        "hd95_monai": d.hd95("monai"),
        "asd": d.asd(),
        "assd": d.assd(),
    }


def hausdorff_distance(pred, reference, spacing: SpacingLike = None, connectivity: int = 1) -> float:
    """Symmetric (maximum) Hausdorff distance. Raises :class:`EmptyMaskError` on an empty mask."""
    return surface_distances(pred, reference, spacing, connectivity).hd()


def hd95(pred, reference, spacing: SpacingLike = None, mode: str = "medpy", connectivity: int = 1) -> float:
    """95th-percentile Hausdorff distance; ``mode="medpy"`` (pooled) or ``"monai"`` (max of directed).

    Raises :class:`EmptyMaskError` on an empty mask.
    """
    if mode not in HD95_MODES:
        raise ValueError(f"hd95 mode must be one of {HD95_MODES}, got {mode!r}.")
    return surface_distances(pred, reference, spacing, connectivity).hd95(mode)


def average_surface_distance(pred, reference, spacing: SpacingLike = None, symmetric: bool = False,
                             connectivity: int = 1) -> float:
    """ASD (``symmetric=False``: medpy ``asd``, prediction -> reference) or ASSD (``symmetric=True``).

    Raises :class:`EmptyMaskError` on an empty mask.
    """
    d = surface_distances(pred, reference, spacing, connectivity)
    return d.assd() if symmetric else d.asd()


def normalized_surface_dice(pred, reference, tolerance: float, spacing: SpacingLike = None,
                            connectivity: int = 1) -> float:
    """Normalised surface Dice (NSD) at ``tolerance`` (units of ``spacing``: mm with the header's spacing).

    Equal to MONAI's ``compute_surface_dice(..., class_thresholds=[tolerance], spacing=spacing)`` for one class.
    Raises :class:`EmptyMaskError` on an empty mask (MONAI: nan when both are empty, 0 when one is; an empty-mask
    policy decides, see :mod:`mambaseg.metrics.policy`).
    """
    tol = _check_tolerance(tolerance)
    return surface_distances(pred, reference, spacing, connectivity).nsd(tol)
