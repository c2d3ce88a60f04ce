"""Writers of tiny volumetric data sets laid out exactly as each format ships (real .nii.gz files): BraTS 2020 and
2023 naming, Decathlon 4-D, nnU-Net v2 raw, per-case folders. Volumes are 8-16 voxels a side, with anisotropic
spacing and a non-identity affine (a rotation, an axis flip and an origin), a zero border (for cropping) and nested
label blobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

SHAPE = (12, 10, 8)                 # (i, j, k) as nibabel returns it
SPACING = (0.8, 0.9, 3.0)           # thick slices along k


def affine_for(spacing=SPACING, seed: int = 0) -> np.ndarray:
    """A non-identity affine: rotation about k by 30 degrees, axis j flipped, an origin; columns scaled by spacing."""
    t = np.deg2rad(30.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])
    rot = rot @ np.diag([1.0, -1.0, 1.0])
    aff = np.eye(4)
    aff[:3, :3] = rot * np.asarray(spacing, float)[None, :]
    aff[:3, 3] = [-10.0 - seed, 20.0, 5.5]
    return aff


def write_nii(path: Path, arr: np.ndarray, affine: np.ndarray, dtype=None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(arr)
    if dtype is not None:
        a = a.astype(dtype)
    img = nib.Nifti1Image(a, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def case_label(k: int, shape=SHAPE, values=(1, 2, 4)) -> np.ndarray:
    """Nested blobs: outer value ``values[1]`` (oedema), core ``values[0]``, inner ``values[2]``; shifted by case."""
    i, j, kk = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = np.array(shape) / 2.0 + np.array([k % 2, 0, 0]) - 0.5
    r = np.sqrt(((i - c[0]) / 3.5) ** 2 + ((j - c[1]) / 3.0) ** 2 + ((kk - c[2]) / 2.5) ** 2)
    lab = np.zeros(shape, np.uint8)
    lab[r < 1.0] = values[1]
    lab[r < 0.7] = values[0]
    lab[r < 0.4] = values[2]
    return lab


def case_image(k: int, ch: int, shape=SHAPE, border: int = 2) -> np.ndarray:
    """Positive intensities inside a box (zero border of ``border`` voxels, so cropping has work to do)."""
    rng = np.random.default_rng(100 * k + ch)
    img = np.zeros(shape, np.float32)
    inner = tuple(slice(border, s - border) for s in shape)
    img[inner] = rng.uniform(50, 150, [s - 2 * border for s in shape]).astype(np.float32) + 20 * ch
    img[border:border + 2, border:border + 2, :] = 0   # a zero corner inside the box: outside the nonzero mask
    img += 40.0 * (case_label(k, shape) > 0)
    return img


def brats2020(root: Path, n: int = 3, unlabelled: int = 0) -> Path:
    """MICCAI_BraTS2020_TrainingData/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz, labels 0/1/2/4."""
    for k in range(n + unlabelled):
        case = f"BraTS20_Training_{k + 1:03d}"
        aff = affine_for(seed=k)
        for ch, name in enumerate(("flair", "t1", "t1ce", "t2")):
            write_nii(root / case / f"{case}_{name}.nii.gz", case_image(k, ch), aff, np.int16)
        if k < n:
            write_nii(root / case / f"{case}_seg.nii.gz", case_label(k), aff, np.uint8)
    return root


def brats2023(root: Path, n: int = 3) -> Path:
    """BraTS 2023 GLI: <case>/<case>-{t1c,t1n,t2f,t2w,seg}.nii.gz, labels 0/1/2/3."""
    for k in range(n):
        case = f"BraTS-GLI-{k:05d}-000"
        aff = affine_for(seed=k)
        for ch, name in enumerate(("t1n", "t1c", "t2w", "t2f")):
            write_nii(root / case / f"{case}-{name}.nii.gz", case_image(k, ch), aff, np.float32)
        write_nii(root / case / f"{case}-seg.nii.gz", case_label(k, values=(1, 2, 3)), aff, np.uint8)
    return root


def msd(root: Path, n: int = 3, channels: Sequence[str] = ("FLAIR", "T1w", "t1gd", "T2w"), n_test: int = 1) -> Path:
    """Decathlon Task01_BrainTumour style: imagesTr/BRATS_XXX.nii.gz 4-D (x, y, z, c), labelsTr, imagesTs."""
    training, test = [], []
    for k in range(n + n_test):
        case = f"BRATS_{k + 1:03d}"
        aff = affine_for(seed=k)
        img = np.stack([case_image(k, ch) for ch in range(len(channels))], axis=-1)
        if len(channels) == 1:
            img = img[..., 0]
        if k < n:
            write_nii(root / "imagesTr" / f"{case}.nii.gz", img, aff, np.float32)
            write_nii(root / "labelsTr" / f"{case}.nii.gz", case_label(k, values=(2, 1, 3)), aff, np.uint8)
            training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
        else:
            write_nii(root / "imagesTs" / f"{case}.nii.gz", img, aff, np.float32)
            test.append(f"./imagesTs/{case}.nii.gz")
    dj = {"name": "BRATS", "tensorImageSize": "4D",
          "modality": {str(i): c for i, c in enumerate(channels)},
          "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
          "numTraining": n, "numTest": n_test, "training": training, "test": test}
    (root / "dataset.json").write_text(json.dumps(dj, indent=2))
    return root


def nnunet_raw(root: Path, n: int = 3, channels: Sequence[str] = ("T2", "ADC"), regions: bool = False,
               n_test: int = 1, spacings: Sequence[Tuple[float, float, float]] = ()) -> Path:
    """nnU-Net v2 raw: imagesTr/<case>_000X.nii.gz, labelsTr/<case>.nii.gz, imagesTs/, dataset.json."""
    for k in range(n + n_test):
        case = f"case_{k:03d}"
        sp = spacings[k] if k < len(spacings) else SPACING
        aff = affine_for(sp, seed=k)
        folder = "imagesTr" if k < n else "imagesTs"
        for ch in range(len(channels)):
            write_nii(root / folder / f"{case}_{ch:04d}.nii.gz", case_image(k, ch), aff, np.float32)
        if k < n:
            write_nii(root / "labelsTr" / f"{case}.nii.gz", case_label(k, values=(2, 1, 3)), aff, np.uint8)
    labels = ({"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3} if regions
              else {"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3})
    dj = {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": labels, "numTraining": n,
          "file_ending": ".nii.gz"}
    if regions:
        dj["regions_class_order"] = [1, 2, 3]
    (root / "dataset.json").write_text(json.dumps(dj, indent=2))
    return root


def case_folders(root: Path, n: int = 3, channels=("flair", "t1c"), label: str = "seg") -> Path:
    """root/<case>/<case>_<channel>.nii.gz + <case>_<label>.nii.gz (a layout named by the user)."""
    for k in range(n):
        case = f"patient{k:02d}"
        aff = affine_for(seed=k)
        for ch, name in enumerate(channels):
            write_nii(root / case / f"{case}_{name}.nii.gz", case_image(k, ch), aff, np.float32)
        write_nii(root / case / f"{case}_{label}.nii.gz", case_label(k, values=(1, 2, 3)), aff, np.uint8)
    return root
