"""nnU-Net's volumetric preprocessing (spec/volumetric_pipeline.md §2-§4), its inverse, and its on-disk cache.

Forward, per case (nnU-Net's order): crop to the nonzero region (OR over channels of ``image != 0``, holes filled;
label voxels outside it that were 0 become -1) -> normalise per channel at the original spacing -> resample to the
plan's target spacing (images order 3, labels one-hot order 1 or nearest; thick-slice data "separate z": in-plane
with the order, along the coarse axis nearest).

Normalisation schemes (by channel name as nnU-Net maps them: "CT" -> CT, "nonorm", "zscore", "rescale_to_0_1",
"rgb_to_0_1", anything else -> zscore):
  * CT: clip to the 0.5 / 99.5 percentiles of the training set's foreground (label > 0) intensities, then subtract
    their mean and divide by max(std, 1e-8) (statistics of the unclipped pooled foreground).
  * zscore: per image; with ``use_mask_for_norm`` only the voxels inside the nonzero mask are used and normalised
    (outside stays 0). nnU-Net's rule: True iff the median relative size after cropping of the training cases is
    < 3/4 (e.g. skull-stripped brain MRI); CT channels never use the mask.

Target spacing: the median training spacing per axis, except the anisotropic rule (one axis >= 3x coarser than the
others *and* >= 3x fewer voxels: that axis takes the 10th percentile of its spacings, not finer than the others).

Inverse (:func:`invert_label`, :func:`invert_probabilities`): resample back to the cropped original shape (labels
one-hot order 1, probabilities order 1, same separate-z rule), paste into the original shape.

Deliberate differences from nnU-Net: resampling uses ``scipy.ndimage.affine_transform`` with align-corners=False
coordinates and edge (``nearest``) padding, which is what skimage's ``resize(mode="edge", anti_aliasing=False)``
computes through ``scipy.ndimage.zoom(grid_mode=True)``; the CT foreground statistics use every foreground voxel of
a case when it holds no more than its share of the 1e8-sample budget (nnU-Net always draws its share with
replacement, RandomState(1234); we draw the same way only above the budget).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from mambaseg.utils.fileio import atomic_write_bytes

from .base import DataError

__all__ = ["PreprocessPlan", "crop_to_nonzero", "nonzero_mask", "compute_target_spacing", "compute_new_shape",
           "separate_z_axis", "resample_image", "resample_label", "normalize", "plan_preprocessing",
           "preprocess_case", "invert_label", "invert_probabilities", "PreprocessCache", "ANISO_THRESHOLD",
           "FOREGROUND_SAMPLES"]

ANISO_THRESHOLD = 3.0
FOREGROUND_SAMPLES = int(1e8)      # nnU-Net's num_foreground_voxels_for_intensitystats (10e7)


# ----------------------------------------------------------------------------------------------------------------
# plan
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class PreprocessPlan:
    """What the forward pass does to every case (computed once from the training cases, see
    :func:`plan_preprocessing`)."""

    target_spacing: Tuple[float, float, float]
    normalization: List[str]                               # scheme per channel
    use_mask_for_norm: List[bool]                          # per channel
    intensity_properties: List[Optional[Dict[str, float]]]  # per channel (CT): mean, std, percentile_00_5, ..._99_5
    image_order: int = 3
    label_order: int = 1                                   # 1: one-hot linear, 0: nearest
    anisotropy_threshold: float = ANISO_THRESHOLD
    median_shape_after_crop: Optional[List[float]] = None
    median_relative_size_after_cropping: Optional[float] = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_spacing"] = [float(s) for s in self.target_spacing]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessPlan":
        d = dict(d)
        d["target_spacing"] = tuple(float(s) for s in d["target_spacing"])
        return cls(**d)


# ----------------------------------------------------------------------------------------------------------------
# cropping
# ----------------------------------------------------------------------------------------------------------------
def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """OR over channels of ``image != 0`` with holes filled (``image``: (C, I, J, K))."""
    from scipy.ndimage import binary_fill_holes

    m = np.any(image != 0, axis=0)
    return binary_fill_holes(m)


def crop_to_nonzero(image: np.ndarray, label: Optional[np.ndarray] = None):
    """Crop ``image`` (C, I, J, K) and ``label`` (I, J, K) to the bounding box of the nonzero mask.

    Returns ``(image, label, bbox, mask)``: ``bbox`` = ``[[lo, hi], x3]`` (hi exclusive) in original voxel indices,
    ``mask`` the cropped nonzero mask; in the cropped label, voxels outside the mask that were 0 become -1 (a
    label of -1 everywhere outside when ``label`` is None). An all-zero image keeps its whole extent."""
    mask = nonzero_mask(image)
    if mask.any():
        bbox = []
        for ax in range(3):
            other = tuple(a for a in range(3) if a != ax)
            nz = np.flatnonzero(mask.any(axis=other))
            bbox.append([int(nz[0]), int(nz[-1]) + 1])
    else:
        bbox = [[0, int(s)] for s in mask.shape]
    sl = tuple(slice(lo, hi) for lo, hi in bbox)
    image = image[(slice(None),) + sl]
    mask = mask[sl]
    if label is None:
        seg = np.where(mask, 0, -1).astype(np.int64)
    else:
        seg = np.array(label[sl], dtype=np.int64)
        seg[(seg == 0) & ~mask] = -1
    return image, seg, bbox, mask


# ----------------------------------------------------------------------------------------------------------------
# spacing and resampling
# ----------------------------------------------------------------------------------------------------------------
def compute_target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]],
                           threshold: float = ANISO_THRESHOLD) -> Tuple[float, float, float]:
    """nnU-Net's 3d_fullres target spacing: median per axis; the anisotropic rule for a thick-slice axis."""
    sp = np.asarray(spacings, np.float64)
    sh = np.asarray(shapes, np.float64)
    target = np.percentile(sp, 50, axis=0)
    size = np.percentile(sh, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    other_sp = [target[i] for i in others]
    other_sz = [size[i] for i in others]
    aniso_spacing = target[worst] > threshold * max(other_sp)
    aniso_voxels = size[worst] * threshold < min(other_sz)
    if aniso_spacing and aniso_voxels:
        t = np.percentile(sp[:, worst], 10)
        if t < max(other_sp):
            t = max(max(other_sp), t) + 1e-5
        target[worst] = t
    return tuple(float(x) for x in target)


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> Tuple[int, ...]:
    """``round(spacing / new_spacing * shape)`` per axis."""
    return tuple(int(round(float(s) / float(n) * int(d))) for d, s, n in zip(shape, spacing, new_spacing))


def _lowres_axes(spacing) -> List[int]:
    sp = np.asarray(spacing, float)
    return [int(i) for i in np.flatnonzero(sp == sp.max())]


def separate_z_axis(current_spacing, new_spacing, threshold: float = ANISO_THRESHOLD) -> Optional[int]:
    """The axis resampled separately (nearest) for thick-slice data, or None (nnU-Net's
    ``determine_do_sep_z_and_axis``: max/min spacing > threshold in the current, else the new spacing; exactly one
    coarsest axis)."""
    for sp in (current_spacing, new_spacing):
        sp = np.asarray(sp, float)
        if sp.max() / sp.min() > threshold:
            axes = _lowres_axes(sp)
            return axes[0] if len(axes) == 1 else None
    return None


def _zoom(arr: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """Resize a 3-D array to ``new_shape`` (align-corners=False coordinates, edge padding)."""
    from scipy.ndimage import affine_transform

    new_shape = tuple(int(s) for s in new_shape)
    if tuple(arr.shape) == new_shape:
        return arr.astype(np.float32, copy=True) if arr.dtype != np.float32 else arr.copy()
    scale = np.array([i / o for i, o in zip(arr.shape, new_shape)], np.float64)
    offset = 0.5 * scale - 0.5
    return affine_transform(arr.astype(np.float32, copy=False), scale, offset=offset, output_shape=new_shape,
                            order=order, mode="nearest", prefilter=order > 1)


def _resample_float(arr: np.ndarray, new_shape, order: int, axis: Optional[int]) -> np.ndarray:
    if axis is None:
        return _zoom(arr, new_shape, order)
    inplane = list(arr.shape)
    for a in range(3):
        if a != axis:
            inplane[a] = new_shape[a]
    out = _zoom(arr, inplane, order)
    return _zoom(out, new_shape, 0)


def resample_image(image: np.ndarray, new_shape: Sequence[int], current_spacing, new_spacing, order: int = 3,
                   threshold: float = ANISO_THRESHOLD) -> np.ndarray:
    """Resample every channel of ``image`` (C, I, J, K) to ``new_shape`` (images order 3, probabilities order 1);
    unchanged when the shape is. Separate z (nearest along the coarse axis) per :func:`separate_z_axis`."""
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(image.shape[1:]) == new_shape:
        return np.asarray(image, np.float32)
    axis = separate_z_axis(current_spacing, new_spacing, threshold)
    return np.stack([_resample_float(c, new_shape, order, axis) for c in image]).astype(np.float32, copy=False)


def resample_label(label: np.ndarray, new_shape: Sequence[int], current_spacing, new_spacing, order: int = 1,
                   threshold: float = ANISO_THRESHOLD) -> np.ndarray:
    """Resample a label map (I, J, K): order 0 nearest; order >= 1 each value as a binary mask with that order,
    assigned where >= 0.5 (in sorted value order); along a separate-z axis nearest."""
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(label.shape) == new_shape:
        return np.array(label, copy=True)
    axis = separate_z_axis(current_spacing, new_spacing, threshold)
    if order == 0:
        return _zoom(label.astype(np.float32), new_shape, 0).round().astype(label.dtype)
    out = np.zeros(new_shape, label.dtype)
    for v in np.unique(label):
        m = (label == v).astype(np.float32)
        if axis is None:
            r = _zoom(m, new_shape, order)
        else:
            inplane = list(label.shape)
            for a in range(3):
                if a != axis:
                    inplane[a] = new_shape[a]
            r = _zoom((_zoom(m, inplane, order) >= 0.5).astype(np.float32), new_shape, 0)
        out[r >= 0.5] = v
    return out


# ----------------------------------------------------------------------------------------------------------------
# normalisation
# ----------------------------------------------------------------------------------------------------------------
def normalize(image: np.ndarray, seg: np.ndarray, plan: PreprocessPlan) -> np.ndarray:
    """Normalise each channel of the cropped ``image`` (C, I, J, K) by the plan's scheme; ``seg`` is the cropped
    label with -1 outside the nonzero mask (:func:`crop_to_nonzero`)."""
    out = np.empty(image.shape, np.float32)
    inside = seg >= 0
    for c in range(image.shape[0]):
        x = image[c].astype(np.float32, copy=True)
        scheme = plan.normalization[c]
        if scheme == "CT":
            p = plan.intensity_properties[c]
            if p is None:
                raise DataError(f"channel {c} is CT but the plan has no foreground intensity statistics")
            x = np.clip(x, p["percentile_00_5"], p["percentile_99_5"])
            x = (x - p["mean"]) / max(p["std"], 1e-8)
        elif scheme == "zscore":
            if plan.use_mask_for_norm[c]:
                vals = x[inside]
                if vals.size:
                    x[inside] = (vals - vals.mean()) / max(float(vals.std()), 1e-8)
            else:
                x = (x - x.mean()) / max(float(x.std()), 1e-8)
        elif scheme == "rescale_to_0_1":
            lo, hi = float(x.min()), float(x.max())
            x = (x - lo) / max(hi - lo, 1e-8)
        elif scheme == "rgb_to_0_1":
            x = x / 255.0
        elif scheme != "nonorm":
            raise DataError(f"unknown normalisation scheme {scheme!r} for channel {c}")
        out[c] = x
    return out


def _foreground_stats(samples: np.ndarray) -> Dict[str, float]:
    if samples.size == 0:
        return {"mean": 0.0, "std": 1.0, "median": 0.0, "min": 0.0, "max": 0.0,
                "percentile_00_5": 0.0, "percentile_99_5": 0.0}
    return {"mean": float(np.mean(samples)), "std": float(np.std(samples)), "median": float(np.median(samples)),
            "min": float(np.min(samples)), "max": float(np.max(samples)),
            "percentile_00_5": float(np.percentile(samples, 0.5)),
            "percentile_99_5": float(np.percentile(samples, 99.5))}


def plan_preprocessing(cases: Iterable[Tuple[np.ndarray, np.ndarray, Sequence[float]]],
                       normalization: Sequence[str], target_spacing: Optional[Sequence[float]] = None,
                       use_mask_for_norm=None, label_order: int = 1, image_order: int = 3,
                       foreground_samples: int = FOREGROUND_SAMPLES, n_cases: Optional[int] = None) -> PreprocessPlan:
    """The plan from the training cases, given as an iterable of ``(image (C, I, J, K), label (I, J, K) class
    indices, spacing)`` read one at a time (nnU-Net's dataset fingerprint: spacings, shapes after cropping,
    relative size after cropping, the foreground intensities of CT channels). ``n_cases``: the number of cases
    when ``cases`` is a generator (each case's share of the foreground sample budget)."""
    spacings, shapes, rel = [], [], []
    n_ch = len(normalization)
    if n_cases is None:
        cases = list(cases)
        n_cases = len(cases)
    n = max(int(n_cases), 1)
    per_case = max(int(foreground_samples // n), 1)
    fg: List[List[np.ndarray]] = [[] for _ in range(n_ch)]
    for image, label, spacing in cases:
        rs = np.random.RandomState(1234)  # nnU-Net seeds every case's draw alike
        if image.shape[0] != n_ch:
            raise DataError(f"a training case has {image.shape[0]} channel(s), the plan {n_ch}")
        cropped, seg, bbox, _ = crop_to_nonzero(image, label)
        spacings.append([float(s) for s in spacing])
        shapes.append(list(cropped.shape[1:]))
        rel.append(float(np.prod(cropped.shape[1:])) / float(np.prod(image.shape[1:])))
        fgm = seg > 0
        for c in range(n_ch):
            if normalization[c] != "CT":
                continue
            v = cropped[c][fgm]
            fg[c].append(v if v.size <= per_case or v.size == 0 else rs.choice(v, per_case, replace=True))
    if not spacings:
        raise DataError("no training case to plan the preprocessing from")
    median_rel = float(np.median(rel))
    if use_mask_for_norm is None:
        umn = [s == "zscore" and median_rel < 0.75 for s in normalization]
    elif isinstance(use_mask_for_norm, bool):
        umn = [bool(use_mask_for_norm) and s == "zscore" for s in normalization]
    else:
        umn = [bool(u) for u in use_mask_for_norm]
    for c in range(n_ch):
        if normalization[c] == "CT" and sum(v.size for v in fg[c]) == 0:
            raise DataError(f"channel {c} is CT but the training cases have no foreground voxel (label > 0) to take "
                            "its intensity statistics from; plan from labelled training cases or pass the plan of "
                            "the training run (plan=...)")
    props = [(_foreground_stats(np.concatenate(fg[c])) if normalization[c] == "CT" else None)
             for c in range(n_ch)]
    ts = (tuple(float(s) for s in target_spacing) if target_spacing is not None
          else compute_target_spacing(spacings, shapes))
    return PreprocessPlan(ts, list(normalization), umn, props, image_order, label_order,
                          median_shape_after_crop=[float(x) for x in np.median(np.asarray(shapes, float), 0)],
                          median_relative_size_after_cropping=median_rel)


def preprocess_case(image: np.ndarray, label: Optional[np.ndarray], spacing: Sequence[float],
                    plan: PreprocessPlan):
    """Crop -> normalise -> resample one case. Returns ``(image (C, ...) float32, label (...) int64 with -1
    outside the nonzero mask, props)``; ``props`` holds what :func:`invert_label` needs: original_shape, crop_bbox,
    shape_after_crop, original_spacing, spacing (target), preprocessed_shape."""
    if not np.all(np.isfinite(image)):
        raise DataError("the image holds NaN or inf voxels")
    original_shape = tuple(int(s) for s in image.shape[1:])
    cropped, seg, bbox, _ = crop_to_nonzero(image, label)
    normed = normalize(cropped, seg, plan)
    new_shape = compute_new_shape(cropped.shape[1:], spacing, plan.target_spacing)
    img = resample_image(normed, new_shape, spacing, plan.target_spacing, plan.image_order,
                         plan.anisotropy_threshold)
    lab = resample_label(seg, new_shape, spacing, plan.target_spacing, plan.label_order, plan.anisotropy_threshold)
    props = {"original_shape": original_shape, "crop_bbox": bbox,
             "shape_after_crop": tuple(int(s) for s in cropped.shape[1:]),
             "original_spacing": tuple(float(s) for s in spacing), "spacing": tuple(plan.target_spacing),
             "preprocessed_shape": tuple(int(s) for s in img.shape[1:]),
             "anisotropy_threshold": plan.anisotropy_threshold}
    return img, lab.astype(np.int64), props


# ----------------------------------------------------------------------------------------------------------------
# inverse
# ----------------------------------------------------------------------------------------------------------------
def _paste(arr: np.ndarray, props: dict, fill, lead: Tuple[int, ...] = ()) -> np.ndarray:
    out = np.full(lead + tuple(props["original_shape"]), fill, arr.dtype)
    sl = tuple(slice(lo, hi) for lo, hi in props["crop_bbox"])
    out[(Ellipsis,) + sl] = arr
    return out


def invert_label(label: np.ndarray, props: dict, order: int = 1) -> np.ndarray:
    """A label map at the preprocessed grid -> the original grid (resample to the cropped shape, one-hot order 1
    by default, then paste into zeros of the original shape). -1 voxels become 0."""
    lab = resample_label(np.asarray(label), props["shape_after_crop"], props["spacing"], props["original_spacing"],
                         order, props.get("anisotropy_threshold", ANISO_THRESHOLD))
    lab = np.where(lab < 0, 0, lab)
    return _paste(lab, props, 0)


def invert_probabilities(probs: np.ndarray, props: dict, regions: bool = False) -> np.ndarray:
    """Per-class probabilities (K, ...) at the preprocessed grid -> the original grid (order 1, separate-z rule),
    pasted into the original shape; outside the crop the background (channel 0) is 1 unless ``regions``."""
    p = resample_image(np.asarray(probs, np.float32), props["shape_after_crop"], props["spacing"],
                       props["original_spacing"], 1, props.get("anisotropy_threshold", ANISO_THRESHOLD))
    out = _paste(p, props, np.float32(0), (p.shape[0],))
    if not regions:
        sl = tuple(slice(lo, hi) for lo, hi in props["crop_bbox"])
        bg = np.ones(tuple(props["original_shape"]), np.float32)
        bg[sl] = p[0]
        out[0] = bg
    return out


# ----------------------------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------------------------
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Durably (temp file, fsync, rename; a full disk or a read-only folder is one line), making the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(str(path), data)


def file_fingerprint(paths: Sequence[Path]) -> List[List]:
    """``[path, size, mtime_ns]`` of each file (a changed, replaced or touched file changes it)."""
    out = []
    for p in paths:
        p = Path(p)
        try:
            st = p.stat()
            out.append([str(p.resolve()), int(st.st_size), int(st.st_mtime_ns)])
        except OSError:
            out.append([str(p), -1, -1])
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class PreprocessCache:
    """Preprocessed cases and the plan on disk: ``<folder>/<key>/plan.json`` and
    ``<folder>/<key>/<case>-<case key>/{image.npy, label.npy, props.json}``; ``key`` is a fingerprint of the training files (paths, sizes,
    mtimes) and the settings, a case key that of the case's own files. Written durably (temp + fsync + rename).
    ``computed`` counts the cases preprocessed (not read from the cache) by this object."""

    VERSION = 1

    def __init__(self, folder, train_files: Sequence[Path], settings: dict):
        self.key = _digest({"v": self.VERSION, "files": file_fingerprint(train_files), "settings": settings})[:20]
        self.folder = Path(folder) / self.key
        self.computed = 0

    def plan(self, make: Callable[[], PreprocessPlan]) -> PreprocessPlan:
        p = self.folder / "plan.json"
        if p.is_file():
            try:
                return PreprocessPlan.from_dict(json.loads(p.read_text()))
            except (ValueError, TypeError, KeyError):
                pass  # unreadable: recompute and overwrite
        plan = make()
        _atomic_write_bytes(p, json.dumps(plan.to_dict(), indent=1).encode())
        return plan

    def case_path(self, case_id: str, files: Sequence[Path]) -> Path:
        """The case's folder: ``image.npy``, ``label.npy`` and ``props.json`` (written last: it marks the case
        complete)."""
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in case_id)
        return self.folder / f"{safe}-{_digest(file_fingerprint(files))[:12]}"

    def case(self, case_id: str, files: Sequence[Path], make: Callable, mmap: bool = False):
        """``(image, label, props)`` from the cache, else ``make()`` written to it. With ``mmap`` the image and
        label read from the cache are read-only memory maps (patch sampling reads only the patch)."""
        d = self.case_path(case_id, files)
        if (d / "props.json").is_file():
            try:
                mode = "r" if mmap else None
                image = np.load(d / "image.npy", mmap_mode=mode, allow_pickle=False)
                label = np.load(d / "label.npy", mmap_mode=mode, allow_pickle=False)
                return image, label, json.loads((d / "props.json").read_text())
            except (OSError, ValueError):
                pass  # unreadable: recompute and overwrite
        image, label, props = make()
        props = json.loads(json.dumps(props))
        self.computed += 1
        lab = label.astype(np.int8 if label.min(initial=0) >= -128 and label.max(initial=0) < 128 else np.int32)
        for name, arr in (("image.npy", image.astype(np.float32, copy=False)), ("label.npy", lab)):
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            _atomic_write_bytes(d / name, buf.getvalue())
        _atomic_write_bytes(d / "props.json", json.dumps(props).encode())
        return image, label, props
