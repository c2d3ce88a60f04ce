"""Training patches from whole volumes (or whole 2D images) with nnU-Net's foreground oversampling.

:class:`PatchDataset` wraps any data set of whole cases that returns contract samples (``{"image": (C, *S),
"mask": (*S), "meta": {...}}``, 3D or 2D) and returns one training patch of ``patch_size`` per index:

1. the case is drawn uniformly at random;
2. the patch origin follows nnU-Net v2 (``nnUNetDataLoader.get_bbox``, spec ``volumetric_pipeline.md`` §5): with
   ``pad = max(patch - shape, 0)`` per axis the origin may range over ``[-pad // 2, shape + pad // 2 + pad % 2 -
   patch]``; a *forced* sample picks a random foreground class (or region) present in the case, a random voxel of it
   among the precomputed locations (:func:`class_locations`: up to 10,000 per class, at least 1 % of its voxels, seed
   1234), and puts it at the patch centre (origin ``voxel - patch // 2``, clipped to that range, so the voxel is always
   inside the patch); other samples draw the origin uniformly from the range;
3. which samples are forced (``probabilistic_oversampling=False``, nnU-Net's default): in a batch of ``batch_size``,
   position ``j`` is forced iff ``j >= round(batch_size * (1 - oversample_foreground))`` (Python's round), so with
   0.33: 1 of 2, 1 of 3, 1 of 4, 2 of 5 — and **never with batch size 1** (as in nnU-Net); the position of index
   ``i`` is ``(i % samples_per_epoch) % batch_size``, so use a DataLoader with the same ``batch_size``, no shuffling
   (patches are random anyway) and ``drop_last`` or a ``samples_per_epoch`` divisible by the batch size.
   ``probabilistic_oversampling=True`` forces each sample with probability ``oversample_foreground`` instead;
4. the patch is cut from the volume (beyond it: image 0, label -1; a case smaller than the patch is padded and a
   warning says so once), rotated/scaled on the way by the augmentation's spatial draw (:func:`~mambaseg.data.
   transforms3d.extract_patch`), then the rest of the augmentation runs (:class:`~mambaseg.data.transforms3d.
   NnUNetAugmentation`);
5. optionally the image is set to 0 where the label is -1 (``mask_outside_channels``, nnU-Net's ``MaskImageTransform``
   for channels normalised with ``use_mask_for_norm``), then -1 becomes ``outside_label`` (0 as nnU-Net's
   ``RemoveLabelTansform``; ``None`` keeps -1 for a loss that ignores it).

Seeding: the random state of index ``i`` is ``SeedSequence([seed, epoch, i])``: patches do not depend on the number of
workers or which worker makes them, and change with :meth:`PatchDataset.set_epoch` or with the indices of
:meth:`PatchDataset.sampler`, an endless sampler whose every pass yields fresh indices (so epochs differ even with
persistent workers, where ``set_epoch`` on the main process's copy would not reach the workers).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .base import collate_samples
from .transforms3d import NnUNetAugmentation, extract_patch

__all__ = ["PatchDataset", "PatchSampler", "patch_loader", "class_locations", "patch_origin_range",
           "forced_positions"]

LOCATIONS_PER_CLASS = 10_000
MIN_PERCENT_COVERAGE = 0.01
LOCATIONS_SEED = 1234


def class_locations(mask: np.ndarray, classes: Sequence[Union[int, Sequence[int]]],
                    num_samples: int = LOCATIONS_PER_CLASS, min_coverage: float = MIN_PERCENT_COVERAGE,
                    seed: int = LOCATIONS_SEED) -> List[np.ndarray]:
    """nnU-Net's precomputed foreground locations: for each class (an int) or region (a list of ints), ``(k, ndim)``
    voxel indices drawn without replacement, ``k = max(min(num_samples, n), ceil(n * min_coverage))`` of its ``n``
    voxels (empty ``(0, ndim)`` when absent)."""
    rs = np.random.RandomState(seed)
    out = []
    for c in classes:
        sel = np.isin(mask, np.asarray(c).reshape(-1))
        locs = np.argwhere(sel)
        n = len(locs)
        if n == 0:
            out.append(np.zeros((0, mask.ndim), np.int64))
            continue
        k = max(min(num_samples, n), int(np.ceil(n * min_coverage)))
        out.append(locs[rs.choice(n, k, replace=False)] if k < n else locs)
    return out


def patch_origin_range(shape: Sequence[int], patch_size: Sequence[int]):
    """``(lo, hi)`` inclusive bounds of the patch origin per axis (nnU-Net's ``lbs``/``ubs``): a case smaller than the
    patch is centred with the padding split as ``pad // 2`` before and the rest after."""
    shape = np.asarray(shape, np.int64)
    patch = np.asarray(patch_size, np.int64)
    pad = np.maximum(patch - shape, 0)
    lo = -(pad // 2)
    hi = shape + pad // 2 + pad % 2 - patch
    return lo, hi


def forced_positions(batch_size: int, oversample_foreground: float = 0.33) -> List[bool]:
    """Which positions of a batch nnU-Net forces to contain foreground: ``j >= round(B * (1 - p))``."""
    cut = round(batch_size * (1 - oversample_foreground))
    return [j >= cut for j in range(batch_size)]


class PatchSampler(Sampler):
    """Endless-epoch sampler for :class:`PatchDataset`: pass ``e`` (counted per ``iter()``) yields the indices
    ``e * n .. e * n + n - 1``, so every epoch draws fresh patches without ``set_epoch``."""

    def __init__(self, samples_per_epoch: int, start_epoch: int = 0):
        self.n = int(samples_per_epoch)
        self.epoch = int(start_epoch)

    def __iter__(self) -> Iterator[int]:
        start = self.epoch * self.n
        self.epoch += 1
        return iter(range(start, start + self.n))

    def __len__(self) -> int:
        return self.n


class PatchDataset(Dataset):
    """Random training patches of ``patch_size`` from a data set of whole cases (module docstring).

    Args:
        dataset: data set of whole cases returning contract samples (``image (C, *S)`` float32, ``mask (*S)`` int64
            with classes ``0..num_classes-1`` and possibly -1, ``meta`` with ``case_id``). 2D or 3D.
        patch_size: patch shape per spatial axis (``len`` = number of spatial axes), e.g. ``(128, 128, 128)``.
        batch_size: the DataLoader's batch size (decides which positions are forced to foreground).
        oversample_foreground: nnU-Net's ``oversample_foreground_percent`` (0.33).
        samples_per_epoch: ``len(self)``; default ``250 * batch_size`` (nnU-Net: 250 iterations per epoch).
        augmentation: ``"nnunet"`` (default: :class:`NnUNetAugmentation` with nnU-Net's settings for this patch),
            ``None`` (plain crops), an :class:`NnUNetAugmentation`, or any callable ``(sample, rng) -> sample`` run on
            the cut patch.
        regions: classes for the foreground oversampling as lists of labels (default: the data set's ``regions``
            attribute if any, else every class ``1..num_classes-1``).
        outside_label: what label -1 (beyond the volume / outside the non-zero crop) becomes; None keeps -1.
        mask_outside_channels: channels set to 0 where the label is -1 (before ``outside_label`` applies).
        probabilistic_oversampling: force each sample with probability ``oversample_foreground`` instead.
        seed: base seed; ``cache_size``: whole cases kept in memory per worker (LRU; 0 = read every time).
    """

    def __init__(self, dataset, patch_size: Sequence[int], batch_size: int = 2, oversample_foreground: float = 0.33,
                 samples_per_epoch: Optional[int] = None,
                 augmentation: Union[str, None, NnUNetAugmentation, Callable] = "nnunet",
                 regions: Optional[Sequence[Sequence[int]]] = None, outside_label: Optional[int] = 0,
                 mask_outside_channels: Sequence[int] = (), probabilistic_oversampling: bool = False,
                 seed: int = 0, cache_size: int = 0):
        self.dataset = dataset
        self.patch_size = tuple(int(p) for p in patch_size)
        if not self.patch_size or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be positive integers per spatial axis, got {patch_size}")
        self.spatial_dims = len(self.patch_size)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= oversample_foreground <= 1.0:
            raise ValueError(f"oversample_foreground must lie in [0, 1], got {oversample_foreground}")
        if len(dataset) == 0:
            raise ValueError("the data set has no cases to draw patches from")
        self.batch_size = int(batch_size)
        self.oversample_foreground = float(oversample_foreground)
        self.probabilistic_oversampling = bool(probabilistic_oversampling)
        self.samples_per_epoch = int(samples_per_epoch) if samples_per_epoch is not None else 250 * self.batch_size
        if self.samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        if augmentation == "nnunet":
            augmentation = NnUNetAugmentation(self.spatial_dims, self.patch_size)
        elif isinstance(augmentation, str):
            raise ValueError(f"augmentation must be 'nnunet', None, an NnUNetAugmentation or a callable, "
                             f"got {augmentation!r}")
        if isinstance(augmentation, NnUNetAugmentation) and augmentation.spatial_dims != self.spatial_dims:
            raise ValueError(f"the augmentation is {augmentation.spatial_dims}D but patch_size {self.patch_size} is "
                             f"{self.spatial_dims}D")
        self.augmentation = augmentation
        if regions is None:
            regions = getattr(dataset, "regions", None)
        if regions is None:
            nc = getattr(dataset, "num_classes", None)
            self.fg_classes = None if nc is None else [[c] for c in range(1, int(nc))]
        else:
            self.fg_classes = [[int(v) for v in np.asarray(r).reshape(-1)] for r in regions]
        self.outside_label = outside_label
        self.mask_outside_channels = tuple(int(c) for c in mask_outside_channels)
        self.seed = int(seed)
        self.epoch = 0
        self.cache_size = int(cache_size)
        self._cache: "OrderedDict[int, Dict]" = OrderedDict()
        self._locations: Dict[int, List[np.ndarray]] = {}
        self._warned_small = False

    # ------------------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Change the random stream (as ``DistributedSampler.set_epoch``); or use :meth:`sampler`."""
        self.epoch = int(epoch)

    def sampler(self, start_epoch: int = 0) -> PatchSampler:
        """An endless-epoch sampler for the DataLoader (``DataLoader(ds, batch_size=ds.batch_size,
        sampler=ds.sampler(), collate_fn=collate_samples)``)."""
        return PatchSampler(self.samples_per_epoch, start_epoch)

    def is_forced(self, index: int) -> bool:
        """Whether sample ``index`` must be centred on foreground: nnU-Net's batch-position rule, or with
        ``probabilistic_oversampling`` a coin of probability ``oversample_foreground`` from the index's own seed."""
        if self.probabilistic_oversampling:
            coin = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, int(index), 1])).random()
            return bool(coin < self.oversample_foreground)
        j = (int(index) % self.samples_per_epoch) % self.batch_size
        return j >= round(self.batch_size * (1 - self.oversample_foreground))

    def _case(self, k: int) -> Dict:
        if self.cache_size > 0 and k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        sample = self.dataset[k]
        if self.cache_size > 0:
            self._cache[k] = sample
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return sample

    def _fg_classes(self, mask: np.ndarray) -> List[List[int]]:
        if self.fg_classes is not None:
            return self.fg_classes
        return [[int(c)] for c in np.unique(mask) if c > 0]

    def locations(self, k: int, mask: Optional[np.ndarray] = None) -> List[np.ndarray]:
        """Foreground locations of case ``k`` per class/region (:func:`class_locations`; computed once per worker)."""
        if k not in self._locations:
            if mask is None:
                mask = np.asarray(self._case(k)["mask"])
            self._locations[k] = class_locations(mask, self._fg_classes(mask))
        return self._locations[k]

    def __getitem__(self, index: int) -> Dict:
        index = int(index)
        if index < 0:
            raise IndexError(f"negative index {index}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index]))
        k = int(rng.integers(len(self.dataset)))
        case = self._case(k)
        image, mask = case["image"], case["mask"]
        if not torch.is_tensor(image):
            image = torch.as_tensor(np.asarray(image))
        if not torch.is_tensor(mask):
            mask = torch.as_tensor(np.asarray(mask))
        shape = tuple(mask.shape)
        if len(shape) != self.spatial_dims or tuple(image.shape[1:]) != shape:
            raise ValueError(f"case {k} has image {tuple(image.shape)} and mask {shape}; a patch_size of "
                             f"{self.spatial_dims} axes needs image (C, *S) and mask (*S) with {self.spatial_dims} "
                             "spatial axes")
        if not self._warned_small and any(s < p for s, p in zip(shape, self.patch_size)):
            self._warned_small = True
            warnings.warn(f"case {case.get('meta', {}).get('case_id', k)!r} of shape {shape} is smaller than the patch "
                          f"{self.patch_size}: padded (image 0, label -1 -> {self.outside_label}); said once",
                          UserWarning, stacklevel=2)
        lo, hi = patch_origin_range(shape, self.patch_size)
        forced = self.is_forced(index)
        fg_class = -1
        origin = None
        if forced:
            locs = self.locations(k, mask.numpy())
            eligible = [c for c, l in enumerate(locs) if len(l)]
            if eligible:
                fg_class = int(eligible[int(rng.integers(len(eligible)))])
                voxel = locs[fg_class][int(rng.integers(len(locs[fg_class])))]
                origin = np.clip(voxel - np.asarray(self.patch_size) // 2, lo, hi)
        if origin is None:
            origin = np.array([int(rng.integers(a, b + 1)) for a, b in zip(lo, hi)])
        aug = self.augmentation
        matrix = aug.spatial_matrix(rng, self.patch_size) if isinstance(aug, NnUNetAugmentation) else None
        img, msk = extract_patch(image.float(), mask.long(), origin.tolist(), self.patch_size, matrix)
        if isinstance(aug, NnUNetAugmentation):
            img, msk = aug.augment_patch(img, msk, rng, inplace=True)  # img is a fresh copy
        elif aug is not None:
            out = aug({"image": img, "mask": msk}, rng)
            img, msk = out["image"], out["mask"]
        if self.mask_outside_channels:
            outside = msk < 0
            for c in self.mask_outside_channels:
                img[c][outside] = 0
        if self.outside_label is not None:
            msk = torch.where(msk < 0, torch.as_tensor(self.outside_label, dtype=msk.dtype), msk)
        meta = dict(case.get("meta", {}))
        out_meta = {"case_id": meta.get("case_id", str(k)), "case_index": k,
                    "patch_origin": tuple(int(o) for o in origin), "forced_foreground": bool(forced),
                    "foreground_class": fg_class}
        if "spacing" in meta:
            out_meta["spacing"] = tuple(float(s) for s in meta["spacing"])
        return {"image": img.float().contiguous(), "mask": msk.long().contiguous(), "meta": out_meta}

    def __repr__(self):
        return (f"PatchDataset({type(self.dataset).__name__} x{len(self.dataset)}, patch_size={self.patch_size}, "
                f"batch_size={self.batch_size}, oversample_foreground={self.oversample_foreground}, "
                f"samples_per_epoch={self.samples_per_epoch}, augmentation={self.augmentation!r})")


def patch_loader(dataset: PatchDataset, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: Optional[bool] = None, **kwargs) -> DataLoader:
    """The DataLoader a :class:`PatchDataset` is meant for: its ``batch_size``, its endless-epoch
    :meth:`~PatchDataset.sampler` (fresh patches every epoch, also with persistent workers), ``drop_last`` (so batch
    positions, hence the forced-foreground rule, line up), :func:`~mambaseg.data.base.collate_samples` (``meta`` as a
    list of dicts). ``persistent_workers`` defaults to ``num_workers > 0``; other ``kwargs`` go to the DataLoader."""
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    return DataLoader(dataset, batch_size=dataset.batch_size, sampler=dataset.sampler(), drop_last=True,
                      collate_fn=collate_samples, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=persistent_workers, **kwargs)
