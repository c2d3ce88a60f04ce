"""Write a predicted label volume as NIfTI that overlays on its input (ITK-SNAP, 3D Slicer).

:func:`write_label_nifti` takes the label array in the input file's voxel order ``(i, j, k)`` exactly as nibabel
returns it (the volumetric contract; no transposition) and writes it with **the input's affine and header**
(sform/qform and their codes, units, orientation, description), as nnU-Net's ``write_seg`` copies spacing, origin
and direction from the input. The header is adapted only where a label map requires it:

* data type ``uint8`` when every label is < 255, else ``uint16`` (nnU-Net's rule; labels above 65535 or below 0
  are refused);
* scaling cleared (``scl_slope``/``scl_inter`` unset; an input stored with a slope must not rescale the labels);
* dimensions from the label array (a 4-D multi-channel input, e.g. a Decathlon image, gives a 3-D label file with
  the same affine); ``cal_min``/``cal_max`` set to the label range so viewers show every label.

The file is written durably (temporary file, fsync, rename: ``engine.io.atomic_path``) and an existing file is
kept unless ``overwrite=True``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np

from .io import atomic_path

__all__ = ["write_label_nifti", "label_dtype"]


def label_dtype(labels: np.ndarray) -> np.dtype:
    """``uint8`` if all labels are in 0..254, ``uint16`` up to 65535; otherwise a ``ValueError``."""
    if labels.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise ValueError(f"label volume holds negative values (min {lo}); a prediction has labels >= 0.")
    if hi > 65535:
        raise ValueError(f"label volume holds values up to {hi}; NIfTI label maps here are uint8/uint16 (<= 65535).")
    return np.dtype(np.uint8 if hi < 255 else np.uint16)


def _reference(reference: Any):
    import nibabel as nib

    if isinstance(reference, (str, os.PathLike)):
        return nib.load(os.fspath(reference))
    if hasattr(reference, "affine") and hasattr(reference, "header"):
        return reference
    if isinstance(reference, Mapping) and "affine" in reference:
        class _Ref:
            affine = np.asarray(reference["affine"], dtype=float)
            header = reference.get("header")
        return _Ref()
    raise TypeError(f"reference must be a NIfTI path, a nibabel image or a mapping with 'affine', got "
                    f"{type(reference).__name__}.")


def write_label_nifti(labels, path: Union[str, os.PathLike], reference: Any, overwrite: bool = False) -> Path:
    """Write ``labels`` (``(i, j, k)`` integers, numpy or torch) to ``path`` with ``reference``'s affine and header.

    Args:
        labels: label volume in the reference's voxel order; its shape must equal the reference's first 3 axes.
        path: output ``.nii.gz`` or ``.nii``.
        reference: the input image (a NIfTI path, a nibabel image, or ``{"affine": 4x4, "header": ...}``).
        overwrite: replace an existing file.

    Returns:
        the path written.
    """
    import nibabel as nib

    try:
        import torch

        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biu":
        if arr.dtype.kind == "f" and np.array_equal(arr, np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"labels must be integers, got dtype {arr.dtype}.")
    p = Path(path)
    if not p.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"prediction file {str(p)!r} must end in .nii.gz or .nii.")
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists; pass overwrite=True (--overwrite) to replace it.")
    ref = _reference(reference)
    ref_shape = tuple(getattr(ref, "shape", arr.shape))[:3]
    if arr.ndim != 3 or tuple(arr.shape) != ref_shape:
        raise ValueError(f"label volume shape {tuple(arr.shape)} differs from the input's {ref_shape}; undo the "
                         f"preprocessing (crop/resampling) before writing.")
    dtype = label_dtype(arr)
    data = arr.astype(dtype)
    header = ref.header.copy() if getattr(ref, "header", None) is not None else None
    img = nib.Nifti1Image(data, np.asarray(ref.affine, dtype=float), header)
    img.set_data_dtype(dtype)
    img.header.set_slope_inter(None, None)
    img.header["cal_min"] = 0
    img.header["cal_max"] = int(data.max()) if data.size else 0
    if header is not None:  # keep the input's sform/qform codes (nibabel would otherwise re-derive them)
        img.set_sform(np.asarray(ref.affine, dtype=float), int(header["sform_code"]))
        img.set_qform(np.asarray(ref.affine, dtype=float), int(header["qform_code"]))
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(str(p)) as tmp:
        nib.save(img, tmp)
    return p
