"""A folder of images and a folder of masks (PNG/JPG/BMP/TIFF), paired by file stem.

Layouts accepted (``root`` is what you pass)::

    root/images/*.png  + root/masks/*.png                  # flat: split by ratio or a split file
    root/{train,val,test}/{images,masks}/*.png             # split folders (VM-UNet ISIC layout)
    image_dir=..., mask_dir=...                            # explicit folders

Folder aliases: images = ``images|image|imgs|img``; masks = ``masks|mask|labels|label|gt|annotations``.
Masks hold 0/1 or 0/255 (binary), class indices (pass ``num_classes``), palette indices, or colours (pass
``label_map={(r, g, b): class}``). A mask may carry a suffix after the image stem (``X_mask.png`` pairs with
``X.jpg``). Images are RGB or grayscale (``channels=None`` keeps what the first image has).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

from .base import (IMAGE_EXTENSIONS, MASK_SUFFIXES, DataError, MissingDataError, SegDataset, image_channels,
                   list_files, pair_by_stem, read_image, read_mask, require_dir, strip_ext)
from .hints import current_style
from .splits import load_split, ratio_split

__all__ = ["PairedImageDataset", "FolderDataset", "find_subdir", "IMAGE_DIR_NAMES", "MASK_DIR_NAMES"]

IMAGE_DIR_NAMES = ("images", "image", "imgs", "img", "Images")
MASK_DIR_NAMES = ("masks", "mask", "labels", "label", "gt", "annotations", "Masks", "GT")

FOLDER_LAYOUT = """  root/images/*.png|jpg|bmp|tif + root/masks/*.png   (images and masks paired by file stem)
  or root/{train,val,test}/images + root/{train,val,test}/masks
  or FolderDataset(image_dir=..., mask_dir=...)"""


def find_subdir(parent: Path, names: Sequence[str]) -> Optional[Path]:
    for n in names:
        p = parent / n
        if p.is_dir():
            return p
    return None


class PairedImageDataset(SegDataset):
    """Image/mask file pairs (the building block of the folder, ISIC and polyp readers).

    Args:
        pairs: list of ``(image_path, mask_path)``.
        num_classes: classes including background (2 = binary). Default: 2, or ``max(label_map.values()) + 1``.
        label_map: raw mask value (int, or ``(r, g, b)``) -> class index.
        channels: 1, 3, or None (from the first image).
        mask_threshold: ``"auto"`` (128 for JPEG masks of binary sets, exact values otherwise), an int, or None.
        transform: callable ``(image (H, W, C) float32, mask (H, W) int64) -> (image, mask)``.
        name: shown in errors.
    """

    def __init__(self, pairs: Sequence[Tuple[Path, Path]], num_classes: Optional[int] = None,
                 label_map: Optional[Mapping] = None, channels: Optional[int] = None, mask_threshold="auto",
                 transform: Optional[Callable] = None, name: str = "data set", class_names=None):
        super().__init__(transform)
        if not pairs:
            raise DataError(f"{name} is empty: no image/mask pairs found")
        self.pairs = [(Path(a), Path(b)) for a, b in pairs]
        if label_map is not None:
            label_map = {_label_key(k): int(v) for k, v in label_map.items()}
            mx = max(label_map.values()) + 1
            if num_classes is None:
                num_classes = max(mx, 2)
            elif mx > num_classes:
                raise ValueError(f"label_map maps to class {mx - 1} but num_classes={num_classes}")
        self.num_classes = int(num_classes) if num_classes is not None else 2
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts the background too and must be >= 2, got {self.num_classes}")
        self.label_map = label_map
        self.mask_threshold = mask_threshold
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
        self.in_channels = int(channels) if channels is not None else _probe_channels(self.pairs)
        self.name = name
        if class_names is not None:
            self.class_names = list(class_names)
        elif self.num_classes == 2:
            self.class_names = ["background", "foreground"]

    def __len__(self):
        return len(self.pairs)

    def case_ids(self) -> List[str]:
        return [strip_ext(a.name) for a, _ in self.pairs]

    def load(self, index):
        ip, mp = self.pairs[index]
        image = read_image(ip, self.in_channels)
        mask = read_mask(mp, self.num_classes, self.label_map, self.mask_threshold)
        if image.shape[:2] != mask.shape:
            raise DataError(f"image {ip} is {image.shape[0]}x{image.shape[1]} but its mask {mp} is "
                            f"{mask.shape[0]}x{mask.shape[1]} (H x W); image and mask must have the same size")
        meta = {"case_id": strip_ext(ip.name), "original_size": (int(image.shape[0]), int(image.shape[1])),
                "image_path": str(ip), "mask_path": str(mp)}
        return image, mask, meta


def folder_pairs(image_dir: Path, mask_dir: Path, extensions=IMAGE_EXTENSIONS, mask_suffixes=MASK_SUFFIXES,
                 strict: bool = True, image_filter: Optional[Callable[[str], bool]] = None):
    images = list_files(image_dir, extensions)
    if image_filter is not None:
        images = [p for p in images if image_filter(strip_ext(p.name))]
    masks = list_files(mask_dir, extensions)
    if not images:
        raise DataError(f"no images ({'/'.join(e.lstrip('.') for e in extensions)}) found in {image_dir}")
    if not masks:
        raise DataError(f"no masks found in {mask_dir} ({len(images)} images in {image_dir})")
    return pair_by_stem(images, masks, mask_suffixes, image_dir, mask_dir, strict)


def _probe_channels(pairs) -> int:
    """Channels of the first image that opens (a corrupt first file is the data check's to report)."""
    first = None
    for ip, _ in pairs[:50]:
        try:
            return image_channels(ip)
        except DataError as e:
            first = first or e
    raise first


def _ratio_hint() -> str:
    if current_style() == "cli":
        return ("--data.split '[0.8, 0.1, 0.1]' (train, val, test ratios of the case ids, seeded by --data.seed, "
                "saved to RUN_DIR/split.json)")
    return "ratios=(0.8, 0.1, 0.1) (train, val, test; seeded by seed=) or a split_file"


def _label_key(k):
    """label_map keys: an int, an (r, g, b) tuple/list, or (from JSON on the command line) "255" / "255,0,0"."""
    if isinstance(k, (list, tuple)):
        return tuple(int(v) for v in k)
    if isinstance(k, str) and "," in k:
        return tuple(int(v) for v in k.strip("()[] ").split(","))
    return int(k)


def split_pairs(pairs, split: str, ratios, seed: int, split_file, name: str):
    """Select the pairs of ``split`` by a split file (JSON ``{split: [case ids]}``) or a ratio split of case ids."""

    by_id = {strip_ext(a.name): (a, b) for a, b in pairs}
    if split in ("all", None):
        return list(pairs)
    if split_file is not None:
        sp = load_split(split_file)
        if not isinstance(sp, dict):
            raise DataError(f"{split_file} holds folds; load it with load_split(path, fold=k) and pass the dict")
    else:
        sp = ratio_split(sorted(by_id), ratios, seed)
    if split not in sp:
        if split_file is None:
            raise MissingDataError(
                f"{name} is one flat images/ + masks/ folder (no train/ val/ test/ folders, no split file, as "
                f"Kvasir-SEG is downloaded); its ratio split {tuple(ratios)} has only {sorted(sp)}, no {split!r}. "
                f"Split it into train/val/test with {_ratio_hint()}")
        raise ValueError(f"split {split!r} not in {sorted(sp)} ({name}); choose one of them or 'all'")
    missing = [c for c in sp[split] if c not in by_id]
    if missing:
        raise DataError(f"split lists cases with no image/mask pair in {name}: {missing[:5]}")
    return [by_id[c] for c in sp[split]]


class FolderDataset(PairedImageDataset):
    """Images and masks in two folders, paired by stem (see the module docstring for layouts).

    Args:
        root: data folder (flat ``images/ + masks/`` or split folders ``train/ val/ test/``).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``. With split folders, the folder of that name.
            With a flat folder: ``"all"`` = everything; otherwise the cases of ``split_file`` (JSON written by
            :func:`mambaseg.data.splits.save_split`) or of ``ratio_split(case_ids, ratios, seed)``.
        ratios: ratios of the flat-folder split, default ``(0.8, 0.2)`` (train/val); 3 numbers add test.
        seed: seed of the ratio split.
        split_file: JSON split file (overrides ``ratios``).
        image_dir, mask_dir: explicit folders (then ``root`` may be None).
        strict: raise on unpaired files (default) instead of skipping them.
        num_classes, label_map, channels, mask_threshold, transform: see :class:`PairedImageDataset`.
    """

    def __init__(self, root=None, split: str = "all", transform: Optional[Callable] = None,
                 num_classes: Optional[int] = None, label_map: Optional[Mapping] = None,
                 channels: Optional[int] = None, mask_threshold="auto", ratios=(0.8, 0.2), seed: int = 0,
                 split_file=None, image_dir=None, mask_dir=None, strict: bool = True, class_names=None):
        if image_dir is not None or mask_dir is not None:
            if image_dir is None or mask_dir is None:
                raise ValueError("pass both image_dir and mask_dir")
            idir = require_dir(image_dir, FOLDER_LAYOUT)
            mdir = require_dir(mask_dir, FOLDER_LAYOUT)
            pairs = split_pairs(folder_pairs(idir, mdir, strict=strict), split, ratios, seed, split_file, str(idir))
        else:
            r = require_dir(root, FOLDER_LAYOUT)
            base = r
            flat = True
            if split not in ("all", None) and (r / split).is_dir():
                base, flat = r / split, False
            idir, mdir = find_subdir(base, IMAGE_DIR_NAMES), find_subdir(base, MASK_DIR_NAMES)
            if idir is None or mdir is None:
                splits = [s for s in ("train", "val", "test") if (r / s).is_dir()]
                extra = (f" (found split folders {splits}; pick split= one of them)" if splits and flat else "")
                raise MissingDataError(f"{base} has no {'images' if idir is None else 'masks'} folder{extra}; "
                                       f"expected layout:\n{FOLDER_LAYOUT}")
            pairs = folder_pairs(idir, mdir, strict=strict)
            if flat:
                pairs = split_pairs(pairs, split, ratios, seed, split_file, str(r))
        super().__init__(pairs, num_classes=num_classes, label_map=label_map, channels=channels,
                         mask_threshold=mask_threshold, transform=transform, name=str(root or image_dir),
                         class_names=class_names)
        self.split = split
