"""Fault tests of the volumetric (3D) data layer (issue 24, "bad input gets one line before any work"): each test
writes a tiny data set as it ships, breaks one thing, and asserts the data check names the file and the problem
(every bad case at once), and that loading the case refuses with the same kind of line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from _volume_fixtures import (SPACING, affine_for, brats2020, case_folders, case_image, case_label, msd,  # noqa: E402
                              nnunet_raw, write_nii)

from mambaseg.data.base import DataError  # noqa: E402
from mambaseg.data.check import check_dataset  # noqa: E402
from mambaseg.data.volumetric import VolumetricDataset  # noqa: E402


def _check(root, mode="header", split="all", **kw):
    ds = VolumetricDataset(root, split, **kw)
    return ds, check_dataset(ds, mode, "train")


def _brats_case(root, k):
    case = f"BraTS20_Training_{k + 1:03d}"
    return root / case, case


def test_channels_differing_in_shape_are_named(tmp_path):
    root = brats2020(tmp_path / "b", n=3)
    d, case = _brats_case(root, 1)
    write_nii(d / f"{case}_t1.nii.gz", np.ones((12, 10, 9), np.int16), affine_for(seed=1))
    ds, rep = _check(root)
    assert len(rep.problems) == 1
    assert f"{case}_t1.nii.gz differs from {case}_flair.nii.gz in shape (12, 10, 8) vs (12, 10, 9)" in rep.problems[0]
    with pytest.raises(DataError, match="differ in shape"):
        ds[1]


def test_channels_differing_in_affine_are_named(tmp_path):
    root = brats2020(tmp_path / "b", n=3)
    d, case = _brats_case(root, 2)
    aff = affine_for(seed=2)
    aff[:3, 0] *= -1  # i axis flipped: same shape and spacing, other orientation
    write_nii(d / f"{case}_t2.nii.gz", case_image(2, 3), aff, np.int16)
    _, rep = _check(root)
    assert len(rep.problems) == 1 and "orientation" in rep.problems[0] and f"{case}_t2.nii.gz" in rep.problems[0]


def test_label_on_another_grid_is_named(tmp_path):
    root = brats2020(tmp_path / "b", n=3)
    d0, c0 = _brats_case(root, 0)
    d1, c1 = _brats_case(root, 1)
    write_nii(d0 / f"{c0}_seg.nii.gz", np.zeros((12, 10, 7), np.uint8), affine_for(seed=0))          # shape
    write_nii(d1 / f"{c1}_seg.nii.gz", case_label(1), affine_for((0.8, 0.9, 1.5), seed=1), np.uint8)  # spacing
    ds, rep = _check(root)
    assert len(rep.problems) == 2, rep.problems
    assert f"label {c0}_seg.nii.gz differs from image {c0}_flair.nii.gz in shape" in rep.problems[0]
    assert f"label {c1}_seg.nii.gz" in rep.problems[1] and "spacing" in rep.problems[1]
    with pytest.raises(DataError, match="the label must lie on the image's grid"):
        ds[0]


def test_label_values_outside_the_labels_are_named(tmp_path):
    root = brats2020(tmp_path / "b", n=3)
    d, case = _brats_case(root, 0)
    lab = case_label(0)
    lab[5, 5, 4] = 3  # 2013-2016 "non-enhancing" value in a 2017-2020 (0/1/2/4) data set
    write_nii(d / f"{case}_seg.nii.gz", lab, affine_for(seed=0), np.uint8)
    ds, rep = _check(root)
    assert len(rep.problems) == 1
    assert "label values [3] are outside the data set's labels [0, 1, 2, 4]" in rep.problems[0]
    assert rep.classes == {0, 1, 2, 3}  # class indices present in the good cases (4 -> 3)
    with pytest.raises(DataError, match=r"label values \[3\]"):
        ds[0]


def test_every_case_missing_a_channel_is_listed_at_once(tmp_path):
    root = brats2020(tmp_path / "b", n=4)
    for k, ch in ((1, "t1ce"), (3, "flair")):
        d, case = _brats_case(root, k)
        (d / f"{case}_{ch}.nii.gz").unlink()
    ds, rep = _check(root)
    assert len(rep.problems) == 2 and rep.samples == 4
    assert "BraTS20_Training_002" in rep.problems[0] and "t1ce" in rep.problems[0]
    assert "BraTS20_Training_004" in rep.problems[1] and "flair" in rep.problems[1]
    with pytest.raises(DataError, match="t1ce"):
        ds[1]


def test_nnunet_case_missing_a_channel_file(tmp_path):
    root = nnunet_raw(tmp_path / "nn", n=3)
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    _, rep = _check(root)
    assert rep.problems == ["case 'case_001': channel file(s) case_001_0001.nii.gz missing in "
                            f"{root / 'imagesTr'} (dataset.json declares 2 channel(s))"]


def test_nan_and_inf_voxels(tmp_path):
    root = nnunet_raw(tmp_path / "nn", n=3)
    img = case_image(2, 0)
    img[3, 4, 2] = np.nan
    img[4, 4, 2] = np.inf
    write_nii(root / "imagesTr" / "case_002_0000.nii.gz", img, affine_for(seed=2), np.float32)
    ds, full = _check(root, "full")
    assert len(full.problems) == 1
    assert "case_002_0000.nii.gz holds NaN or inf values (1 NaN, 1 +inf of " in \
        full.problems[0] and "values, the first at (3, 4, 2))" in full.problems[0]
    _, header = _check(root, "header")
    assert header.problems == [] and "check full" in header.kind  # header mode says where NaN is looked for
    with pytest.raises(DataError, match="case_002_0000.nii.gz holds NaN or inf"):
        ds[2]


def test_2d_file_given_to_a_3d_config(tmp_path):
    root = case_folders(tmp_path / "f", n=3)
    write_nii(root / "patient01" / "patient01_t1c.nii.gz", np.ones((12, 10), np.float32), affine_for(seed=1))
    ds, rep = _check(root, channels=["flair", "t1c"], label="seg")
    assert len(rep.problems) == 1 and "patient01_t1c.nii.gz is a 2-D image (12, 10)" in rep.problems[0]
    assert "a 3D network needs volumes" in rep.problems[0]
    with pytest.raises(DataError, match="2-D image"):
        ds[1]


def test_4d_file_among_3d_volumes_3d_reader(tmp_path):
    root = nnunet_raw(tmp_path / "nn", n=3, channels=("T2",))
    write_nii(root / "imagesTr" / "case_001_0000.nii.gz", np.stack([case_image(1, 0)] * 2, -1), affine_for(seed=1))
    ds, rep = _check(root)
    assert len(rep.problems) == 1
    assert "case_001_0000.nii.gz is 4-D (12, 10, 8, 2)" in rep.problems[0] and "four_to_three" in rep.problems[0]
    with pytest.raises(DataError, match="is 4-D"):
        ds[1]


def test_4d_file_among_3d_volumes_2d_path_is_found_before_training(tmp_path):
    """The 2D slice-wise reader used to build a data set whose batches mix 1 and 2 channels (epoch 0: "cannot
    batch"); the check now names the 4-D file."""
    from mambaseg.data import build_dataset

    root = tmp_path / "n"
    for k in range(3):
        img = case_image(k, 0)
        if k == 2:
            img = np.stack([img, img], -1)
        write_nii(root / "images" / f"c{k}.nii.gz", img, affine_for(seed=k))
        write_nii(root / "labels" / f"c{k}.nii.gz", case_label(k, values=(1, 2, 3)), affine_for(seed=k), np.uint8)
    ds = build_dataset("nifti", str(root), split="all")
    rep = check_dataset(ds, "header", "train")
    assert len(rep.problems) == 1 and "c2.nii.gz is 4-D" in rep.problems[0] and "'c2'" in rep.problems[0]


def test_patch_larger_than_every_volume_is_said_once_not_a_problem(tmp_path):
    root = brats2020(tmp_path / "b", n=3)
    _, rep = _check(root, patch_size=(16, 16, 16))
    assert rep.problems == [] and len(rep.notes) == 1
    assert ("the patch (16, 16, 16) is larger than every volume (largest (12, 10, 8)); volumes are padded"
            in rep.notes[0])
    _, small = _check(root, patch_size=(8, 8, 8))
    assert small.notes == []


def test_zero_spacing(tmp_path):
    import gzip

    root = brats2020(tmp_path / "b", n=3)
    d, case = _brats_case(root, 1)
    for ch in ("flair", "t1", "t1ce", "t2", "seg"):  # a converter that wrote pixdim[3] = 0 on every file of the case
        p = d / f"{case}_{ch}.nii.gz"
        raw = bytearray(gzip.decompress(p.read_bytes()))
        raw[88:92] = np.float32(0.0).tobytes()  # pixdim[3] (header offset 76 + 3 * 4)
        p.write_bytes(gzip.compress(bytes(raw)))
    ds, rep = _check(root)
    assert len(rep.problems) == 5  # the four channels and the label, each named
    assert all("spacing (0.8, 0.9, 0.0) has a zero or negative value" in p for p in rep.problems)
    with pytest.raises(DataError, match="zero or negative"):
        ds[1]


def test_truncated_nii_gz_fails_the_header_check(tmp_path):
    root = brats2020(tmp_path / "b", n=3)
    d, case = _brats_case(root, 2)
    p = d / f"{case}_t1.nii.gz"
    p.write_bytes(p.read_bytes()[:-12])  # a download cut short: the header still opens
    import nibabel as nib
    assert nib.load(str(p)).shape == (12, 10, 8)
    ds, rep = _check(root, "header")
    assert len(rep.problems) == 1 and f"{case}_t1.nii.gz" in rep.problems[0] and "truncated" in rep.problems[0]
    (d / f"{case}_flair.nii.gz").write_bytes(b"not a nifti")
    _, rep = _check(root, "full")
    assert len(rep.problems) == 2 and any(f"{case}_flair.nii.gz (corrupt" in p for p in rep.problems)
    with pytest.raises(DataError, match=case):
        ds[2]


def test_dataset_json_not_matching_the_files(tmp_path):
    root = nnunet_raw(tmp_path / "nn", n=3)
    dj = json.loads((root / "dataset.json").read_text())
    dj["numTraining"] = 5
    (root / "dataset.json").write_text(json.dumps(dj))
    _, rep = _check(root)
    assert rep.problems == [f"{root / 'dataset.json'}: numTraining is 5 but imagesTr holds 3 case(s); fix "
                            "numTraining or the files"]
    m = msd(tmp_path / "msd", n=3)
    (m / "labelsTr" / "BRATS_002.nii.gz").unlink()
    write_nii(m / "imagesTr" / "BRATS_009.nii.gz", np.zeros((12, 10, 8, 4), np.float32), affine_for())
    _, rep = _check(m)
    assert len(rep.problems) == 2, rep.problems
    assert "BRATS_009.nii.gz" in rep.problems[0] and "not listed in dataset.json's training" in rep.problems[0]
    assert "lists the label ./labelsTr/BRATS_002.nii.gz but" in rep.problems[1]


def test_msd_image_that_is_not_4d(tmp_path):
    m = msd(tmp_path / "msd", n=3)
    write_nii(m / "imagesTr" / "BRATS_001.nii.gz", case_image(0, 0), affine_for(seed=0))
    _, rep = _check(m)
    assert len(rep.problems) == 1 and "declares 4 channel(s)" in rep.problems[0]


def test_check_summary_lists_splits_with_shapes_spacings_classes(tmp_path):
    from mambaseg.data.check import check_splits

    root = brats2020(tmp_path / "b", n=5)
    d, case = _brats_case(root, 0)
    (d / f"{case}_t2.nii.gz").unlink()
    sets = {"train": VolumetricDataset(root, "train"), "val": VolumetricDataset(root, "val")}
    rep = check_splits(sets, "header", "brats", str(root))
    text = rep.summary()
    assert "sizes 12x10x8" in text and "spacings (mm) 0.8x0.9x3" in text and "classes present {0, 1, 2, 3}" in text
    assert len(rep.problems) == 1 and case in rep.problems[0]
    assert sum(s.samples for s in rep.splits) == 5
    assert SPACING[2] == 3.0


def test_nnunet_without_labels_folder_and_brats_folder_without_seg(tmp_path):
    import shutil

    root = nnunet_raw(tmp_path / "nn", n=3)
    shutil.rmtree(root / "labelsTr")
    _, rep = _check(root)
    assert len(rep.problems) == 1 and "has no labelsTr/ folder" in rep.problems[0]
    b = brats2020(tmp_path / "b", n=3, unlabelled=1)
    _, rep = _check(b)
    assert rep.problems == [] and rep.notes == ["1 case folder(s) have no 'seg' label file and are used as "
                                                "unlabelled (test) cases: ['BraTS20_Training_004']"]
