"""NIfTI volumes (``.nii``, ``.nii.gz``): sliced to 2D for training, kept whole (with spacing) for evaluation.

Layouts (``root`` is what you pass)::

    root/{images|imagesTr|image|volumes}/<case>[_0000].nii.gz + root/{labels|labelsTr|masks|gt}/<case>.nii.gz
    root/<case>.nii.gz + root/<case>_gt.nii.gz      # one folder; label suffix _gt|_seg|_label|_mask (ACDC's own)

Axes: nibabel returns voxel arrays as ``(x, y, z[, c])``; we transpose to ``(z, y, x)`` = ``(D, H, W)`` (what
SimpleITK's ``GetArrayFromImage``, SSL4MIS and nnU-Net's 2D configuration use) and slice along ``z``. Spacing
comes from the header (``get_zooms``) in the same order, ``(z, y, x)``, in the file's units (mm).
A 4-D image ``(x, y, z, c)`` gives ``C = c`` channels.

Splits: ``split="all"`` = every case; ``"train"/"val"/"test"`` = the cases of ``split_file`` (JSON
``{split: [case ids]}``) or of ``ratio_split(case ids, ratios, seed)`` (default ratios 0.7/0.1/0.2, by case).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .base import DataError, MissingDataError, VolumeSliceDataset, VolumeSource, pair_by_stem, require_dir, strip_ext
from .hints import reader_arg
from .folders import split_pairs

__all__ = ["NiftiDataset", "read_nifti", "save_nifti", "nifti_pairs", "NIFTI_EXTENSIONS", "NiftiVolume",
           "nifti_header", "read_nifti_volume"]

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
NIFTI_LAYOUT = """  root/images/<case>.nii.gz + root/labels/<case>.nii.gz   (also imagesTr/labelsTr, masks, gt; image may end _0000)
  or root/<case>.nii.gz + root/<case>_gt.nii.gz   (label suffix _gt, _seg, _label or _mask)"""


def read_nifti(path, label: bool = False) -> Tuple[np.ndarray, Tuple[float, float, float]]:
    """Array and spacing of a NIfTI file. Image: float32 ``(D, H, W)`` or ``(C, D, H, W)`` for 4-D files; label:
    int64 ``(D, H, W)`` (must hold integers). Spacing ``(z, y, x)``. 2-D files give ``D = 1``."""
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise MissingDataError(f"file not found: {p}")
    try:
        img = nib.load(str(p))
        arr = np.asanyarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except Exception as e:  # nibabel raises many types for corrupt files (ImageFileError, EOFError, zlib.error)
        raise DataError(f"cannot read NIfTI file {p} (corrupt or not NIfTI: {type(e).__name__}: {e})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
        zooms = zooms[:2] + (1.0,)
    if arr.ndim not in (3, 4):
        raise DataError(f"{p}: expected a 3-D (x, y, z) or 4-D (x, y, z, c) volume, got shape {arr.shape}")
    spacing = (zooms[2], zooms[1], zooms[0]) if len(zooms) >= 3 else (1.0, zooms[1], zooms[0])
    if label:
        if arr.ndim == 4:
            if arr.shape[3] != 1:
                raise DataError(f"label {p} has {arr.shape[3]} channels; a label map must be 3-D")
            arr = arr[..., 0]
        if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
            raise DataError(f"label {p} holds non-integer values")
        return np.ascontiguousarray(arr.astype(np.int64).transpose(2, 1, 0)), spacing
    arr = arr.astype(np.float32)
    out = arr.transpose(3, 2, 1, 0) if arr.ndim == 4 else arr.transpose(2, 1, 0)
    return np.ascontiguousarray(out), spacing


class NiftiVolume:
    """One NIfTI file read for the volumetric (3D) pipeline: ``array`` in nibabel's voxel order ``(i, j, k[, c])``
    (no transposition, see VOLUME_CONTRACT), ``affine`` (4x4), ``spacing`` (``get_zooms()[:3]``), ``header``."""

    __slots__ = ("path", "array", "affine", "spacing", "header", "shape", "dtype")

    def __init__(self, path, array, affine, spacing, header, shape, dtype):
        self.path, self.array, self.affine, self.spacing = Path(path), array, affine, spacing
        self.header, self.shape, self.dtype = header, shape, dtype


def _nib_load(p: Path):
    import nibabel as nib

    if not p.is_file():
        raise MissingDataError(f"file not found: {p}")
    try:
        if p.stat().st_size == 0:
            raise DataError(f"NIfTI file {p} is empty (0 bytes)")
        return nib.load(str(p))
    except DataError:
        raise
    except Exception as e:  # ImageFileError, EOFError, zlib.error, ...
        raise DataError(f"cannot read NIfTI file {p} (corrupt or not NIfTI: {type(e).__name__}: {e})") from None


def _raw_spacing(img, p: Path) -> Tuple[float, float, float]:
    """``pixdim[1:4]`` as stored: nibabel's header check silently replaces a zero pixdim by 1 (a spacing of zero
    would then read as 1 mm), so the check and the readers look at the stored values."""
    from nibabel.openers import ImageOpener

    zooms = tuple(float(z) for z in img.header.get_zooms())
    nd = min(len(img.shape), 3)
    try:
        with ImageOpener(str(p)) as f:
            raw = type(img.header).from_fileobj(f, check=False)
        pix = [float(x) for x in raw["pixdim"][1:1 + nd]]
        zooms = tuple(pix) + zooms[nd:]
    except Exception:
        pass
    return (zooms + (1.0, 1.0, 1.0))[:3]


def nifti_header(path) -> NiftiVolume:
    """Header of a NIfTI file (shape, dtype, affine, spacing) without reading the voxels (``array`` is None)."""
    p = Path(path)
    img = _nib_load(p)
    spacing = _raw_spacing(img, p)
    return NiftiVolume(p, None, np.asarray(img.affine, np.float64), spacing, img.header,
                       tuple(int(s) for s in img.shape), np.dtype(img.get_data_dtype()))


def read_nifti_volume(path, label: bool = False) -> NiftiVolume:
    """Read a NIfTI file whole, in nibabel's voxel order ``(i, j, k[, c])``. Images become float32, labels int64
    (they must hold integers). Raises :class:`DataError` naming the file when it is unreadable or truncated."""
    p = Path(path)
    img = _nib_load(p)
    try:
        arr = np.asanyarray(img.dataobj)
    except Exception as e:
        raise DataError(f"cannot read the voxels of NIfTI file {p} (truncated or corrupt: {type(e).__name__}: "
                        f"{e}); download or convert it again") from None
    spacing = _raw_spacing(img, p)
    if label:
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)):
                raise DataError(f"label {p} holds NaN or inf values")
            if not np.all(arr == np.round(arr)):
                raise DataError(f"label {p} holds non-integer values")
        arr = arr.astype(np.int64)
    else:
        arr = arr.astype(np.float32, copy=False)
    return NiftiVolume(p, arr, np.asarray(img.affine, np.float64), spacing, img.header,
                       tuple(int(s) for s in arr.shape), np.dtype(img.get_data_dtype()))


def nifti_shape(path) -> Tuple[int, ...]:
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception as e:
        raise DataError(f"cannot read NIfTI file {path} (corrupt or not NIfTI: {type(e).__name__}: {e})") from None
    if len(shape) == 2:
        shape = tuple(shape) + (1,)
    return tuple(int(s) for s in shape)


def save_nifti(array: np.ndarray, path, spacing=(1.0, 1.0, 1.0), reference=None, overwrite: bool = False) -> Path:
    """Write a ``(D, H, W)`` array as NIfTI. ``spacing`` is ``(z, y, x)``; with ``reference`` (a NIfTI path) its
    affine/header are reused. Refuses to overwrite an existing file unless ``overwrite=True``."""
    import nibabel as nib

    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists; pass overwrite=True to replace it")
    data = np.asarray(array).transpose(2, 1, 0)
    if data.dtype == np.int64:
        data = data.astype(np.int16 if data.max(initial=0) < 32768 else np.int32)
    if reference is not None:
        ref = nib.load(str(reference))
        img = nib.Nifti1Image(data, ref.affine, ref.header)
        img.set_data_dtype(data.dtype)
    else:
        affine = np.diag([float(spacing[2]), float(spacing[1]), float(spacing[0]), 1.0])
        img = nib.Nifti1Image(data, affine)
    p.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(p))
    return p


def _load_case(image_paths: Sequence[Path], label_path: Path, num_classes: int):
    chans, spacing = [], None
    for ip in image_paths:
        arr, sp = read_nifti(ip)
        spacing = spacing or sp
        chans.extend(arr if arr.ndim == 4 else [arr])
    image = np.stack(chans)
    label, _ = read_nifti(label_path, label=True)
    if image.shape[1:] != label.shape:
        raise DataError(f"image {image_paths[0]} has shape {image.shape[1:]} (D, H, W) but its label {label_path} has "
                        f"{label.shape}; they must match")
    vals = np.unique(label)
    bad = vals[(vals < 0) | (vals >= num_classes)]
    if bad.size:
        raise DataError(f"label {label_path}: values {bad[:16].tolist()} are outside the label set 0..{num_classes - 1} "
                        f"(values found: {vals[:16].tolist()}); pass {reader_arg('num_classes', int(vals.max()) + 1)} or "
                        "fix the labels")
    return image, label, spacing, True


def nifti_case_source(case_id: str, image_paths: Sequence[Path], label_path: Path, num_classes: int) -> VolumeSource:
    shape = nifti_shape(image_paths[0])
    return VolumeSource(case_id, shape[2], partial(_load_case, list(image_paths), label_path, num_classes))


_LABEL_DIRS = ("labels", "labelsTr", "masks", "label", "gt", "segmentations")
_IMAGE_DIRS = ("images", "imagesTr", "image", "volumes", "imgs")
_LABEL_SUFFIXES = ("_gt", "_seg", "_label", "_mask", "_labels", "_segmentation")


def nifti_pairs(root: Path, strict: bool = True) -> List[Tuple[str, Path, Path]]:
    """``(case id, image, label)`` triples of a NIfTI folder (module docstring)."""
    idir = next((root / n for n in _IMAGE_DIRS if (root / n).is_dir()), None)
    ldir = next((root / n for n in _LABEL_DIRS if (root / n).is_dir()), None)

    def nii(d):
        return sorted(p for p in d.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_EXTENSIONS))

    if idir is not None and ldir is not None:
        images, labels = nii(idir), nii(ldir)
        if not images:
            raise DataError(f"no .nii/.nii.gz images in {idir}")
        if not labels:
            raise DataError(f"no .nii/.nii.gz labels in {ldir}")
        # nnU-Net style single-channel names: case_0000.nii.gz -> case
        if all(strip_ext(p.name).endswith("_0000") for p in images):
            label_ids = {strip_ext(p.name) for p in labels}
            ren = {strip_ext(p.name)[:-5]: p for p in images}
            if set(ren) & label_ids:
                pairs = pair_by_stem([Path(k + ".nii.gz") for k in ren], labels, _LABEL_SUFFIXES, idir, ldir, strict)
                return [(strip_ext(a.name), ren[strip_ext(a.name)], b) for a, b in pairs]
        pairs = pair_by_stem(images, labels, _LABEL_SUFFIXES, idir, ldir, strict)
        return [(strip_ext(a.name), a, b) for a, b in pairs]
    if idir is not None or ldir is not None:
        raise MissingDataError(f"{root} has {'an image' if idir else 'a label'} folder but no "
                               f"{'label' if idir else 'image'} folder; expected layout:\n{NIFTI_LAYOUT}")
    files = nii(root)
    if not files:
        raise MissingDataError(f"no NIfTI files in {root}; expected layout:\n{NIFTI_LAYOUT}")
    stems = {strip_ext(p.name) for p in files}
    labels = [p for p in files if any(strip_ext(p.name).endswith(s) and strip_ext(p.name)[: -len(s)] in stems
                                      for s in _LABEL_SUFFIXES)]
    images = [p for p in files if p not in labels]
    if not labels:
        raise DataError(f"{root}: NIfTI files found but no labels (<case>_gt.nii.gz etc.); expected layout:\n"
                        f"{NIFTI_LAYOUT}")
    pairs = pair_by_stem(images, labels, _LABEL_SUFFIXES, root, root, strict)
    return [(strip_ext(a.name), a, b) for a, b in pairs]


def _infer_classes(labels: Sequence[Path]) -> int:
    mx = 1
    for lp in labels:
        arr, _ = read_nifti(lp, label=True)
        mx = max(mx, int(arr.max(initial=0)))
    return mx + 1


class NiftiDataset(VolumeSliceDataset):
    """NIfTI image/label volumes as 2D slices (``.volumes()``: whole volumes with spacing).

    Args:
        root: folder in one of the layouts of the module docstring.
        split: ``"all"``, ``"train"``, ``"val"`` or ``"test"``.
        transform: joint 2D transform applied to each slice.
        num_classes: classes incl. background; None reads every label once to find the largest value.
        ratios, seed, split_file: how ``train/val/test`` are chosen (by case).
        cache_size: decoded volumes kept in memory.
        strict: raise on unpaired files (default) rather than skip them.
    """

    def __init__(self, root, split: str = "all", transform: Optional[Callable] = None,
                 num_classes: Optional[int] = None, ratios=(0.7, 0.1, 0.2), seed: int = 0, split_file=None,
                 cache_size: int = 4, strict: bool = True, class_names=None):
        r = require_dir(root, NIFTI_LAYOUT)
        triples = nifti_pairs(r, strict)
        if num_classes is None:  # from all cases, so that every split agrees
            num_classes = _infer_classes([b for _, _, b in triples])
        if split not in ("all", None):

            fake = [(Path(c + ".nii.gz"), (a, b)) for c, a, b in triples]
            chosen = split_pairs(fake, split, ratios, seed, split_file, str(r))
            triples = [(strip_ext(c.name), ab[0], ab[1]) for c, ab in chosen]
        self.case_files = triples
        sources = [nifti_case_source(c, [a], b, num_classes) for c, a, b in triples]
        in_ch = nifti_shape(triples[0][1])
        super().__init__(sources, num_classes, in_ch[3] if len(in_ch) == 4 else 1, transform, cache_size,
                         class_names)
        self.split = split
