"""ISIC 2017 / 2018 skin-lesion segmentation (binary), in the two layouts people have.

1. **VM-UNet / VM-UNetV2 layout** (the authors' 7:3 split, shipped as folders)::

       root/train/images/*.png|jpg    root/train/masks/*.png
       root/val/images/...            root/val/masks/...
       [root/test/images/...          root/test/masks/...]

   Upstream pairs images and masks by *sorted order*; we pair by stem (a mask may be ``X.png`` or
   ``X_segmentation.png``). In upstream the ``val`` folder is the test set *and* the model-selection set (test
   leakage). Here ``split="test"`` is ``test/`` when it exists, else ``val/``; ``split="val"`` is ``val/``
   when ``test/`` exists; otherwise (only ``train/`` and ``val/``) either ``val_fraction`` carves a validation
   set out of ``train/`` (seeded ratio split; ``train`` then excludes it) or, with ``val_fraction=None``, ``val``
   is the upstream ``val/`` folder again, with a warning that it is also the test set.

2. **ISIC challenge naming** (as downloaded from the challenge)::

       ISIC-2017_Training_Data/ISIC_0000000.jpg        ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png
       ISIC-2017_Validation_Data/...                   ISIC-2017_Validation_Part1_GroundTruth/...
       ISIC-2017_Test_v2_Data/...                      ISIC-2017_Test_v2_Part1_GroundTruth/...
       ISIC2018_Task1-2_Training_Input/...             ISIC2018_Task1_Training_GroundTruth/...
       ISIC2018_Task1-2_Validation_Input/...           ISIC2018_Task1_Validation_GroundTruth/...
       ISIC2018_Task1-2_Test_Input/...                 ISIC2018_Task1_Test_GroundTruth/...

   Folders are recognised by the words Training/Validation/Test and Data|Input vs GroundTruth; only files named
   ``ISIC_<digits>`` are images (2017's ``*_superpixels.png`` files are ignored).

Masks are 0/255 PNGs (JPEG masks are thresholded at 128).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Optional

from .base import DataError, MissingDataError, require_dir, strip_ext, warn_once
from .hints import reader_arg
from .folders import IMAGE_DIR_NAMES, MASK_DIR_NAMES, PairedImageDataset, find_subdir, folder_pairs
from .splits import ratio_split

__all__ = ["ISICDataset"]

ISIC_LAYOUT = """  VM-UNet layout: root/{train,val[,test]}/{images,masks}/  (e.g. data/isic2017/train/images/ISIC_0000000.png)
  or challenge layout: root/ISIC-2017_Training_Data/ISIC_0000000.jpg + root/ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png
     (ISIC2018_Task1-2_Training_Input + ISIC2018_Task1_Training_GroundTruth, likewise Validation/Test)"""

_SPLIT_WORD = {"train": "training", "val": "validation", "test": "test"}
_ISIC_ID = re.compile(r"^ISIC_\d+$")


def _challenge_dirs(root: Path, split: str):
    word = _SPLIT_WORD[split]
    dirs = [p for p in root.iterdir() if p.is_dir()]
    imgs = [p for p in dirs if word in p.name.lower() and re.search(r"(data|input)$", p.name.lower())]
    gts = [p for p in dirs if word in p.name.lower() and "groundtruth" in p.name.lower()]
    msks = [p for p in gts if "part1" in p.name.lower() or "task1_" in p.name.lower()] or gts
    return sorted(imgs), sorted(msks)


class ISICDataset(PairedImageDataset):
    """ISIC 2017/2018 lesion segmentation (binary: 0 background, 1 lesion).

    Args:
        root: data folder in either layout (module docstring).
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: joint transform (e.g. ``preset_transforms("vmunet_isic", 256, train=True)``).
        val_fraction: carve the validation set out of ``train/`` (VM-UNet layout without ``test/``).
        seed: seed of that carve-out.
        channels: 3 (default) or 1.
        strict: raise on unpaired files (default) rather than skip them.
    """

    def __init__(self, root, split: str = "train", transform: Optional[Callable] = None,
                 val_fraction: Optional[float] = None, seed: int = 0, channels: int = 3, strict: bool = True,
                 mask_threshold="auto"):
        if split not in ("train", "val", "test"):
            raise ValueError(f"ISIC split must be 'train', 'val' or 'test', got {split!r}")
        r = require_dir(root, ISIC_LAYOUT)
        if (r / "train").is_dir() or (r / "val").is_dir():
            pairs = self._vmunet_pairs(r, split, val_fraction, seed, strict)
            layout = "vmunet"
        else:
            imgs, msks = _challenge_dirs(r, split)
            if not imgs or not msks:
                raise MissingDataError(f"{r}: no {split} image/ground-truth folders found; expected layout:\n"
                                       f"{ISIC_LAYOUT}")
            if len(imgs) > 1 or len(msks) > 1:
                raise DataError(f"{r}: several candidate {split} folders: {[p.name for p in imgs + msks]}; "
                                "keep one data set per root")
            pairs = folder_pairs(imgs[0], msks[0], strict=strict,
                                 image_filter=lambda s: bool(_ISIC_ID.match(s)))
            layout = "challenge"
        super().__init__(pairs, num_classes=2, channels=channels, transform=transform, mask_threshold=mask_threshold,
                         name=f"ISIC {split} ({r})", class_names=["background", "lesion"])
        self.split, self.layout = split, layout

    @staticmethod
    def _pairs_in(d: Path, strict):
        idir, mdir = find_subdir(d, IMAGE_DIR_NAMES), find_subdir(d, MASK_DIR_NAMES)
        if idir is None or mdir is None:
            raise MissingDataError(f"{d} needs images/ and masks/ folders; expected layout:\n{ISIC_LAYOUT}")
        return folder_pairs(idir, mdir, strict=strict)

    def _vmunet_pairs(self, r: Path, split, val_fraction, seed, strict):

        has_test = (r / "test").is_dir()
        if split == "test":
            d = r / ("test" if has_test else "val")
            if not d.is_dir():
                raise MissingDataError(f"{r} has no val/ or test/ folder; expected layout:\n{ISIC_LAYOUT}")
            return self._pairs_in(d, strict)
        if not (r / "train").is_dir():
            raise MissingDataError(f"{r} has no train/ folder; expected layout:\n{ISIC_LAYOUT}")
        if split == "val" and has_test and val_fraction is None:
            return self._pairs_in(r / "val", strict)
        if val_fraction is None:
            if split == "train":
                return self._pairs_in(r / "train", strict)
            warn_once(f"ISIC at {r}: 'val' is the upstream val/ folder, which is also the test set (VM-UNet's 7:3 "
                      f"split has no separate validation set); pass {reader_arg('val_fraction', 0.1)} to validate "
                      "on part of train/")
            return self._pairs_in(r / "val", strict)
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        pairs = self._pairs_in(r / "train", strict)
        by_id = {strip_ext(a.name): (a, b) for a, b in pairs}
        sp = ratio_split(sorted(by_id), (1 - val_fraction, val_fraction), seed)
        return [by_id[c] for c in sorted(sp[split])]
