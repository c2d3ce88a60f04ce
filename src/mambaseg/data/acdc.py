"""ACDC cardiac MRI as Mamba-UNet / SSL4MIS ship it (4 classes: 0 background, 1 right ventricle, 2 myocardium,
3 left ventricle)::

    root/train_slices.list        # one slice name per line: patient001_frame01_slice_0
    root/val.list, root/test.list # one volume name per line: patient011_frame01
    root/data/slices/<name>.h5    # training slices, datasets "image" (H, W) float, "label" (H, W) uint8
                                  # (copies that keep them directly in root/data/ load too)
    root/data/<name>.h5           # volumes, datasets "image" (D, H, W) float, "label" (D, H, W) uint8

(``root`` is SSL4MIS's ``data/ACDC``.) The lists give the 70/10/20 patient split (1312 training slices,
20 validation and 40 test volumes in the original). Splits:

* ``"train"``: the slices of ``train_slices.list`` (each its own h5 file); ``.volumes()`` gives the training
  volumes ``data/<case>.h5`` those slices come from.
* ``"val"`` / ``"test"``: all slices of the listed volumes (2D), and ``.volumes()`` the whole volumes for
  per-volume 3D evaluation.

The h5 files store no voxel spacing: ``meta["spacing"]`` is ``(1.0, 1.0, 1.0)`` with ``spacing_known=False``
(pixel units, as upstream's medpy metrics) unless the file has a ``spacing`` dataset or attribute (``(z, y, x)``).
Without list files, pass ``split_file`` (JSON ``{"train": [volume names], "val": [...], "test": [...]}``) and
training slices come from the volumes.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from .base import (DataError, MissingDataError, SegDataset, VolumeDataset, VolumeSliceDataset, VolumeSource,
                   require_dir)
from .splits import load_split

__all__ = ["ACDCDataset", "read_h5_volume", "read_h5_pair", "read_list", "ACDC_CLASSES"]

ACDC_CLASSES = ["background", "right_ventricle", "myocardium", "left_ventricle"]
ACDC_LAYOUT = """  root/train_slices.list, root/val.list, root/test.list
  root/data/slices/<case>_slice_<k>.h5   (datasets image, label; 2-D; or directly in root/data/)
  root/data/<case>.h5                    (datasets image, label; 3-D, D x H x W)"""


def read_list(path: Path) -> List[str]:
    if not path.is_file():
        raise MissingDataError(f"list file {path} not found; expected layout:\n{ACDC_LAYOUT}")
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    names = [n[:-3] if n.endswith(".h5") else n for n in names]
    if not names:
        raise DataError(f"list file {path} is empty")
    return names


def _h5_spacing(f, ndim):
    sp = None
    if "spacing" in f:
        sp = tuple(float(v) for v in np.asarray(f["spacing"]).reshape(-1))
    elif "spacing" in f.attrs:
        sp = tuple(float(v) for v in np.asarray(f.attrs["spacing"]).reshape(-1))
    if sp is not None and len(sp) == ndim:
        return sp, True
    return (1.0,) * ndim, False


def read_h5_pair(path: Path, image_key="image", label_key="label"):
    """``(image, label, spacing, spacing_known)`` arrays from an h5 file, with clear errors."""
    import h5py

    if not path.is_file():
        raise MissingDataError(f"file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in (image_key, label_key) if k not in f]
            if missing:
                raise DataError(f"{path} has no dataset(s) {missing} (found {list(f.keys())})")
            image = np.asarray(f[image_key][()], dtype=np.float32)
            label = np.asarray(f[label_key][()])
            spacing, known = _h5_spacing(f, label.ndim)
    except DataError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"cannot read h5 file {path} (corrupt or not HDF5: {e})") from None
    if image.shape != label.shape:
        raise DataError(f"{path}: image shape {image.shape} differs from label shape {label.shape}")
    return image, label, spacing, known


def _check_labels(label: np.ndarray, num_classes: int, source) -> np.ndarray:
    if label.dtype.kind == "f":
        if not np.all(label == np.round(label)):
            raise DataError(f"{source}: label holds non-integer values")
    lab = label.astype(np.int64)
    vals = np.unique(lab)
    bad = vals[(vals < 0) | (vals >= num_classes)]
    if bad.size:
        raise DataError(f"{source}: label values {bad.tolist()} are outside the label set 0..{num_classes - 1} "
                        f"(values found: {vals.tolist()})")
    return lab


def read_h5_volume(path: Path, num_classes: int, image_key="image", label_key="label"):
    """Volume loader for :class:`VolumeSource`: image ``(1, D, H, W)``, label ``(D, H, W)``."""
    image, label, spacing, known = read_h5_pair(path, image_key, label_key)
    if image.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume (D, H, W), got shape {image.shape}")
    return image[None], _check_labels(label, num_classes, path), spacing, known


def _h5_depth(path: Path, key="image") -> int:
    import h5py

    if not path.is_file():
        raise MissingDataError(f"volume file {path} not found (listed in a split); expected layout:\n{ACDC_LAYOUT}")
    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DataError(f"{path} has no dataset {key!r} (found {list(f.keys())})")
            shape = f[key].shape
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"cannot read h5 file {path} (corrupt or not HDF5: {e})") from None
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3-D volume (D, H, W), got shape {shape}")
    return int(shape[0])


def h5_volume_sources(files: List[Path], num_classes: int, image_key="image", label_key="label"):
    return [VolumeSource(_case(p), _h5_depth(p, image_key),
                         partial(read_h5_volume, p, num_classes, image_key, label_key)) for p in files]


def _case(p: Path) -> str:
    n = p.name
    for ext in (".npy.h5", ".h5"):
        if n.endswith(ext):
            return n[: -len(ext)]
    return p.stem


class H5SliceDataset(SegDataset):
    """Training slices stored one per h5 file (SSL4MIS ``data/slices``, keys image/label)."""

    is_volumetric = True

    def __init__(self, files: List[Path], num_classes: int, transform=None, class_names=None,
                 volume_dir: Optional[Path] = None, image_key="image", label_key="label"):
        super().__init__(transform)
        if not files:
            raise DataError("no training slices")
        self.files, self.num_classes, self.in_channels = files, num_classes, 1
        self.class_names, self.volume_dir = class_names, volume_dir
        self.image_key, self.label_key = image_key, label_key

    def __len__(self):
        return len(self.files)

    def case_ids(self):
        return [_case(p) for p in self.files]

    def load(self, index):
        p = self.files[index]
        image, label, spacing, known = read_h5_pair(p, self.image_key, self.label_key)
        if image.ndim == 3 and image.shape[0] == 1:
            image, label = image[0], label[0]
        if image.ndim != 2:
            raise DataError(f"{p}: expected a 2-D slice (H, W), got shape {image.shape}")
        name = _case(p)
        vol, _, k = name.rpartition("_slice_")
        meta = {"case_id": name, "original_size": (int(image.shape[0]), int(image.shape[1])),
                "volume_id": vol or name, "slice_index": int(k) if k.isdigit() else 0,
                "spacing": (1.0,) + tuple(spacing[-2:]) if len(spacing) == 2 else tuple(spacing),
                "spacing_known": bool(known)}
        return image[..., None], _check_labels(label, self.num_classes, p), meta

    def volumes(self) -> VolumeDataset:
        if self.volume_dir is None:
            raise ValueError("no volume folder known for these slices")
        cases = sorted({_case(p).rpartition("_slice_")[0] or _case(p) for p in self.files})
        files = [self.volume_dir / f"{c}.h5" for c in cases]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise MissingDataError(f"training volumes not found in {self.volume_dir}: {missing[:5]}")
        return VolumeDataset(h5_volume_sources(files, self.num_classes), self.num_classes, 1, self.class_names)


def ACDCDataset(root, split: str = "train", transform: Optional[Callable] = None, split_file=None,
                num_classes: int = 4, cache_size: int = 4) -> SegDataset:
    """ACDC in the SSL4MIS layout (module docstring). Returns a 2D data set; ``.volumes()`` gives the volumes.

    Args:
        root: SSL4MIS ``data/ACDC`` folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: joint 2D transform (e.g. ``preset_transforms("mamba_unet_acdc", 224, train=True)``).
        split_file: JSON ``{split: [volume names]}`` used instead of the list files.
        num_classes: 4 (ACDC); mask values outside ``0..num_classes-1`` raise.
        cache_size: decoded volumes kept in memory (val/test).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"ACDC split must be 'train', 'val' or 'test', got {split!r}")
    r = require_dir(root, ACDC_LAYOUT)
    data = r / "data"
    if not data.is_dir():
        raise MissingDataError(f"{r} has no data/ folder; expected layout:\n{ACDC_LAYOUT}")
    names = ACDC_CLASSES if num_classes == 4 else None
    if split_file is not None:

        sp = load_split(split_file)
        if split not in sp:
            raise ValueError(f"split {split!r} not in {split_file} (has {sorted(sp)})")
        files = [data / f"{c}.h5" for c in sp[split]]
        return VolumeSliceDataset(h5_volume_sources(files, num_classes), num_classes, 1, transform,
                                  cache_size, names)
    if split == "train":
        lst = r / "train_slices.list"
        names = read_list(lst)
        # SSL4MIS keeps the slices in data/slices/; some copies keep them directly in data/, beside the volumes
        slices = data / "slices" if (data / "slices").is_dir() else data
        files = [slices / f"{n}.h5" for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            where = (f"{slices}" if slices != data else f"{data} (there is no data/slices/ folder; the slices may "
                     "lie in data/slices/ or directly in data/)")
            raise MissingDataError(f"{len(missing)} of the {len(files)} slice file(s) listed in {lst} are missing "
                                   f"from {where}: {missing[:5]}; expected layout:\n{ACDC_LAYOUT}")
        return H5SliceDataset(files, num_classes, transform, names, volume_dir=data)
    files = [data / f"{n}.h5" for n in read_list(r / f"{split}.list")]
    return VolumeSliceDataset(h5_volume_sources(files, num_classes), num_classes, 1, transform, cache_size, names)
