"""Common pieces of the data layer: errors, file reading, mask decoding, the dataset base classes.

Sample contract (every 2D dataset of :mod:`mambaseg.data`)::

    dataset[i] == {
        "image": torch.FloatTensor (C, H, W),
        "mask":  torch.LongTensor (H, W),        # class indices 0..num_classes-1
        "meta":  {"case_id": str, "original_size": (H, W), ...},
    }

Slices of volumes add ``volume_id`` (str), ``slice_index`` (int) and ``spacing`` (a tuple of floats in the
order of the array axes of the volume, i.e. ``(z, y, x)`` = ``(D, H, W)``; ``(1.0, 1.0, 1.0)`` with
``spacing_known=False`` when the file stores none, as in the SSL4MIS/TransUNet h5 files).

Before tensor conversion the optional ``transform`` is called as ``image, mask = transform(image, mask)`` on a
numpy ``float32`` image of shape ``(H, W, C)`` and an ``int64`` mask of shape ``(H, W)``; any callable with that
signature works (:mod:`mambaseg.data.transforms` ships a small set, albumentations can be wrapped).

Without a transform the image keeps the intensity units of its source: 8-bit files give values in ``[0, 255]``,
16-bit files ``[0, 65535]``, h5/npz/NIfTI volumes the stored float values. Normalisation is a transform
(:class:`mambaseg.data.transforms.Normalize`).

Volume sample contract (``dataset.volumes()`` of the volumetric data sets)::

    volumes[i] == {
        "image": torch.FloatTensor (C, D, H, W),   # always 4-D, C=1 for grayscale
        "mask":  torch.LongTensor (D, H, W),
        "meta":  {"case_id": str, "spacing": (z, y, x), "spacing_known": bool, "shape": (D, H, W),
                  "original_size": (H, W)},
    }

Volumes are returned untransformed (raw intensities, original size); :func:`volume_slices` applies a 2D
transform slice by slice for slice-wise inference.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .hints import current_style, reader_arg

__all__ = [
    "DataError",
    "nonfinite_summary",
    "MissingDataError",
    "IMAGE_EXTENSIONS",
    "SegDataset",
    "VolumeDataset",
    "VolumeSliceDataset",
    "ConcatSegDataset",
    "read_image",
    "read_mask",
    "decode_mask",
    "pair_by_stem",
    "list_files",
    "require_dir",
    "to_sample",
    "volume_slices",
    "collate_samples",
    "nonfinite_summary",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LOSSY_EXTENSIONS = (".jpg", ".jpeg")
#: suffixes a mask file may carry after the image stem (``ISIC_0000000_segmentation.png``)
MASK_SUFFIXES = ("_segmentation", "_Segmentation", "_mask", "_masks", "_Mask", "_gt", "_GT", "_label", "_labels",
                 "_seg", "_anno")


class DataError(ValueError):
    """A data set is malformed: unpaired files, corrupt file, unexpected mask values, size mismatch, empty."""


class MissingDataError(DataError, FileNotFoundError):
    """A directory or file the layout needs does not exist (catchable as ``FileNotFoundError`` too)."""


# ----------------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------------
def require_dir(path, layout: str) -> Path:
    """Return ``Path(path)`` or raise :class:`MissingDataError` naming the expected ``layout``."""
    if path is None:
        raise MissingDataError(f"no data directory given; expected layout:\n{layout}")
    p = Path(path).expanduser()
    if not p.is_dir():
        what = "is a file, not a directory" if p.exists() else "does not exist"
        raise MissingDataError(f"{p} {what}; expected layout:\n{layout}")
    return p


def strip_ext(name: str) -> str:
    """File name without its extension(s): handles ``.nii.gz`` and ``.npy.h5``."""
    low = name.lower()
    for double in (".nii.gz", ".npy.h5"):
        if low.endswith(double):
            return name[: -len(double)]
    return os.path.splitext(name)[0]


def list_files(directory, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[Path]:
    """Files (not hidden, not directories) in ``directory`` whose name ends with one of ``extensions``, sorted."""
    d = Path(directory)
    exts = tuple(e.lower() for e in extensions)
    return sorted(p for p in d.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(exts))


def _first(names: Iterable[str], n: int = 5) -> str:
    names = sorted(names)
    s = ", ".join(names[:n])
    return s + (f", ... ({len(names)} in all)" if len(names) > n else "")


def pair_by_stem(images: Sequence[Path], masks: Sequence[Path], mask_suffixes: Sequence[str] = MASK_SUFFIXES,
                 image_dir=None, mask_dir=None, strict: bool = True) -> List[Tuple[Path, Path]]:
    """Pair image and mask files by file stem (never by sorted order).

    A mask ``X.ext`` or ``X<suffix>.ext`` (suffix one of ``mask_suffixes``, e.g. ``_segmentation``) pairs with
    the image ``X.*``. Raises :class:`DataError` listing the first unpaired names when an image has no mask or a
    mask no image (``strict``), or when a stem is ambiguous; with ``strict=False`` unpaired files are skipped.
    """
    img_by_stem: Dict[str, Path] = {}
    for p in images:
        s = strip_ext(p.name)
        if s in img_by_stem:
            raise DataError(f"two images share the stem {s!r}: {img_by_stem[s].name} and {p.name}; "
                            "rename one so that every image pairs with exactly one mask")
        img_by_stem[s] = p
    mask_by_stem: Dict[str, Path] = {}
    orphan_masks = []
    for p in masks:
        s = strip_ext(p.name)
        key = s if s in img_by_stem else None
        if key is None:
            for suf in mask_suffixes:
                if s.endswith(suf) and s[: -len(suf)] in img_by_stem:
                    key = s[: -len(suf)]
                    break
        if key is None:
            orphan_masks.append(p.name)
            continue
        if key in mask_by_stem:
            raise DataError(f"image {img_by_stem[key].name} has two masks: {mask_by_stem[key].name} and {p.name}")
        mask_by_stem[key] = p
    orphan_images = [img_by_stem[s].name for s in img_by_stem if s not in mask_by_stem]
    if strict and (orphan_images or orphan_masks):
        parts = []
        if orphan_images:
            parts.append(f"{len(orphan_images)} image(s) in {image_dir or 'the image folder'} have no mask: "
                         f"{_first(orphan_images, 50)}")
        if orphan_masks:
            parts.append(f"{len(orphan_masks)} mask(s) in {mask_dir or 'the mask folder'} have no image: "
                         f"{_first(orphan_masks, 50)}")
        raise DataError("; ".join(parts) + ". Images and masks are paired by file stem (a mask may add one of "
                        f"{', '.join(mask_suffixes[:4])}, ...); {reader_arg('strict', False)} skips unpaired files.")
    return [(img_by_stem[s], mask_by_stem[s]) for s in sorted(mask_by_stem)]


# ----------------------------------------------------------------------------------------------------------------
# image / mask decoding
# ----------------------------------------------------------------------------------------------------------------
def nonfinite_summary(array, locate: bool = False) -> Optional[str]:
    """``None`` when every value of ``array`` (NumPy or torch) is finite, else a short count of what is not, e.g.
    ``"3 NaN, 1 +inf of 4096 values"`` (with ``locate``: ``"..., the first at (4, 2, 0)"``, the index of the first
    non-finite value). Integer arrays are finite by construction (nothing is scanned)."""
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().float().numpy() if array.dtype.is_floating_point else None
        if array is None:
            return None
    a = np.asarray(array)
    if a.dtype.kind not in "fc":
        return None
    finite = np.isfinite(a)
    if finite.all():
        return None
    bad = a[~finite]
    parts = [(int(np.isnan(bad).sum()), "NaN"), (int(np.isposinf(bad).sum()), "+inf"),
             (int(np.isneginf(bad).sum()), "-inf")]
    where = ""
    if locate:
        first = np.unravel_index(int(np.flatnonzero(~finite.reshape(-1))[0]), a.shape)
        where = f", the first at {tuple(int(i) for i in first)}"
    return f"{', '.join(f'{n} {w}' for n, w in parts if n)} of {a.size} values{where}"


def _refuse_nonfinite(arr: np.ndarray, path) -> None:
    what = nonfinite_summary(arr)
    if what:
        raise DataError(f"image file {path} holds non-finite values ({what}); replace them (e.g. with 0 or the "
                        "image's minimum) before training or prediction")


def _open_pil(path):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise MissingDataError(f"file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image file {path} (corrupt or not an image: {e})") from None
    return im


def image_channels(path) -> int:
    """1 for grayscale/16-bit/float files, 3 for colour (palette, RGB, RGBA, CMYK) files."""
    im = _open_pil(path)
    return 1 if im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3


def read_image(path, channels: Optional[int] = None) -> np.ndarray:
    """Read a 2D image file into a float32 ``(H, W, C)`` array in the file's units (0..255 for 8-bit).

    Args:
        path: PNG/JPG/BMP/TIFF file.
        channels: 1 (grayscale; colour images are converted with ITU-R 601 luma), 3 (RGB; grayscale is
            repeated), or None to keep the file's own (1 for grayscale, 3 for colour; alpha is dropped).
    """
    im = _open_pil(path)
    mode = im.mode
    if mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(im).astype(np.float32)
        if mode == "1":
            arr = arr * 255.0
        if mode == "F":  # float TIFF: NaN / inf never reach a network (check, fit and predict name the file)
            _refuse_nonfinite(arr, path)
        arr = arr[..., None]
    elif mode == "LA":
        arr = np.asarray(im.getchannel(0)).astype(np.float32)[..., None]
    else:
        arr = np.asarray(im.convert("RGB")).astype(np.float32)
    if arr.ndim != 3:
        raise DataError(f"cannot read image file {path}: unexpected array shape {arr.shape}")
    if channels is None or channels == arr.shape[2]:
        return np.ascontiguousarray(arr)
    if channels == 3 and arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if channels == 1 and arr.shape[2] == 3:
        return (arr @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")


def read_mask_raw(path) -> np.ndarray:
    """Raw mask values: palette images give palette indices, RGB masks ``(H, W, 3)`` (unless gray), else ``(H, W)``."""
    im = _open_pil(path)
    if im.mode == "P":
        return np.asarray(im).astype(np.int64)
    if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        arr = np.asarray(im.convert("RGB")).astype(np.int64)
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
            return arr[..., 0]
        return arr
    if im.mode == "LA":
        return np.asarray(im.getchannel(0)).astype(np.int64)
    arr = np.asarray(im)
    if arr.dtype.kind == "f":
        if not np.all(arr == np.round(arr)):
            raise DataError(f"mask {path} holds non-integer values; masks must hold class indices")
    arr = arr.astype(np.int64)
    if im.mode == "1":
        arr = arr.astype(bool).astype(np.int64)
    return arr


def unique_values(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` (sorted distinct values); for non-negative integer masks by counting, O(n) instead of a
    sort (a 1024x768 mask: about 3 ms instead of 100 ms)."""
    if a.size and a.dtype.kind in "iu":
        lo, hi = int(a.min()), int(a.max())
        if lo >= 0 and hi < (1 << 20):
            return np.flatnonzero(np.bincount(a.reshape(-1))).astype(a.dtype)
    return np.unique(a)


def _colour_map_example(cols) -> str:
    """``{"r,g,b": class}`` for the CLI (JSON keys are strings), ``{(r, g, b): class}`` for Python."""
    cols = [tuple(int(v) for v in c) for c in cols][:8]
    if current_style() == "cli":
        return "{" + ", ".join(f'"{r},{g},{b}": {i}' for i, (r, g, b) in enumerate(cols)) + "}"
    return "{" + ", ".join(f"{c}: {i}" for i, c in enumerate(cols)) + "}"


def decode_mask(raw: np.ndarray, num_classes: int, label_map: Optional[Mapping] = None,
                threshold: Optional[int] = None, source: str = "mask") -> np.ndarray:
    """Turn raw mask values into class indices ``0..num_classes-1`` (int64, ``(H, W)``).

    Rules, in order:
      * ``label_map`` given: every raw value (an int, or an ``(r, g, b)`` tuple for colour masks) must be a key;
        it is replaced by its class.
      * ``threshold`` given (binary sets only): ``raw >= threshold`` is foreground (for lossy JPEG masks).
      * binary sets (``num_classes == 2``): values ``{0, 1}`` or ``{0, 255}`` (any non-empty subset).
      * otherwise values must already lie in ``0..num_classes-1``.
    Anything else raises :class:`DataError` stating the values found.
    """
    if label_map is not None:
        lut_keys = list(label_map.keys())
        if raw.ndim == 3:
            flat = raw.reshape(-1, raw.shape[-1])
            colours, inv = np.unique(flat, axis=0, return_inverse=True)
            out = np.empty(len(colours), np.int64)
            unknown = []
            norm = {tuple(int(v) for v in k) if isinstance(k, (tuple, list)) else k: c for k, c in label_map.items()}
            for i, col in enumerate(colours):
                key = tuple(int(v) for v in col)
                if key not in norm:
                    unknown.append(key)
                else:
                    out[i] = norm[key]
            if unknown:
                raise DataError(f"{source}: colours {unknown[:8]} are not in label_map (keys {lut_keys[:8]})")
            return out[inv.reshape(-1)].reshape(raw.shape[:2])
        vals = unique_values(raw)
        unknown = [int(v) for v in vals if int(v) not in label_map]
        if unknown:
            raise DataError(f"{source}: values {unknown[:16]} are not in label_map (keys {lut_keys[:16]})")
        lut_vals = np.array([label_map[int(v)] for v in vals], np.int64)
        return lut_vals[np.searchsorted(vals, raw)]
    if raw.ndim == 3:
        cols = np.unique(raw.reshape(-1, raw.shape[-1]), axis=0)[:8]
        raise DataError(f"{source} is a colour (RGB) mask with colours {[tuple(int(v) for v in c) for c in cols]}; "
                        f"pass {reader_arg('label_map', None, _colour_map_example(cols))} to decode it")
    if threshold is not None:
        if num_classes != 2:
            raise ValueError("mask_threshold only applies to binary data sets (num_classes=2)")
        return (raw >= threshold).astype(np.int64)
    vals = unique_values(raw)
    if num_classes == 2:
        if vals.size and set(vals.tolist()) <= {0, 255}:
            return (raw == 255).astype(np.int64)
        if set(vals.tolist()) <= {0, 1}:
            return raw.astype(np.int64)
        hint = (f"; a lossy (JPEG) mask needs {reader_arg('mask_threshold', 128)}" if len(vals) > 3 else "")
        raise DataError(f"{source}: binary mask expected (values 0/1 or 0/255) but found values "
                        f"{vals[:16].tolist()}{' ...' if len(vals) > 16 else ''}; for a multi-class mask pass "
                        f"{reader_arg('num_classes', int(vals.max()) + 1)} or a label_map{hint}")
    bad = vals[(vals < 0) | (vals >= num_classes)]
    if bad.size:
        raise DataError(f"{source}: mask values {bad[:16].tolist()} are outside the label set 0..{num_classes - 1} "
                        f"(values found: {vals[:16].tolist()}); pass "
                        f"{reader_arg('num_classes', int(vals.max()) + 1)} or a label_map")
    return raw.astype(np.int64)


def read_mask(path, num_classes: int = 2, label_map: Optional[Mapping] = None,
              threshold="auto") -> np.ndarray:
    """Read and decode a mask file (see :func:`decode_mask`). ``threshold="auto"``: 128 for JPEG masks of binary
    sets (lossy compression blurs 0/255), exact values otherwise."""
    raw = read_mask_raw(path)
    if threshold == "auto":
        threshold = 128 if (num_classes == 2 and label_map is None and raw.ndim == 2
                            and str(path).lower().endswith(LOSSY_EXTENSIONS)) else None
    return decode_mask(raw, num_classes, label_map, threshold, source=f"mask {path}")


# ----------------------------------------------------------------------------------------------------------------
# samples
# ----------------------------------------------------------------------------------------------------------------
def _check_pair(image: np.ndarray, mask: np.ndarray, where: str):
    if image.ndim != 3:
        raise DataError(f"{where}: image must be (H, W, C), got shape {tuple(image.shape)}")
    if mask.ndim != 2:
        raise DataError(f"{where}: mask must be (H, W), got shape {tuple(mask.shape)}")
    if image.shape[:2] != mask.shape:
        raise DataError(f"{where}: image size {tuple(image.shape[:2])} differs from mask size {tuple(mask.shape)}")
    bad = nonfinite_summary(image)  # any float reader (h5 / npz slices, volumes): NaN / inf never reach a network
    if bad:
        raise DataError(f"{where}: image holds non-finite values ({bad}); replace them (e.g. with 0 or the "
                        "image's minimum) before training or prediction")


def to_sample(image: np.ndarray, mask: np.ndarray, meta: dict) -> Dict[str, Any]:
    """numpy ``(H, W, C)`` image + ``(H, W)`` mask -> the sample dict with tensors."""
    img = torch.from_numpy(np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1)))
    msk = torch.from_numpy(np.ascontiguousarray(np.asarray(mask).astype(np.int64)))
    return {"image": img, "mask": msk, "meta": meta}


class SegDataset(Dataset):
    """Base class of the 2D data sets. Subclasses set ``num_classes``, ``in_channels`` and implement
    ``__len__`` and ``load(index) -> (image float32 (H, W, C), mask int64 (H, W), meta dict)``."""

    num_classes: int = 2
    in_channels: int = 3
    is_volumetric: bool = False
    class_names: Optional[List[str]] = None

    def __init__(self, transform: Optional[Callable] = None):
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be a callable (image, mask) -> (image, mask), got {type(transform)}")
        self.transform = transform

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def _index(self, index) -> int:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a data set of {n} samples")
        return i

    def __getitem__(self, index) -> Dict[str, Any]:
        image, mask, meta = self.load(self._index(index))
        where = f"sample {meta.get('case_id', index)!r}"
        _check_pair(image, mask, where)
        if self.transform is not None:
            out = self.transform(image, mask)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError("transform must return a tuple (image, mask)")
            image, mask = out
            _check_pair(np.asarray(image), np.asarray(mask), where + " after transform")
        return to_sample(image, mask, meta)

    def case_ids(self) -> List[str]:
        """Case ids of all samples, in index order (no image is read where subclasses know them)."""
        return [self.load(i)[2]["case_id"] for i in range(len(self))]

    def verify(self, max_errors: int = 10) -> Dict[str, Any]:
        """Read every sample and check it (files readable, sizes match, mask values in the label set).

        Returns ``{"num_samples", "class_pixels"}``; raises :class:`DataError` listing the first problems.
        """
        errors = []
        counts = np.zeros(self.num_classes, np.int64)
        for i in range(len(self)):
            try:
                image, mask, meta = self.load(i)
                _check_pair(image, mask, f"sample {meta.get('case_id', i)!r}")
                counts += np.bincount(mask.reshape(-1), minlength=self.num_classes)[: self.num_classes]
            except DataError as e:
                errors.append(str(e))
                if len(errors) >= max_errors:
                    break
        if errors:
            raise DataError(f"{len(errors)} problem(s) found:\n  " + "\n  ".join(errors))
        return {"num_samples": len(self), "class_pixels": counts.tolist()}

    def volumes(self) -> "VolumeDataset":
        raise ValueError(f"{type(self).__name__} is a 2D data set and has no whole volumes; per-volume evaluation "
                         "needs a volumetric data set (acdc, synapse, nifti, nnunet with NIfTI, synthetic-cardiac)")


class ConcatSegDataset(SegDataset):
    """Several data sets with the same classes/channels as one (e.g. the five polyp test sets). Each sample's
    ``meta["subset"]`` names its data set, and its ``case_id`` is prefixed ``"<subset>/"`` so that ids stay
    unique across members (CVC-300 and CVC-ClinicDB both number their images 1, 2, ...)."""

    def __init__(self, datasets: Sequence[SegDataset], names: Optional[Sequence[str]] = None):
        super().__init__(None)
        if not datasets:
            raise DataError("nothing to concatenate")
        self.datasets = list(datasets)
        self.names = list(names) if names is not None else [str(i) for i in range(len(datasets))]
        self.num_classes = datasets[0].num_classes
        self.in_channels = datasets[0].in_channels
        self._offsets = np.cumsum([0] + [len(d) for d in datasets])

    def __len__(self):
        return int(self._offsets[-1])

    def _locate(self, i):
        j = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return j, i - int(self._offsets[j])

    def __getitem__(self, index):
        j, k = self._locate(self._index(index))
        s = self.datasets[j][k]
        s["meta"] = self._tag(s["meta"], j)
        return s

    def _tag(self, meta, j):
        name = self.names[j]
        return dict(meta, subset=name, case_id=f"{name}/{meta.get('case_id', '')}")

    def load(self, index):
        j, k = self._locate(index)
        img, msk, meta = self.datasets[j].load(k)
        return img, msk, self._tag(meta, j)


# ----------------------------------------------------------------------------------------------------------------
# volumes
# ----------------------------------------------------------------------------------------------------------------
class _LRU:
    def __init__(self, size: int):
        self.size = size
        self.data: "OrderedDict[int, Any]" = OrderedDict()

    def get(self, key, make):
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        val = make()
        if self.size > 0:
            self.data[key] = val
            while len(self.data) > self.size:
                self.data.popitem(last=False)
        return val


class VolumeSource:
    """How to read one volume: ``load() -> (image (C, D, H, W) float32, mask (D, H, W) int64, spacing tuple,
    spacing_known bool)`` plus ``depth`` (number of slices, known without reading the voxels) and ``case_id``."""

    def __init__(self, case_id: str, depth: int, load: Callable):
        self.case_id = case_id
        self.depth = int(depth)
        self._load = load

    def load(self):
        return self._load()


class VolumeDataset(Dataset):
    """Whole volumes of a data set, for per-volume evaluation. ``dataset[i]`` is
    ``{"image": FloatTensor (C, D, H, W), "mask": LongTensor (D, H, W), "meta": {"case_id", "spacing" (z, y, x),
    "spacing_known", "shape" (D, H, W), "original_size" (H, W)}}``; intensities raw, size original."""

    is_volumetric = True

    def __init__(self, sources: Sequence[VolumeSource], num_classes: int, in_channels: int,
                 class_names: Optional[List[str]] = None, cache_size: int = 0):
        if not sources:
            raise DataError("the volume data set is empty")
        self.sources = list(sources)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.class_names = class_names
        self._cache = _LRU(cache_size)

    def __len__(self):
        return len(self.sources)

    def load(self, index: int):
        src = self.sources[index]
        return self._cache.get(index, src.load)

    def __getitem__(self, index):
        n = len(self)
        i = int(index) + (n if int(index) < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {n} volumes")
        image, mask, spacing, known = self.load(i)
        meta = {"case_id": self.sources[i].case_id, "spacing": tuple(float(s) for s in spacing),
                "spacing_known": bool(known), "shape": tuple(int(s) for s in mask.shape),
                "original_size": tuple(int(s) for s in mask.shape[1:])}
        return {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                "mask": torch.from_numpy(np.ascontiguousarray(mask.astype(np.int64))), "meta": meta}

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


class VolumeSliceDataset(SegDataset):
    """2D slices of a list of volumes (index ``i`` -> volume, slice), with an LRU cache of decoded volumes."""

    is_volumetric = True

    def __init__(self, sources: Sequence[VolumeSource], num_classes: int, in_channels: int,
                 transform: Optional[Callable] = None, cache_size: int = 4, class_names=None):
        super().__init__(transform)
        if not sources:
            raise DataError("the data set is empty (no volumes)")
        self.sources = list(sources)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.class_names = class_names
        self.cache_size = cache_size
        self._cache = _LRU(cache_size)
        self._offsets = np.cumsum([0] + [s.depth for s in self.sources])

    def __len__(self):
        return int(self._offsets[-1])

    def load(self, index):
        v = int(np.searchsorted(self._offsets, index, side="right") - 1)
        k = index - int(self._offsets[v])
        image, mask, spacing, known = self._cache.get(v, self.sources[v].load)
        src = self.sources[v]
        img = np.ascontiguousarray(image[:, k].transpose(1, 2, 0), dtype=np.float32)
        meta = {"case_id": f"{src.case_id}_slice_{k}", "original_size": tuple(int(s) for s in mask.shape[1:]),
                "volume_id": src.case_id, "slice_index": int(k),
                "spacing": tuple(float(s) for s in spacing), "spacing_known": bool(known)}
        return img, mask[k].astype(np.int64), meta

    def case_ids(self):
        return [f"{s.case_id}_slice_{k}" for s in self.sources for k in range(s.depth)]

    def volumes(self) -> VolumeDataset:
        return VolumeDataset(self.sources, self.num_classes, self.in_channels, self.class_names,
                             cache_size=self.cache_size)


def volume_slices(volume: Dict[str, Any], transform: Optional[Callable] = None) -> torch.Tensor:
    """Slices of a volume sample as a batch ``(D, C, h, w)``, each passed through the 2D ``transform``
    (e.g. the eval pipeline: resize + normalise; the mask it returns is discarded). Predictions must then be
    resized back to ``volume["meta"]["original_size"]``."""
    image = volume["image"]
    if image.ndim == 3:
        image = image[None]
    image = image.numpy()
    mask = volume["mask"].numpy()
    out = []
    for d in range(image.shape[1]):
        img = np.ascontiguousarray(image[:, d].transpose(1, 2, 0))
        if transform is not None:
            img, _ = transform(img, mask[d])
        out.append(torch.from_numpy(np.ascontiguousarray(np.asarray(img, np.float32).transpose(2, 0, 1))))
    return torch.stack(out)


def collate_samples(batch: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Collate function keeping ``meta`` as a list of dicts (torch's default collate would transpose it)."""
    return {"image": torch.stack([b["image"] for b in batch]), "mask": torch.stack([b["mask"] for b in batch]),
            "meta": [b["meta"] for b in batch]}


def warn_once(msg: str):
    warnings.warn(msg, UserWarning, stacklevel=3)
