"""nnU-Net v2 raw data sets (``nnUNet_raw/DatasetXXX_Name``)::

    root/dataset.json            # {"channel_names": {"0": "T2"}, "labels": {"background": 0, "LV": 1, ...},
                                 #  "numTraining": N, "file_ending": ".nii.gz" | ".png" | ...}
    root/imagesTr/<case>_0000<ext>   (one file per channel; RGB natural images: one RGB _0000 file)
    root/labelsTr/<case><ext>        (consecutive integer labels 0..K-1)
    [root/imagesTs/..., root/labelsTs/...]
    [root/splits_final.json]     # or $nnUNet_preprocessed/<root name>/splits_final.json, or splits_file=

Splits: ``"train"`` / ``"val"`` = fold ``fold`` (default 0) of ``splits_final.json`` if found, else of nnU-Net's
own default (5-fold ``KFold(shuffle=True, random_state=12345)`` on the sorted case ids, see
:func:`mambaseg.data.splits.kfold_split` — the same folds nnU-Net would write); ``"all"`` = every training case
(nnU-Net's fold ``all``); ``"test"`` = ``imagesTs`` with ``labelsTs``.

File endings: ``.png``, ``.bmp``, ``.tif``, ``.tiff``, ``.jpg`` (2D; a 2D data set) and ``.nii.gz``, ``.nii``
(volumes: 2D slices plus ``.volumes()``). Region-based labels and the ``ignore`` label are not supported (error).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from .base import DataError, MissingDataError, SegDataset, VolumeSliceDataset, read_image, read_mask, require_dir
from .nifti import nifti_case_source
from .splits import kfold_split, load_split

__all__ = ["NNUNetDataset", "read_dataset_json", "nnunet_cases"]

NNUNET_LAYOUT = """  root/dataset.json  (channel_names, labels, numTraining, file_ending)
  root/imagesTr/<case>_0000<file_ending>   root/labelsTr/<case><file_ending>
  [root/splits_final.json]"""
_2D_ENDINGS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
_3D_ENDINGS = (".nii.gz", ".nii")


def read_dataset_json(root: Path) -> dict:
    p = root / "dataset.json"
    if not p.is_file():
        raise MissingDataError(f"{root} has no dataset.json; expected nnU-Net v2 raw layout:\n{NNUNET_LAYOUT}")
    try:
        dj = json.loads(p.read_text())
    except ValueError as e:
        raise DataError(f"{p} is not valid JSON: {e}") from None
    missing = [k for k in ("channel_names", "labels", "file_ending") if k not in dj]
    if "channel_names" not in dj and "modality" in dj:
        raise DataError(f"{p} is an nnU-Net v1 dataset.json ('modality'); convert it with "
                        "nnUNetv2_convert_old_nnUNet_dataset")
    if missing:
        raise DataError(f"{p} lacks {missing}; nnU-Net v2 needs channel_names, labels, file_ending")
    labels = dj["labels"]
    if any(not isinstance(v, int) for v in labels.values()):
        raise DataError(f"{p}: region-based labels (lists of values) are not supported")
    if "ignore" in labels:
        raise DataError(f"{p}: the nnU-Net 'ignore' label is not supported")
    vals = sorted(labels.values())
    if vals != list(range(len(vals))) or vals[0] != 0:
        raise DataError(f"{p}: labels must be consecutive integers from 0 (background), got {vals}")
    return dj


def nnunet_cases(root: Path, images: str, labels: str, ending: str, n_channels: int) -> Dict[str, dict]:
    """``{case: {"images": [paths], "label": path}}`` for ``images``/``labels`` folders; clear errors on gaps."""
    idir, ldir = root / images, root / labels
    if not idir.is_dir():
        raise MissingDataError(f"{root} has no {images}/ folder; expected layout:\n{NNUNET_LAYOUT}")
    if not ldir.is_dir():
        raise MissingDataError(f"{root} has no {labels}/ folder; expected layout:\n{NNUNET_LAYOUT}")
    chans: Dict[str, Dict[int, Path]] = {}
    bad = []
    for p in sorted(idir.iterdir()):
        if not p.is_file() or p.name.startswith(".") or not p.name.endswith(ending):
            continue
        stem = p.name[: -len(ending)]
        case, _, idx = stem.rpartition("_")
        if not (idx.isdigit() and len(idx) == 4 and case):
            bad.append(p.name)
            continue
        chans.setdefault(case, {})[int(idx)] = p
    if bad:
        raise DataError(f"{idir}: images must be named <case>_XXXX{ending} (channel index); offending: {bad[:5]}")
    if not chans:
        raise DataError(f"no *{ending} images in {idir}")
    label_files = {p.name[: -len(ending)]: p for p in sorted(ldir.iterdir())
                   if p.is_file() and p.name.endswith(ending)}
    no_label = sorted(set(chans) - set(label_files))
    no_image = sorted(set(label_files) - set(chans))
    if no_label or no_image:
        msg = []
        if no_label:
            msg.append(f"{len(no_label)} case(s) in {idir} have no label in {ldir}: {no_label[:5]}")
        if no_image:
            msg.append(f"{len(no_image)} label(s) in {ldir} have no image: {no_image[:5]}")
        raise DataError("; ".join(msg))
    out = {}
    for case in sorted(chans):
        idxs = sorted(chans[case])
        expect = list(range(n_channels))
        if idxs != expect and not (idxs == [0] and ending in _2D_ENDINGS):
            raise DataError(f"case {case!r}: channel files {idxs} but dataset.json declares {n_channels} channel(s) "
                            f"(expected _0000.._{n_channels - 1:04d})")
        out[case] = {"images": [chans[case][i] for i in idxs], "label": label_files[case]}
    return out


def _find_splits(root: Path, splits_file) -> Optional[Path]:
    if splits_file is not None:
        p = Path(splits_file)
        if not p.is_file():
            raise MissingDataError(f"splits file {p} not found")
        return p
    cands = [root / "splits_final.json"]
    pre = os.environ.get("nnUNet_preprocessed")
    if pre:
        cands.append(Path(pre) / root.name / "splits_final.json")
    return next((c for c in cands if c.is_file()), None)


class NNUNet2DDataset(SegDataset):
    """2D nnU-Net raw cases (PNG/BMP/TIF): channel files concatenated, label decoded as class indices."""

    def __init__(self, cases: Dict[str, dict], num_classes: int, in_channels: int, transform=None, class_names=None):
        super().__init__(transform)
        if not cases:
            raise DataError("the nnU-Net split is empty")
        self.cases = cases
        self.ids = list(cases)
        self.num_classes, self.in_channels, self.class_names = num_classes, in_channels, class_names

    def __len__(self):
        return len(self.ids)

    def case_ids(self):
        return list(self.ids)

    def load(self, index):
        case = self.ids[index]
        files = self.cases[case]["images"]
        if len(files) == 1:
            image = read_image(files[0], self.in_channels if self.in_channels in (1, 3) else None)
        else:
            image = np.concatenate([read_image(f, 1) for f in files], axis=2)
        if image.shape[2] != self.in_channels:
            raise DataError(f"case {case!r}: image has {image.shape[2]} channel(s), dataset.json declares "
                            f"{self.in_channels}")
        lp = self.cases[case]["label"]
        mask = read_mask(lp, self.num_classes, None, threshold=None)
        if image.shape[:2] != mask.shape:
            raise DataError(f"case {case!r}: image {files[0]} is {image.shape[:2]} but label {lp} is {mask.shape}")
        return image, mask, {"case_id": case, "original_size": (int(mask.shape[0]), int(mask.shape[1]))}


def NNUNetDataset(root, split: str = "train", transform: Optional[Callable] = None, fold: int = 0,
                  splits_file=None, cache_size: int = 4) -> SegDataset:
    """An nnU-Net v2 raw data set (module docstring).

    Args:
        root: ``DatasetXXX_Name`` folder.
        split: ``"train"``, ``"val"`` (fold of the 5-fold split), ``"all"`` or ``"test"`` (``imagesTs``+``labelsTs``).
        transform: joint 2D transform.
        fold: fold index for train/val.
        splits_file: explicit ``splits_final.json``.
        cache_size: decoded volumes kept in memory (NIfTI data sets).
    """

    r = require_dir(root, NNUNET_LAYOUT)
    dj = read_dataset_json(r)
    ending = dj["file_ending"]
    if ending not in _2D_ENDINGS + _3D_ENDINGS:
        raise DataError(f"file_ending {ending!r} is not supported (supported: {_2D_ENDINGS + _3D_ENDINGS}); "
                        ".nrrd/.mha need SimpleITK, convert them to .nii.gz")
    n_ch = len(dj["channel_names"])
    labels = dj["labels"]
    num_classes = len(labels)
    class_names = [k for k, _ in sorted(labels.items(), key=lambda kv: kv[1])]
    if split == "test":
        cases = nnunet_cases(r, "imagesTs", "labelsTs", ending, n_ch)
    elif split in ("train", "val", "all"):
        cases = nnunet_cases(r, "imagesTr", "labelsTr", ending, n_ch)
        if split != "all":
            sf = _find_splits(r, splits_file)
            if sf is not None:
                sp = load_split(sf, fold=fold) if isinstance(load_split(sf), list) else load_split(sf)
            else:
                sp = kfold_split(sorted(cases), 5, fold, 12345)
            wanted = list(sp[split])
            missing = [c for c in wanted if c not in cases]
            if missing:
                raise DataError(f"split {'file ' + str(sf) if sf else ''} lists cases not in imagesTr: {missing[:5]}")
            cases = {c: cases[c] for c in wanted}
    else:
        raise ValueError(f"nnU-Net split must be 'train', 'val', 'all' or 'test', got {split!r}")
    if ending in _2D_ENDINGS:
        return NNUNet2DDataset(cases, num_classes, n_ch, transform, class_names)
    sources = [nifti_case_source(c, v["images"], v["label"], num_classes) for c, v in cases.items()]
    if not sources:
        raise DataError(f"the nnU-Net split {split!r} of {r} is empty")
    ds = VolumeSliceDataset(sources, num_classes, n_ch, transform, cache_size, class_names)
    return ds
