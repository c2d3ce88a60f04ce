"""Data layer of mambaseg: readers for every layout of the papers, NIfTI / nnU-Net, synthetic sets, splits,
joint transforms.

Quick start::

    from mambaseg.data import build_dataset, list_datasets
    from mambaseg.data.transforms import preset_transforms

    train = build_dataset("synthetic-skin", split="train", num_samples=256, size=128, seed=0,
                          transform=preset_transforms("default", 128, train=True))
    sample = train[0]   # {"image": FloatTensor (3, 128, 128), "mask": LongTensor (128, 128), "meta": {...}}

    isic = build_dataset("isic", "data/isic2017", split="test",
                         transform=preset_transforms("vmunet_isic", 256, train=False))
    kvasir = build_dataset("polyp", "data/polyp", split="test/Kvasir")
    acdc_val_volumes = build_dataset("acdc", "data/ACDC", split="val").volumes()

Contracts: see :mod:`mambaseg.data.base` (sample dicts, transform signature, volume dicts). Errors:
:class:`DataError` (a ``ValueError``) for malformed data, :class:`MissingDataError` (also a
``FileNotFoundError``) for missing folders/files; both name the file and the expected layout.
"""

from .base import (ConcatSegDataset, DataError, MissingDataError, SegDataset, VolumeDataset, VolumeSliceDataset,
                   collate_samples, volume_slices)
from .check import check_dataset
from .registry import build_dataset, build_volume_dataset, list_datasets, register_dataset
from .volumetric import VolumetricDataset

__all__ = [
    "build_dataset", "build_volume_dataset", "list_datasets", "register_dataset",
    "SegDataset", "VolumeDataset", "VolumeSliceDataset", "ConcatSegDataset", "DataError", "MissingDataError",
    "collate_samples", "volume_slices", "check_dataset", "VolumetricDataset",
]
