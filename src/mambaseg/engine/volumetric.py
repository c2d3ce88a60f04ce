"""What the engine needs to run a 3-D network on volumes, shared by validation, test and ``predict``.

The engine is one code path parameterised by the number of spatial axes: :func:`spatial_dims_of` reads it from
the model's contract attribute ``spatial_dims`` (2 when absent). A 2-D network on volumes keeps the slice-wise
inference of :mod:`mambaseg.engine.inference`; a 3-D network trains on patches and is evaluated on whole
(preprocessed) volumes with :func:`mambaseg.engine.sliding_window.sliding_window_logits`, whose settings are held by
:class:`SlidingWindowSettings` (recorded with every number, spec §9).

Outputs and decoding (:func:`output_layout`):

* ``regions`` given (BraTS WT/TC/ET): one sigmoid output per region, region Dice + BCE loss, labels by nnU-Net's
  ``regions_class_order``; metrics per region.
* two classes (binary) without regions: one sigmoid output, decoded as the single region ``[1]`` (``p > 0.5``).
* otherwise: ``num_classes`` softmax outputs, argmax.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .errors import MambasegUserError
from .sliding_window import SLIDING_WINDOW_MODES, logits_to_segmentation, sliding_window_logits

__all__ = ["labels_on_original_grid", "probabilities_to_labels", "SlidingWindowSettings", "spatial_dims_of",
           "output_layout", "patch_size_of", "check_patch_size", "default_loss", "infer_volume", "volumetric_info"]


def spatial_dims_of(net: Any) -> int:
    """The model's number of spatial axes (contract attribute ``spatial_dims``; 2 when absent)."""
    nd = int(getattr(net, "spatial_dims", 2) or 2)
    if nd not in (2, 3):
        raise MambasegUserError(f"model spatial_dims must be 2 or 3, got {nd}.")
    return nd


def output_layout(num_classes: int,
                  regions: Optional[Sequence[Sequence[int]]]) -> Tuple[int, Optional[List[List[int]]]]:
    """``(output channels, regions used to decode sigmoid outputs or None for softmax)``."""
    if regions:
        regs = [[int(v) for v in r] for r in regions]
        bad = [r for r in regs if not r or min(r) < 1 or max(r) >= int(num_classes)]
        if bad:
            raise MambasegUserError(f"regions {regions!r} must list foreground class indices 1..{num_classes - 1}; "
                                    f"fix the data set's regions or model.regions.")
        return len(regs), regs
    if int(num_classes) == 2:
        return 1, [[1]]
    return int(num_classes), None


def default_loss(spatial_dims: int, num_classes: int, regions) -> str:
    """The loss a config gets when it names none: 2-D keeps today's (``bce_dice``/``ce_dice``); 3-D gets
    nnU-Net's (region DC+BCE for regions and binary, DC+CE otherwise)."""
    if spatial_dims == 2:
        return "bce_dice" if int(num_classes) == 2 else "ce_dice"
    return "nnunet_region_dc_bce" if (regions or int(num_classes) == 2) else "nnunet_dc_ce"


def patch_size_of(image_size: Union[int, Sequence[int]], spatial_dims: int) -> Tuple[int, ...]:
    """``image_size`` (one int for every axis, or one per axis) as a tuple of ``spatial_dims`` ints."""
    if isinstance(image_size, (list, tuple)):
        vals = tuple(image_size)
        if len(vals) != spatial_dims:
            raise MambasegUserError(f"image size {list(vals)} has {len(vals)} values for a {spatial_dims}-D model; "
                                    f"give one per spatial axis (e.g. --data.image_size "
                                    f"'{[128] * spatial_dims}').")
    else:
        vals = (image_size,) * spatial_dims
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise MambasegUserError(f"image size {image_size!r} is not a positive integer per axis; use e.g. "
                                    f"--data.image_size '{[64] * spatial_dims}'.")
    return tuple(int(v) for v in vals)


def check_patch_size(patch: Sequence[int], divisor, model: str = "the model") -> None:
    """Every patch side must be a multiple of the network's downsample factor (an int or one per axis)."""
    if not divisor:
        return
    divs = tuple(divisor) if isinstance(divisor, (list, tuple)) else (int(divisor),) * len(patch)
    if len(divs) != len(patch):
        return
    bad = [(p, d) for p, d in zip(patch, divs) if d and p % d]
    if bad:
        near = [max(d, round(p / d) * d) if d else p for p, d in zip(patch, divs)]
        raise MambasegUserError(f"patch size {list(patch)} does not fit {model}: each side must be a multiple of "
                                f"{list(divs)} (its downsampling per axis); nearest valid: --data.image_size "
                                f"'{near}'.")


@dataclass
class SlidingWindowSettings:
    """Sliding-window inference settings (module :mod:`mambaseg.engine.sliding_window`)."""

    patch_size: Tuple[int, ...]
    overlap: float = 0.5
    mode: str = "nnunet"
    gaussian: bool = True
    sigma_scale: float = 0.125
    mirror: bool = False
    batch_size: int = 1

    def __post_init__(self):
        if self.mode not in SLIDING_WINDOW_MODES:
            raise MambasegUserError(f"unknown sliding-window mode {self.mode!r}; choose one of "
                                    f"{', '.join(SLIDING_WINDOW_MODES)}.")
        if not 0.0 <= float(self.overlap) < 1.0:
            raise MambasegUserError(f"sliding-window overlap must lie in [0, 1), got {self.overlap}.")
        if int(self.batch_size) < 1:
            raise MambasegUserError(f"sliding-window batch size must be >= 1, got {self.batch_size}.")
        self.patch_size = tuple(int(p) for p in self.patch_size)

    def record(self) -> Dict[str, Any]:
        """What is written next to every number (spec §9)."""
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        d["blending"] = (f"gaussian sigma={self.sigma_scale}*patch ({self.mode})" if self.gaussian else "constant")
        d["mirror_axes"] = list(range(len(self.patch_size))) if self.mirror else []
        return d


def infer_volume(net, image: torch.Tensor, settings: SlidingWindowSettings,
                 regions: Optional[Sequence[Sequence[int]]], progress: bool = False,
                 desc: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(logits (K, *spatial) float32 CPU, labels (*spatial) int64)`` of one ``(C, *spatial)`` case."""
    nd = len(settings.patch_size)
    logits = sliding_window_logits(net, image, settings.patch_size, overlap=settings.overlap, mode=settings.mode,
                                   gaussian=settings.gaussian, sigma_scale=settings.sigma_scale,
                                   mirror_axes=tuple(range(nd)) if settings.mirror else None,
                                   batch_size=settings.batch_size, progress=progress, desc=desc)
    return logits, logits_to_segmentation(logits, regions)


def volumetric_info(dataset) -> Optional[Dict[str, Any]]:
    """What ``predict`` needs to preprocess new volumes exactly as the training volumes and to write labels in the
    data set's own values (stored in the checkpoint under ``"volumetric"``): the preprocessing plan, the raw label
    values (class index -> value, e.g. BraTS 3 -> 4), channel names and regions. ``None`` for 2-D data.

    A data set with a ``plan`` (``mambaseg.data.volumetric.VolumetricDataset``) gives its plan; a generated set
    without one (``synthetic-brats``: already z-scored inside the non-zero region at its own spacing) gets the
    equivalent plan: its spacing, per-image z-score inside the non-zero mask."""
    base = getattr(dataset, "dataset", dataset)
    if int(getattr(base, "spatial_dims", 2) or 2) != 3:
        return None
    n_ch = int(getattr(base, "in_channels", 1))
    plan = getattr(base, "plan", None)
    if plan is not None and hasattr(plan, "to_dict"):
        plan_d = plan.to_dict()
    else:
        spacing = [float(s) for s in getattr(base, "spacing", (1.0, 1.0, 1.0))]
        plan_d = {"target_spacing": spacing, "normalization": ["zscore"] * n_ch, "use_mask_for_norm": [True] * n_ch,
                  "intensity_properties": [None] * n_ch}
    nc = int(getattr(base, "num_classes", 2))
    return {"plan": plan_d,
            "label_values": [int(v) for v in (getattr(base, "label_values", None) or range(nc))],
            "channel_names": [str(c) for c in
                              (getattr(base, "channel_names", None) or [f"ch{i}" for i in range(n_ch)])],
            "regions": getattr(base, "regions", None), "region_names": getattr(base, "region_names", None)}


def probabilities_to_labels(probs, regions: Optional[Sequence[Sequence[int]]]):
    """``(K, ...)`` numpy probabilities -> int64 class indices: argmax, or for regions (sigmoid outputs) zeros then,
    in order, ``p > 0.5`` gets the region's class (nnU-Net's ``regions_class_order``)."""
    import numpy as np
    if regions is None:
        return np.argmax(probs, axis=0).astype(np.int64)
    from .sliding_window import regions_class_order
    out = np.zeros(probs.shape[1:], np.int64)
    for i, lab in enumerate(regions_class_order(regions)):
        out[probs[i] > 0.5] = lab
    return out


def labels_on_original_grid(logits: torch.Tensor, meta: Dict[str, Any],
                            regions: Optional[Sequence[Sequence[int]]]) -> torch.Tensor:
    """Logits on the preprocessed grid -> int64 labels on the case's original grid, as nnU-Net exports: softmax (or
    sigmoid per region), probabilities resampled to the cropped original shape (order 1), pasted into the
    original shape, then argmax / regions. ``meta``: the contract sample's meta (crop_bbox, shape_after_crop,
    original_shape, original_spacing, spacing)."""
    from mambaseg.data.preprocess import invert_probabilities
    props = {"original_shape": tuple(meta["original_shape"]), "crop_bbox": meta["crop_bbox"],
             "shape_after_crop": tuple(meta["shape_after_crop"]), "original_spacing": tuple(meta["original_spacing"]),
             "spacing": tuple(meta["spacing"]), "anisotropy_threshold": meta.get("anisotropy_threshold", 3.0)}
    probs = (torch.sigmoid(logits) if regions is not None else torch.softmax(logits, 0)).float().numpy()
    probs = invert_probabilities(probs, props, regions=regions is not None)
    return torch.from_numpy(probabilities_to_labels(probs, regions))
