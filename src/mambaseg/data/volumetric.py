"""The 3D data set: whole preprocessed volumes of a volumetric layout (:mod:`mambaseg.data.volumes`) as contract
samples (VOLUME_CONTRACT.md), with the metadata to invert the preprocessing (:mod:`mambaseg.data.preprocess`).

    ds = VolumetricDataset("data/BraTS2020", split="train", cache_dir="runs/cache")
    s = ds[0]   # {"image": (4, I, J, K) float32, "mask": (I, J, K) int64, "meta": {...}}
    label_on_original_grid = ds.invert_label(prediction, s["meta"])

Patch sampling and augmentation wrap this data set (helper vol_aug); a 2D network on the same layouts gets
slices (:func:`volume_slices_dataset`), as today.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import DataError, VolumeSliceDataset, VolumeSource, _LRU
from .preprocess import (PreprocessCache, PreprocessPlan, invert_label, invert_probabilities, plan_preprocessing,
                         preprocess_case)
from .volumes import VolumeCase, VolumeSet, load_case, read_volume_set, select_cases

__all__ = ["VolumetricDataset", "volume_slices_dataset"]


class VolumetricDataset(Dataset):
    """Whole volumes of one split, preprocessed as nnU-Net does (or raw with ``preprocess=False``).

    Args:
        root: data folder in any layout of :mod:`mambaseg.data.volumes` (ignored when ``volume_set`` is given).
        split: ``"train"``, ``"val"``, ``"all"`` or ``"test"`` (:func:`~mambaseg.data.volumes.select_cases`).
        volume_set: an already read :class:`~mambaseg.data.volumes.VolumeSet`.
        fold, splits_file, ratios, seed: how train/val/test are chosen.
        channels, label, labels, normalization: reader options (per-case folders; label values; scheme override).
        regions: ``{name: [raw label values]}`` the data set declares (outer -> inner), replacing the layout's own:
            per-case BraTS folders read with ``channels=`` then score (or train) WT / TC / ET.
        target_spacing: (i, j, k) mm; None = nnU-Net's rule on the training cases.
        use_mask_for_norm: None = nnU-Net's rule; a bool or one per channel.
        label_order: 1 (one-hot linear, nnU-Net) or 0 (nearest) for resampling labels.
        plan: a :class:`PreprocessPlan` (or its dict) to use instead of planning from the training cases (a saved
            run predicting new cases).
        cache_dir: folder of the on-disk cache (plan + preprocessed cases); None keeps nothing on disk.
        preprocess: False returns the raw volumes (no crop, normalisation, resampling).
        outside_label: what the -1 voxels (outside the nonzero crop) become in the sample's mask (0; a patch
            sampler that wants them ignored passes -1).
        transform: ``sample -> sample`` callable applied last (dictionary transform).
        patch_size: the training patch size (i, j, k), read by the data check ("patch larger than every volume").
        memory_cache: number of preprocessed cases kept in memory.
    """

    spatial_dims = 3
    is_volumetric = True

    def __init__(self, root=None, split: str = "train", *, volume_set: Optional[VolumeSet] = None, fold: int = 0,
                 splits_file=None, ratios: Optional[Sequence[float]] = None, seed: int = 0,
                 channels: Optional[Sequence[str]] = None, label: Optional[str] = None, labels=None,
                 normalization=None, regions=None, target_spacing: Optional[Sequence[float]] = None,
                 use_mask_for_norm=None,
                 label_order: int = 1, plan: Union[None, PreprocessPlan, dict] = None, cache_dir=None,
                 preprocess: bool = True, outside_label: int = 0, transform: Optional[Callable] = None,
                 patch_size: Optional[Sequence[int]] = None, memory_cache: int = 0):
        self.volume_set = volume_set if volume_set is not None else read_volume_set(
            root, channels=channels, label=label, labels=labels, normalization=normalization, regions=regions)
        vs = self.volume_set
        self.split = split
        self.cases: List[VolumeCase] = select_cases(vs, split, fold, splits_file, ratios, seed)
        self.num_classes = vs.num_classes
        self.in_channels = vs.in_channels
        self.class_names = list(vs.class_names)
        self.channel_names = list(vs.channel_names)
        self.regions = vs.regions
        self.region_names = vs.region_names
        self.regions_class_order = vs.regions_class_order
        self.label_values = list(vs.label_values)
        self.preprocess = preprocess
        self.outside_label = int(outside_label)
        self.transform = transform
        self.patch_size = tuple(int(p) for p in patch_size) if patch_size is not None else None
        self._settings = {"normalization": list(vs.normalization), "target_spacing": target_spacing,
                          "use_mask_for_norm": use_mask_for_norm, "label_order": int(label_order),
                          "label_values": self.label_values, "layout": vs.layout}
        self._plan = PreprocessPlan.from_dict(plan) if isinstance(plan, dict) else plan
        if self._plan is not None:
            self._settings["plan"] = self._plan.to_dict()
        train_files = [f for c in vs.train for f in c.files]
        self.cache = PreprocessCache(cache_dir, train_files, self._settings) if cache_dir is not None else None
        self._memory = _LRU(memory_cache)

    # ------------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.cases)

    def case_ids(self) -> List[str]:
        return [c.case_id for c in self.cases]

    @property
    def plan(self) -> PreprocessPlan:
        """The preprocessing plan (computed from the labelled training cases once; cached on disk)."""
        if self._plan is None:
            self._plan = self.cache.plan(self._make_plan) if self.cache is not None else self._make_plan()
        return self._plan

    def _make_plan(self) -> PreprocessPlan:
        vs, st = self.volume_set, self._settings
        cases = vs.train or self.cases
        if not cases:
            raise DataError(f"{vs.root}: no case to plan the preprocessing from")

        def gen():
            for c in cases:
                image, label, meta = load_case(c, vs)
                if label is None:
                    label = np.zeros(image.shape[1:], np.int64)
                yield image, label, meta["spacing"]

        return plan_preprocessing(gen(), st["normalization"], st["target_spacing"], st["use_mask_for_norm"],
                                  st["label_order"], n_cases=len(cases))

    def raw_case(self, index: int):
        """The case as stored: ``(image (C, I, J, K), label (I, J, K) class indices or None, meta)``."""
        return load_case(self.cases[index], self.volume_set)

    def _preprocessed(self, index: int):
        case = self.cases[index]
        image, label, meta = load_case(case, self.volume_set)
        if not self.preprocess:
            shape = tuple(int(s) for s in image.shape[1:])
            props = {"original_shape": shape, "crop_bbox": [[0, s] for s in shape], "shape_after_crop": shape,
                     "original_spacing": meta["spacing"], "spacing": meta["spacing"], "preprocessed_shape": shape}
            return image, (label if label is not None else np.zeros(shape, np.int64)), props, meta
        img, lab, props = preprocess_case(image, label, meta["spacing"], self.plan)
        return img, lab, props, meta

    def load(self, index: int, mmap: bool = False):
        """``(image float32 (C, ...), label (...) with -1 outside the crop, meta)`` of case ``index``. With ``mmap``
        and a cache folder, image and label are read-only memory maps of the cached arrays (a patch sampler reads
        only its patch; the label is then int8 or int32 as stored)."""
        if mmap and self.cache is not None and self.preprocess:
            return self._load(index, True)
        return self._memory.get(index, lambda: self._load(index, False))

    def _load(self, index: int, mmap: bool):
        case = self.cases[index]
        if self.cache is not None and self.preprocess:
            meta_box: Dict[str, Any] = {}

            def compute():
                img, lab, props, meta = self._preprocessed(index)
                meta_box["meta"] = meta
                return img, lab, props

            img, lab, props = self.cache.case(case.case_id, case.files, compute, mmap=mmap)
            meta = meta_box.get("meta")
            if not mmap:
                lab = np.asarray(lab, np.int64)
        else:
            img, lab, props, meta = self._preprocessed(index)
        return img, lab, self._meta(case, props, meta)

    def _meta(self, case: VolumeCase, props: dict, meta: Optional[dict]) -> dict:
        if meta is None:  # from the cache: the geometry from the header only
            from .nifti import nifti_header
            h = nifti_header(case.images[0])
            affine = np.asarray(h.affine).tolist()
        else:
            affine = meta["affine"]
        return {"case_id": case.case_id, "spacing": tuple(float(s) for s in props["spacing"]),
                "original_spacing": tuple(float(s) for s in props["original_spacing"]), "affine": affine,
                "original_shape": tuple(int(s) for s in props["original_shape"]),
                "crop_bbox": [[int(lo), int(hi)] for lo, hi in props["crop_bbox"]],
                "shape_after_crop": tuple(int(s) for s in props["shape_after_crop"]),
                "preprocessed_shape": tuple(int(s) for s in props["preprocessed_shape"]),
                "source_files": [str(f) for f in case.files], "reference_file": str(case.images[0]),
                "has_label": case.label is not None,
                "anisotropy_threshold": float(props.get("anisotropy_threshold", 3.0))}

    def __getitem__(self, index) -> Dict[str, Any]:
        n = len(self)
        i = int(index) + (n if int(index) < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {n} volumes")
        img, lab, meta = self.load(i)
        lab = np.asarray(lab, np.int64)
        mask = np.where(lab < 0, self.outside_label, lab) if self.outside_label != -1 else lab
        sample = {"image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
                  "mask": torch.from_numpy(np.ascontiguousarray(mask.astype(np.int64))), "meta": dict(meta)}
        return self.transform(sample) if self.transform is not None else sample

    # ------------------------------------------------------------------------------------------------------
    def invert_label(self, label, meta: dict, order: int = 1) -> np.ndarray:
        """A label map (I, J, K) on the preprocessed grid -> the case's original grid (``meta`` of its sample)."""
        lab = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
        return invert_label(lab, _props(meta), order)

    def invert_probabilities(self, probs, meta: dict) -> np.ndarray:
        """Per-class (or per-region) probabilities (K, I, J, K) -> the original grid."""
        p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
        return invert_probabilities(p, _props(meta), regions=self.regions is not None)

    def volumes(self) -> "VolumetricDataset":
        return self


def _props(meta: dict) -> dict:
    return {"original_shape": meta["original_shape"], "crop_bbox": meta["crop_bbox"],
            "shape_after_crop": meta["shape_after_crop"], "original_spacing": meta["original_spacing"],
            "spacing": meta["spacing"], "anisotropy_threshold": meta.get("anisotropy_threshold", 3.0)}


# ----------------------------------------------------------------------------------------------------------------
def _slice_load(case: VolumeCase, vs: VolumeSet):
    image, label, meta = load_case(case, vs)
    if label is None:
        label = np.zeros(image.shape[1:], np.int64)
    sp = meta["spacing"]
    # the 2D path slices along the last voxel axis k, arrays (C, k, j, i) as mambaseg.data.nifti does
    return (np.ascontiguousarray(image.transpose(0, 3, 2, 1)), np.ascontiguousarray(label.transpose(2, 1, 0)),
            (sp[2], sp[1], sp[0]), True)


def volume_slices_dataset(root=None, split: str = "train", transform=None, *, volume_set: Optional[VolumeSet] = None,
                          fold: int = 0, splits_file=None, ratios=None, seed: int = 0, channels=None, label=None,
                          labels=None, normalization=None, cache_size: int = 4) -> VolumeSliceDataset:
    """A 2D network on a volumetric layout: the raw volumes sliced along k (today's slice-wise behaviour)."""
    from functools import partial

    from .nifti import nifti_header
    vs = volume_set if volume_set is not None else read_volume_set(root, channels=channels, label=label,
                                                                  labels=labels, normalization=normalization)
    cases = select_cases(vs, split, fold, splits_file, ratios, seed)
    sources = [VolumeSource(c.case_id, nifti_header(c.images[0]).shape[2], partial(_slice_load, c, vs))
               for c in cases]
    return VolumeSliceDataset(sources, vs.num_classes, vs.in_channels, transform, cache_size, list(vs.class_names))
