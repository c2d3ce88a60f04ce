"""Synapse multi-organ CT as TransUNet / VM-UNet ship it (9 classes: background + 8 organs)::

    root/train_npz/case0005_slice000.npz      # keys "image" (H, W) float32 (HU clipped to [-125, 275], scaled to
                                              #   [0, 1]), "label" (H, W)
    root/test_vol_h5/case0001.npy.h5          # keys "image" (D, H, W), "label" (D, H, W)
    root/lists/lists_Synapse/train.txt        # slice names, one per line (no extension)
    root/lists/lists_Synapse/test_vol.txt     # volume names

List files are looked for in ``list_dir`` (if given), ``root/lists/lists_Synapse``, ``root/lists_Synapse``,
``root/lists`` and ``root``; accepted names: ``train.txt`` / ``train_slices.txt`` (train), ``test_vol.txt`` /
``test.txt`` (test), ``val.txt`` (Mamba-UNet's list; it names the 12 test volumes). Without a list file, every
file of the folder is used (sorted by name).

Splits: ``"train"`` = the npz slices; ``"test"`` = the slices of the test volumes (2D), ``.volumes()`` the
volumes; ``"val"`` only exists if ``val.txt`` does (upstream has no validation split: TransUNet/VM-UNet select
by training loss; ``ratio_split`` on train case ids is the honest alternative).

Class order (TransUNet): 1 aorta, 2 gallbladder, 3 left kidney, 4 right kidney, 5 liver, 6 pancreas, 7 spleen,
8 stomach. Spacing is not stored: ``(1, 1, 1)``, ``spacing_known=False``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from .acdc import _check_labels, h5_volume_sources
from .base import DataError, MissingDataError, SegDataset, VolumeSliceDataset, require_dir
from .hints import current_style


def _carve_hint() -> str:
    if current_style() == "cli":
        return "--data.val_split null --data.val_fraction 0.1"
    return "mambaseg.data.splits.ratio_split"


__all__ = ["SynapseDataset", "SYNAPSE_CLASSES"]

SYNAPSE_CLASSES = ["background", "aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas",
                   "spleen", "stomach"]
SYNAPSE_LAYOUT = """  root/train_npz/<case>_slice<k>.npz            (keys image, label; 2-D)
  root/test_vol_h5/<case>.npy.h5                 (keys image, label; D x H x W)
  root/lists/lists_Synapse/{train.txt,test_vol.txt}"""

_LIST_NAMES = {"train": ("train.txt", "train_slices.txt"), "test": ("test_vol.txt", "test.txt"), "val": ("val.txt",)}


def _find_list(root: Path, list_dir, split: str) -> Optional[Path]:
    dirs = ([Path(list_dir)] if list_dir is not None else []) + [root / "lists" / "lists_Synapse",
                                                               root / "lists_Synapse", root / "lists", root]
    for d in dirs:
        for n in _LIST_NAMES[split]:
            if (d / n).is_file():
                return d / n
    return None


def _read_names(path: Path) -> List[str]:
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    for ext in (".npz", ".npy.h5", ".h5"):
        names = [n[: -len(ext)] if n.endswith(ext) else n for n in names]
    if not names:
        raise DataError(f"list file {path} is empty")
    return names


def read_npz_slice(path: Path, num_classes: int):
    if not path.is_file():
        raise MissingDataError(f"file not found: {path}")
    try:
        with np.load(path) as z:
            missing = [k for k in ("image", "label") if k not in z.files]
            if missing:
                raise DataError(f"{path} has no array(s) {missing} (found {z.files})")
            image, label = np.asarray(z["image"], np.float32), np.asarray(z["label"])
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"cannot read npz file {path} (corrupt or not .npz: {e})") from None
    if image.shape != label.shape or image.ndim != 2:
        raise DataError(f"{path}: expected 2-D image and label of the same shape, got {image.shape} and {label.shape}")
    return image, _check_labels(label, num_classes, path)


class NpzSliceDataset(SegDataset):
    """2D slices stored one per ``.npz`` file (keys image/label)."""

    is_volumetric = True

    def __init__(self, files: List[Path], num_classes: int, transform=None, class_names=None):
        super().__init__(transform)
        if not files:
            raise DataError("no training slices")
        self.files, self.num_classes, self.in_channels, self.class_names = files, num_classes, 1, class_names

    def __len__(self):
        return len(self.files)

    def case_ids(self):
        return [p.name[:-4] for p in self.files]

    def load(self, index):
        p = self.files[index]
        image, label = read_npz_slice(p, self.num_classes)
        name = p.name[:-4]
        vol, sep, k = name.rpartition("_slice")
        meta = {"case_id": name, "original_size": (int(image.shape[0]), int(image.shape[1])),
                "volume_id": vol if sep else name, "slice_index": int(k) if k.isdigit() else 0,
                "spacing": (1.0, 1.0, 1.0), "spacing_known": False}
        return image[..., None], label, meta


def SynapseDataset(root, split: str = "train", transform: Optional[Callable] = None, list_dir=None,
                   num_classes: int = 9, cache_size: int = 2) -> SegDataset:
    """Synapse in the TransUNet layout (module docstring); ``.volumes()`` on test/val gives whole volumes.

    Args:
        root: TransUNet ``data/Synapse`` folder.
        split: ``"train"``, ``"test"``, or ``"val"`` (only with a ``val.txt`` list).
        transform: joint 2D transform (e.g. ``preset_transforms("synapse", 224, train=True)``).
        list_dir: folder of the list files (default: searched, see module docstring).
        num_classes: 9.
        cache_size: decoded test volumes kept in memory.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"Synapse split must be 'train', 'val' or 'test', got {split!r}")
    r = require_dir(root, SYNAPSE_LAYOUT)
    names = SYNAPSE_CLASSES if num_classes == 9 else None
    lst = _find_list(r, list_dir, split)
    if split == "train":
        d = r / "train_npz"
        if not d.is_dir():
            raise MissingDataError(f"{r} has no train_npz/ folder; expected layout:\n{SYNAPSE_LAYOUT}")
        if lst is not None:
            files = [d / f"{n}.npz" for n in _read_names(lst)]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise MissingDataError(f"{len(missing)} slice(s) listed in {lst} are missing from {d}: {missing[:5]}")
        else:
            files = sorted(d.glob("*.npz"))
            if not files:
                raise DataError(f"{d} holds no .npz slices")
        return NpzSliceDataset(files, num_classes, transform, names)
    d = r / "test_vol_h5"
    if not d.is_dir():
        raise MissingDataError(f"{r} has no test_vol_h5/ folder; expected layout:\n{SYNAPSE_LAYOUT}")
    if lst is None:
        if split == "val":
            raise ValueError("Synapse has no validation split (no val.txt list found): upstream selects by training "
                             f"loss; carve one out of the training cases ({_carve_hint()}), or use split='test'")
        files = sorted(d.glob("*.h5"))
        if not files:
            raise DataError(f"{d} holds no .npy.h5 volumes")
    else:
        files = []
        for n in _read_names(lst):
            cands = [d / f"{n}.npy.h5", d / f"{n}.h5"]
            f = next((c for c in cands if c.is_file()), None)
            if f is None:
                raise MissingDataError(f"volume {n!r} listed in {lst} not found in {d} (looked for {n}.npy.h5)")
            files.append(f)
    return VolumeSliceDataset(h5_volume_sources(files, num_classes), num_classes, 1, transform, cache_size, names)
