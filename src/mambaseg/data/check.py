"""Check a data set before training: every file opens, every image has its mask, sizes agree, mask values fit.

``check_dataset(ds, mode)`` walks one split and returns a :class:`SplitReport` (counts, sizes, classes present,
and *every* problem found, one line each, never only the first). ``mode``:

* ``"header"`` (default): images are opened and their header read (size, mode), PNG chunk checksums verified
  and JPEG files checked for their end-of-image marker (a truncated download), without decoding the pixels;
  masks are decoded in full (their values must fit the task). h5 volumes (ACDC, Synapse): both datasets present,
  shapes from the header, labels read; h5/npz slices and NIfTI volumes are read as the readers read them.
* ``"full"``: images are decoded too.

The engine runs it on every split ``fit`` uses before the run directory is touched (``--data.check``), and
``mambaseg check`` runs it alone.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np

from .acdc import H5SliceDataset, read_h5_volume
from .base import (ConcatSegDataset, DataError, SegDataset, VolumeSliceDataset, read_image, read_mask,
                   unique_values)
from .folders import PairedImageDataset
from .hints import in_caller_context

__all__ = ["CHECK_MODES", "SplitReport", "DataReport", "check_dataset", "image_header"]

CHECK_MODES = ("header", "full", "none")


@dataclass
class SplitReport:
    """What one split holds and what is wrong with it."""

    split: str
    samples: int = 0
    files: int = 0
    sizes: Counter = field(default_factory=Counter)      # (H, W) or (I, J, K) -> number of images / volumes
    classes: Set[int] = field(default_factory=set)        # class indices present in the masks
    problems: List[str] = field(default_factory=list)
    kind: str = ""
    spacings: Counter = field(default_factory=Counter)   # volumes: spacing (i, j, k) in mm -> number of volumes
    notes: List[str] = field(default_factory=list)       # said once, not problems (e.g. patches will be padded)

    def merge(self, other: "SplitReport") -> None:
        self.samples += other.samples
        self.files += other.files
        self.sizes.update(other.sizes)
        self.classes |= other.classes
        self.problems += other.problems
        self.spacings.update(other.spacings)
        self.notes += other.notes

    def size_text(self, n: int = 3) -> str:
        if not self.sizes:
            return "-"
        common = self.sizes.most_common(n)
        s = ", ".join("x".join(str(v) for v in size) + (f" ({c})" if len(self.sizes) > 1 else "")
                      for size, c in common)
        return s + (f", ... ({len(self.sizes)} sizes)" if len(self.sizes) > n else "")

    def spacing_text(self, n: int = 3) -> str:
        common = self.spacings.most_common(n)
        s = ", ".join("x".join(f"{v:g}" for v in sp) + (f" ({c})" if len(self.spacings) > 1 else "")
                      for sp, c in common)
        return s + (f", ... ({len(self.spacings)} spacings)" if len(self.spacings) > n else "")

    def line(self) -> str:
        status = "ok" if not self.problems else f"{len(self.problems)} problem(s)"
        cls = "{" + ", ".join(str(c) for c in sorted(self.classes)) + "}" if self.classes else "-"
        sp = f"  spacings (mm) {self.spacing_text()}" if self.spacings else ""
        return (f"{self.split:<14} {self.samples:>7} samples  {self.files:>7} files  sizes {self.size_text()}{sp}  "
                f"classes present {cls}  {status}")


@dataclass
class DataReport:
    """Reports of every split checked, in order."""

    dataset: str
    root: Optional[str]
    mode: str
    splits: List[SplitReport] = field(default_factory=list)

    @property
    def problems(self) -> List[str]:
        return [f"{s.split}: {p}" for s in self.splits for p in s.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = f"data check ({self.mode}) of {self.dataset!r}" + (f" at {self.root}" if self.root else "")
        lines = [head] + ["  " + s.line() for s in self.splits]
        notes = list(dict.fromkeys(n for s in self.splits for n in s.notes))
        return "\n".join(lines + [f"  note: {n}" for n in notes])

    def error_message(self, where: str = "", fix: str = "") -> str:
        probs = self.problems
        files = len(probs)
        msg = (f"the data check found {files} problem(s) in {self.dataset!r}"
               f"{' at ' + self.root if self.root else ''}{where}:\n  " + "\n  ".join(probs))
        return msg + (f"\n{fix}" if fix else "")


# --------------------------------------------------------------------------------------------------------------
def image_header(path, full: bool = False) -> Tuple[int, int]:
    """``(H, W)`` of an image file, raising :class:`DataError` when it is not a readable, complete image.

    Without ``full`` the pixels are not decoded: PNG chunk CRCs are verified (catches truncation and bit rot),
    JPEG files must end with the end-of-image marker ``FF D9``. With ``full`` the image is decoded."""
    if full:
        arr = read_image(path)
        return int(arr.shape[0]), int(arr.shape[1])
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise DataError(f"image file {p} is empty (0 bytes)")
        with Image.open(p) as im:
            w, h = im.size
            fmt = im.format
            floats = im.mode == "F"
            if fmt == "PNG":
                im.verify()
        if floats:  # a float image (TIFF) may hold NaN / inf: decoded even in header mode (read_image names them)
            read_image(p)
        if fmt == "JPEG":
            with open(p, "rb") as f:
                f.seek(max(0, p.stat().st_size - 4096))
                if b"\xff\xd9" not in f.read():
                    raise DataError(f"image file {p} is truncated (the JPEG has no end-of-image marker)")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"image file {p} not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise DataError(f"cannot read image file {p} (corrupt or not an image: {e})") from None
    if w <= 0 or h <= 0:
        raise DataError(f"image file {p} has size {w}x{h}")
    return int(h), int(w)


def _check_pair_files(ip: Path, mp: Path, ds, full: bool):
    probs, size, classes = [], None, set()
    try:
        size = image_header(ip, full)
    except DataError as e:
        probs.append(str(e))
    try:
        mask = read_mask(mp, ds.num_classes, getattr(ds, "label_map", None), getattr(ds, "mask_threshold", "auto"))
        classes = set(unique_values(mask).tolist())
        if size is not None and tuple(mask.shape) != size:
            probs.append(f"image {ip} is {size[0]}x{size[1]} but its mask {mp} is {mask.shape[0]}x{mask.shape[1]} "
                         "(H x W); image and mask must have the same size")
    except DataError as e:
        probs.append(str(e))
    return probs, size, classes, 2


def _check_sample(ds, i: int):
    try:
        image, mask, meta = ds.load(i)
    except DataError as e:
        return [str(e)], None, set(), 1
    if image.shape[:2] != mask.shape:
        return [f"sample {meta.get('case_id', i)!r}: image size {tuple(image.shape[:2])} differs from mask size "
                f"{tuple(mask.shape)}"], None, set(), 1
    from .base import nonfinite_summary
    bad = nonfinite_summary(image)
    if bad:
        return [f"sample {meta.get('case_id', i)!r}: image holds non-finite values ({bad})"], None, set(), 1
    return [], tuple(int(s) for s in mask.shape), set(unique_values(mask).tolist()), 1


def _h5_volume_header(path: Path, image_key: str, label_key: str):
    """Header check of an h5 volume: both datasets present, same 3-D shape; only the labels are read."""
    import h5py

    if not path.is_file():
        raise DataError(f"volume file {path} not found")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in (image_key, label_key) if k not in f]
            if missing:
                raise DataError(f"{path} has no dataset(s) {missing} (found {list(f.keys())})")
            shape = tuple(f[image_key].shape)
            label = np.asarray(f[label_key][()])
    except DataError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"cannot read h5 file {path} (corrupt or not HDF5: {e})") from None
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3-D volume (D, H, W), got shape {shape}")
    if label.dtype.kind == "f" and not np.all(label == np.round(label)):
        raise DataError(f"{path}: label holds non-integer values")
    return label.astype(np.int64), shape


def _nifti_shape_safe(path) -> Tuple[int, ...]:
    from .nifti import nifti_shape
    try:
        return nifti_shape(path)
    except Exception:
        return ()


def _check_volume(src, num_classes: int, full: bool = True, in_channels: Optional[int] = None):
    from functools import partial


    fn = getattr(src, "_load", None)
    image = None
    try:
        if not full and isinstance(fn, partial) and fn.func is read_h5_volume and len(fn.args) >= 2:
            path, _nc, *keys = fn.args
            mask, shape = _h5_volume_header(Path(path), *(keys + ["image", "label"][len(keys):]))
            if shape != tuple(mask.shape):
                return [f"{path}: image shape {shape} differs from label shape {tuple(mask.shape)}"], None, set(), 1, 0
            image_shape = (1,) + shape
        else:
            image, mask, _, _ = src.load()
            image_shape = image.shape
    except DataError as e:
        return [str(e)], None, set(), 1, 0
    probs = []
    from .base import nonfinite_summary
    nonfinite = nonfinite_summary(image) if image is not None else None
    if nonfinite:
        probs.append(f"volume {src.case_id!r}: image holds non-finite values ({nonfinite})")
    if in_channels is not None and len(image_shape) == 4 and image_shape[0] != in_channels:
        files = fn.args[0] if isinstance(fn, partial) and fn.args and isinstance(fn.args[0], list) else []
        four = [str(f) for f in files if len(_nifti_shape_safe(f)) == 4]
        what = f" ({', '.join(four)} is 4-D)" if four else ""
        probs.append(f"volume {src.case_id!r}: {image_shape[0]} channel(s){what} but the data set's first case has "
                     f"{in_channels}; every case needs the same channels (split a 4-D file into one 3-D file per "
                     "channel, or give every case the same layout)")
    if tuple(image_shape[1:]) != tuple(mask.shape):
        probs.append(f"volume {src.case_id!r}: image shape {tuple(image_shape[1:])} differs from label shape "
                     f"{tuple(mask.shape)}")
    vals = unique_values(np.asarray(mask))
    bad = vals[(vals < 0) | (vals >= num_classes)]
    if bad.size:
        probs.append(f"volume {src.case_id!r}: label values {bad[:16].tolist()} are outside the label set "
                     f"0..{num_classes - 1} (values found: {vals[:16].tolist()})")
    return probs, tuple(int(s) for s in mask.shape[1:]), set(vals.tolist()), 1, int(mask.shape[0])


def _workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


def _run(fn, items, report: SplitReport):
    task = in_caller_context(fn)  # the workers' fix hints in the caller's syntax (CLI flags or keywords)
    with ThreadPoolExecutor(_workers()) as pool:
        for probs, size, classes, nfiles in pool.map(lambda a: task(*a), items):
            report.problems += probs
            report.files += nfiles
            report.samples += 1
            if size is not None:
                report.sizes[size] += 1
            report.classes |= classes


def check_dataset(ds, mode: str = "header", split: str = "") -> SplitReport:
    """Check every sample (file) of the 2D data set ``ds`` (module docstring); never raises for bad files."""
    from torch.utils.data import Subset


    if mode not in ("header", "full"):
        raise ValueError(f"check mode must be 'header' or 'full', got {mode!r}")
    full = mode == "full"
    rep = SplitReport(split, kind=type(ds).__name__)
    while isinstance(ds, Subset):       # a carved split: check the whole data set it is carved from
        ds = ds.dataset
    if isinstance(ds, ConcatSegDataset):
        for name, member in zip(ds.names, ds.datasets):
            sub = check_dataset(member, mode, f"{split}/{name}")
            sub.problems = [f"[{name}] {p}" for p in sub.problems]
            rep.merge(sub)
        return rep
    from .volumetric import VolumetricDataset
    if isinstance(ds, VolumetricDataset):
        return check_volumetric(ds, mode, split)
    if isinstance(ds, PairedImageDataset):
        _run(_check_pair_files, [(ip, mp, ds, full) for ip, mp in ds.pairs], rep)
        return rep
    if isinstance(ds, VolumeSliceDataset) and not getattr(ds, "generated", False) and \
            type(ds).__module__ != "mambaseg.data.synthetic":
        def vol(src):
            probs, size, classes, nfiles, depth = _check_volume(src, ds.num_classes, full, ds.in_channels)
            return probs, size, classes, nfiles
        _run(vol, [(s,) for s in ds.sources], rep)
        rep.samples = len(ds)
        return rep
    if isinstance(ds, H5SliceDataset) or (isinstance(ds, SegDataset)
                                          and type(ds).__module__ != "mambaseg.data.synthetic"):
        _run(lambda i: _check_sample(ds, i), [(i,) for i in range(len(ds))], rep)
        return rep
    # generated (synthetic) sets: nothing on disk to check
    rep.samples = len(ds)
    rep.kind += " (generated, not checked)"
    return rep


def check_splits(datasets: Dict[str, object], mode: str, dataset: str, root: Optional[str]) -> DataReport:
    """A :class:`DataReport` over ``{split name: data set or error message or (data set, message)}``, in order;
    a message stands for a split whose reader refused the folder (missing split, unpaired files) and is reported
    as its problem."""
    report = DataReport(dataset, root, mode)
    for name, ds in datasets.items():
        if isinstance(ds, str):
            report.splits.append(SplitReport(name, problems=[ds]))
        elif isinstance(ds, tuple):  # (the data set of the files that do pair, the pairing problem)
            rep = check_dataset(ds[0], mode, name)
            rep.problems.insert(0, ds[1])
            report.splits.append(rep)
        else:
            report.splits.append(check_dataset(ds, mode, name))
    return report


# --------------------------------------------------------------------------------------------------------------
# volumetric (3D) data sets
# --------------------------------------------------------------------------------------------------------------
def _gzip_complete(path: Path, expected: int) -> bool:
    """A ``.nii.gz`` whose gzip trailer (ISIZE, the uncompressed size mod 2**32) matches ``expected`` is complete;
    otherwise the stream is decompressed to the end to be sure (multi-member files, odd writers)."""
    import gzip
    import zlib

    try:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = int.from_bytes(f.read(4), "little")
        if isize == expected % (1 << 32):
            return True
        with gzip.open(path, "rb") as g:
            while g.read(1 << 24):
                pass
        return True
    except (OSError, EOFError, zlib.error):
        return False


def _volume_file_problems(path: Path, full: bool):
    """(header or None, problems) of one NIfTI file: readable, complete, finite (full mode), spacing > 0."""
    from .base import nonfinite_summary
    from .nifti import nifti_header, read_nifti_volume

    try:
        h = nifti_header(path)
    except DataError as e:
        return None, [str(e)]
    probs = []
    nbytes = int(np.prod(h.shape)) * h.dtype.itemsize
    offset = int(h.header.get("vox_offset", 352)) if hasattr(h.header, "get") else 352
    if full:
        try:
            v = read_nifti_volume(path)
            bad = nonfinite_summary(v.array, locate=True)
            if bad:
                probs.append(f"{path} holds NaN or inf values ({bad}); fix or replace the file")
        except DataError as e:
            probs.append(str(e))
    elif str(path).lower().endswith(".gz"):
        if not _gzip_complete(path, offset + nbytes):
            probs.append(f"cannot read the voxels of NIfTI file {path} (truncated or corrupt .nii.gz); download or "
                         "convert it again")
    elif path.stat().st_size < offset + nbytes:
        probs.append(f"NIfTI file {path} is truncated ({path.stat().st_size} bytes, the header says "
                     f"{offset + nbytes}); download or convert it again")
    if any(float(z) <= 0 for z in h.spacing):
        probs.append(f"{path}: spacing {tuple(round(float(z), 4) for z in h.spacing)} has a zero or negative "
                     "value; fix the header's pixdim (nibabel: img.header.set_zooms)")
    return h, probs


def check_volume_case(case, vs, full: bool = False):
    """Check one case of a :class:`~mambaseg.data.volumes.VolumeSet` without raising: every channel file
    (readable, complete, 3-D, spacing, NaN/inf in full mode), channels on one grid, the label (readable, on the
    image's grid, values in the data set's labels). Returns ``(problems, shape, spacing, classes, files)``."""
    from .nifti import NiftiVolume, read_nifti_volume
    from .volumes import four_d_message, geometry_mismatch, label_to_index, two_d_message

    probs = list(case.problems)
    heads = []
    for f in case.images:
        if case.problems and not Path(f).exists():
            continue  # the reader's problem already names it
        h, p = _volume_file_problems(Path(f), full)
        probs += p
        if h is None:
            continue
        nd = len(h.shape)
        if case.four_d:
            want = vs.in_channels
            got = h.shape[3] if nd == 4 else 1
            if nd not in (3, 4) or got != want or (nd == 3 and h.shape[2] == 1):
                probs.append(f"{f}: shape {h.shape} but the data set declares {want} channel(s) "
                             f"({', '.join(vs.channel_names)}): a Decathlon image is 4-D (x, y, z, channel)")
                continue
        elif nd == 4 and h.shape[3] > 1:
            probs.append(four_d_message(f, h.shape))
            continue
        elif nd == 2 or (nd >= 3 and h.shape[2] == 1):
            probs.append(two_d_message(f, h.shape))
            continue
        heads.append(h)
    shape = spacing = None
    if heads:
        ref = heads[0]
        shape = tuple(int(s) for s in ref.shape[:3])
        spacing = tuple(round(float(s), 4) for s in ref.spacing)
        for h in heads[1:]:
            why = geometry_mismatch(ref, h)
            if why is not None:
                probs.append(f"case {case.case_id!r}: channel file {h.path.name} differs from {ref.path.name} in "
                             f"{why}; all channels must share one grid")
    classes = set()
    if case.label is not None and not (case.problems and not Path(case.label).exists()):
        try:
            lv = read_nifti_volume(case.label, label=True)
            arr = lv.array[..., 0] if lv.array.ndim == 4 and lv.array.shape[3] == 1 else lv.array
            lv = NiftiVolume(lv.path, arr, lv.affine, lv.spacing, lv.header, arr.shape, lv.dtype)
            if any(float(z) <= 0 for z in lv.spacing):
                probs.append(f"{lv.path}: spacing {tuple(round(float(z), 4) for z in lv.spacing)} has a zero or "
                             "negative value; fix the header's pixdim (nibabel: img.header.set_zooms)")
            if heads:
                why = geometry_mismatch(heads[0], lv)
                if why is not None:
                    probs.append(f"case {case.case_id!r}: label {lv.path.name} differs from image "
                                 f"{heads[0].path.name} in {why}; the label must lie on the image's grid")
            idx = label_to_index(arr, vs.label_values, f"case {case.case_id!r}: label {lv.path}")
            classes = set(unique_values(idx).tolist())
        except DataError as e:
            probs.append(str(e))
    return probs, shape, spacing, classes, len(case.files)


def check_volumetric(ds, mode: str = "header", split: str = "") -> SplitReport:
    """Check every case of a :class:`~mambaseg.data.volumetric.VolumetricDataset` (all problems, one line each),
    the data set's own problems (a dataset.json that does not match the files), and note once when the training
    patch is larger than every volume (they are padded)."""
    full = mode == "full"
    vs = ds.volume_set
    rep = SplitReport(split, kind=f"{type(ds).__name__} ({vs.layout})")
    if not split or split.split(" ")[0] in ("train", "all"):
        rep.problems += list(vs.problems)
    rep.notes += list(getattr(vs, "notes", []))
    with ThreadPoolExecutor(_workers()) as pool:
        results = list(pool.map(lambda c: check_volume_case(c, vs, full), ds.cases))
    for probs, shape, spacing, classes, nfiles in results:
        rep.problems += probs
        rep.files += nfiles
        rep.samples += 1
        if shape is not None:
            rep.sizes[shape] += 1
            rep.spacings[spacing] += 1
        rep.classes |= classes
    patch = getattr(ds, "patch_size", None)
    if patch is not None and rep.sizes:
        from .preprocess import compute_new_shape
        target = ds._settings.get("target_spacing") or (ds._plan.target_spacing if ds._plan is not None else None)
        shapes = list(rep.sizes)
        if target is not None:
            sp = next(iter(rep.spacings))
            shapes = [compute_new_shape(s, sp, target) for s in shapes]
        if all(any(int(p) > int(d) for p, d in zip(patch, s)) for s in shapes):
            big = max(shapes, key=lambda s: int(np.prod(s)))
            rep.notes.append(f"the patch {tuple(int(p) for p in patch)} is larger than every volume (largest "
                             f"{tuple(big)}); volumes are padded to the patch size")
    if not full and rep.samples:
        rep.kind += " (float images: NaN/inf checked with --data.check full)"
    return rep
