"""Writers of tiny instances of every data layout (real PNG/JPG/h5/npz/NIfTI files) for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_png(path: Path, arr: np.ndarray, mode=None, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    if palette is not None:
        im = Image.fromarray(arr.astype(np.uint8), "P")
        im.putpalette(palette)
    im.save(path)
    return path


def case_image(k: int, h=8, w=10, rgb=True) -> np.ndarray:
    """Image whose pixel (0, 0) encodes the case number ``k`` (uint8)."""
    rng = np.random.default_rng(k)
    arr = rng.integers(0, 200, (h, w, 3) if rgb else (h, w), dtype=np.uint8)
    arr[0, 0] = 200 + k
    return arr


def case_mask(k: int, h=8, w=10) -> np.ndarray:
    """Binary mask (0/1) whose foreground is a box whose width is ``k + 1`` (so masks are told apart)."""
    m = np.zeros((h, w), np.uint8)
    m[2:5, 1:2 + k] = 1
    return m


def write_h5(path: Path, image: np.ndarray, label: np.ndarray, spacing=None):
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image)
        f.create_dataset("label", data=label)
        if spacing is not None:
            f.attrs["spacing"] = np.asarray(spacing, np.float64)
    return path


def vol_label(k: int, d=3, h=8, w=8, num_classes=4) -> np.ndarray:
    lab = np.zeros((d, h, w), np.uint8)
    for z in range(d):
        for c in range(1, num_classes):
            lab[z, c % h, (z + k + c) % w] = c
    return lab


def write_nifti(path: Path, arr_xyz: np.ndarray, zooms=(1.0, 1.0, 1.0)):
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(arr_xyz, np.diag(list(zooms) + [1.0]))
    img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return path
