"""Polyp segmentation benchmark (binary) in the PraNet / VM-UNetV2 layout::

    root/TrainDataset/{images,masks}/*.png
    root/TestDataset/{CVC-300,CVC-ClinicDB,Kvasir,CVC-ColonDB,ETIS-LaribPolypDB}/{images,masks}/*.png

Splits:
  * ``"train"``: ``TrainDataset`` (minus the ``val_fraction`` carve-out if given).
  * ``"test/<name>"`` or ``split="test", subset="<name>"``: one test set (names are matched case-insensitively,
    ``kvasir`` finds ``Kvasir``). Each test set is evaluated separately: use :func:`polyp_test_sets`.
  * ``"test"`` without a subset: all test sets found, concatenated (``meta["subset"]`` names each sample's set).
  * ``"val"``: with ``val_fraction`` a seeded part of ``TrainDataset``; without it the concatenated test sets
    (what VM-UNetV2 selects its checkpoint on — test leakage), with a warning.
Masks are 0/255 PNG (JPEG masks, as in the original Kvasir-SEG download, are thresholded at 128).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional

from .base import ConcatSegDataset, MissingDataError, require_dir, strip_ext, warn_once
from .hints import reader_arg
from .folders import IMAGE_DIR_NAMES, MASK_DIR_NAMES, PairedImageDataset, find_subdir, folder_pairs
from .splits import ratio_split

__all__ = ["PolypDataset", "polyp_test_sets", "POLYP_TEST_SETS", "build_polyp"]

POLYP_TEST_SETS = ("CVC-300", "CVC-ClinicDB", "Kvasir", "CVC-ColonDB", "ETIS-LaribPolypDB")
POLYP_LAYOUT = """  root/TrainDataset/{images,masks}/*.png
  root/TestDataset/{CVC-300,CVC-ClinicDB,Kvasir,CVC-ColonDB,ETIS-LaribPolypDB}/{images,masks}/*.png"""


def _pairs(d: Path, strict):
    idir, mdir = find_subdir(d, IMAGE_DIR_NAMES), find_subdir(d, MASK_DIR_NAMES)
    if idir is None or mdir is None:
        raise MissingDataError(f"{d} needs images/ and masks/ folders; expected layout:\n{POLYP_LAYOUT}")
    return folder_pairs(idir, mdir, strict=strict)


def _test_dirs(root: Path) -> Dict[str, Path]:
    td = root / "TestDataset"
    if not td.is_dir():
        raise MissingDataError(f"{root} has no TestDataset/ folder; expected layout:\n{POLYP_LAYOUT}")
    found = {p.name: p for p in sorted(td.iterdir()) if p.is_dir()}
    if not found:
        raise MissingDataError(f"{td} holds no test sets; expected layout:\n{POLYP_LAYOUT}")
    order = [n for n in POLYP_TEST_SETS if n in found] + [n for n in found if n not in POLYP_TEST_SETS]
    return {n: found[n] for n in order}


class PolypDataset(PairedImageDataset):
    """One part of the polyp benchmark (the training set, a carve-out of it, or one test set).

    Args:
        root: benchmark folder (module docstring).
        split: ``"train"``, ``"val"`` (needs ``val_fraction``), or ``"test/<name>"``.
        subset: test set name (alternative to ``"test/<name>"``).
        val_fraction, seed: seeded validation carve-out of ``TrainDataset``.
    """

    def __init__(self, root, split: str = "train", transform: Optional[Callable] = None,
                 subset: Optional[str] = None, val_fraction: Optional[float] = None, seed: int = 0,
                 channels: int = 3, strict: bool = True, mask_threshold="auto"):
        r = require_dir(root, POLYP_LAYOUT)
        if split.startswith("test/"):
            split, subset = "test", split[5:]
        if split == "test":
            if subset is None:
                raise ValueError("PolypDataset(split='test') needs a subset; use build_dataset('polyp', "
                                 "split='test') for all test sets or polyp_test_sets() to evaluate them separately")
            dirs = _test_dirs(r)
            match = {n.lower(): n for n in dirs}
            name = match.get(subset.lower())
            if name is None:
                raise MissingDataError(f"test set {subset!r} not found in {r / 'TestDataset'}; found: {list(dirs)}")
            pairs, self.subset = _pairs(dirs[name], strict), name
        elif split in ("train", "val"):
            td = r / "TrainDataset"
            if not td.is_dir():
                raise MissingDataError(f"{r} has no TrainDataset/ folder; expected layout:\n{POLYP_LAYOUT}")
            pairs = _pairs(td, strict)
            if val_fraction is not None:

                if not 0 < val_fraction < 1:
                    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
                by_id = {strip_ext(a.name): (a, b) for a, b in pairs}
                sp = ratio_split(sorted(by_id), (1 - val_fraction, val_fraction), seed)
                pairs = [by_id[c] for c in sorted(sp[split])]
            elif split == "val":
                raise ValueError(f"the polyp benchmark has no validation split: pass {reader_arg('val_fraction', 0.1)}"
                                 " (seeded part of TrainDataset) or use split='test/<name>'")
            self.subset = "TrainDataset"
        else:
            raise ValueError(f"polyp split must be 'train', 'val', 'test' or 'test/<name>', got {split!r}")
        super().__init__(pairs, num_classes=2, channels=channels, transform=transform, mask_threshold=mask_threshold,
                         name=f"polyp {split} ({r})", class_names=["background", "polyp"])
        self.split = split


def polyp_test_sets(root, transform: Optional[Callable] = None, **kwargs) -> Dict[str, PolypDataset]:
    """``{test set name: PolypDataset}`` for every test set found, in the benchmark's order."""
    r = require_dir(root, POLYP_LAYOUT)
    return {n: PolypDataset(r, split="test", subset=n, transform=transform, **kwargs) for n in _test_dirs(r)}


def build_polyp(root=None, split: str = "train", transform=None, subset=None, val_fraction=None, **kwargs):
    """Factory behind ``build_dataset("polyp", ...)`` (adds the concatenated ``"test"`` and the leaky ``"val"``)."""
    if split.startswith("test/") or (split == "test" and subset is not None) or split == "train" or (
            split == "val" and val_fraction is not None):
        return PolypDataset(root, split, transform, subset=subset, val_fraction=val_fraction, **kwargs)
    if split in ("test", "val"):
        sets = polyp_test_sets(root, transform, **kwargs)
        if split == "val":
            warn_once("polyp 'val' without val_fraction = the concatenated test sets (VM-UNetV2's model selection, "
                      f"test leakage); pass {reader_arg('val_fraction', 0.1)} to validate on part of TrainDataset")
        ds = ConcatSegDataset(list(sets.values()), list(sets.keys()))
        ds.transform = None  # samples are transformed by the member data sets
        return ds
    raise ValueError(f"polyp split must be 'train', 'val', 'test' or 'test/<name>', got {split!r}")
