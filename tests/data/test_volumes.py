"""Volumetric readers (mambaseg.data.volumes): each layout as it ships, geometry kept, labels remapped, regions."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from _volume_fixtures import (SPACING, affine_for, brats2020, brats2023, case_folders, case_image, case_label, msd,
                              nnunet_raw, write_nii)
from mambaseg.data.volumes import load_case, read_volume_set, select_cases


def _assert_geometry(meta, path):
    img = nib.load(str(path))
    np.testing.assert_allclose(meta["affine"], img.affine, atol=1e-6)
    np.testing.assert_allclose(meta["spacing"], SPACING, rtol=1e-6)
    assert meta["header"]["dim"][1:4].tolist() == list(img.shape[:3])


def test_brats2020_naming_is_recognised_with_its_labels_and_regions(tmp_path):
    root = brats2020(tmp_path / "MICCAI_BraTS2020_TrainingData", n=3, unlabelled=1)
    vs = read_volume_set(root)
    assert vs.layout == "brats2020" and vs.channel_names == ["flair", "t1", "t1ce", "t2"]
    assert vs.label_values == [0, 1, 2, 4] and vs.num_classes == 4
    assert vs.regions == [[1, 2, 3], [1, 3], [3]] and vs.region_names == ["WT", "TC", "ET"]
    assert [c.case_id for c in vs.train] == [f"BraTS20_Training_{k:03d}" for k in (1, 2, 3)]
    assert [c.case_id for c in vs.test] == ["BraTS20_Training_004"]  # no _seg: unlabelled
    image, label, meta = load_case(vs.train[1], vs)
    case = vs.train[1].case_id
    for ch, name in enumerate(vs.channel_names):  # channel order and nibabel's voxel order, untransposed
        np.testing.assert_array_equal(image[ch], np.asanyarray(nib.load(str(root / case / f"{case}_{name}.nii.gz"))
                                                               .dataobj).astype(np.float32))
    raw = case_label(1)
    assert set(np.unique(raw)) == {0, 1, 2, 4}
    np.testing.assert_array_equal(label, np.select([raw == 4, raw == 2, raw == 1], [3, 2, 1], 0))
    _assert_geometry(meta, root / case / f"{case}_flair.nii.gz")


def test_brats2023_naming_is_recognised(tmp_path):
    root = brats2023(tmp_path / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", n=2)
    vs = read_volume_set(root)
    assert vs.layout == "brats2023" and vs.channel_names == ["t1n", "t1c", "t2w", "t2f"]
    assert vs.label_values == [0, 1, 2, 3] and vs.regions == [[1, 2, 3], [1, 3], [3]]
    image, label, meta = load_case(vs.train[0], vs)
    case = vs.train[0].case_id
    np.testing.assert_array_equal(image[1], nib.load(str(root / case / f"{case}-t1c.nii.gz")).get_fdata())
    np.testing.assert_array_equal(label, case_label(0, values=(1, 2, 3)))
    _assert_geometry(meta, root / case / f"{case}-t1n.nii.gz")


def test_msd_4d_images_are_split_into_channels(tmp_path):
    root = msd(tmp_path / "Task01_BrainTumour", n=3, n_test=1)
    vs = read_volume_set(root)
    assert vs.layout == "msd" and vs.channel_names == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert vs.class_names == ["background", "edema", "non-enhancing tumor", "enhancing tumour"]
    assert [c.case_id for c in vs.test] == ["BRATS_004"] and vs.test[0].label is None
    image, label, meta = load_case(vs.train[2], vs)
    four = np.asanyarray(nib.load(str(root / "imagesTr" / "BRATS_003.nii.gz")).dataobj)
    assert four.shape == (12, 10, 8, 4) and image.shape == (4, 12, 10, 8)
    np.testing.assert_array_equal(image, np.moveaxis(four, -1, 0))
    np.testing.assert_array_equal(label, case_label(2, values=(2, 1, 3)))
    _assert_geometry(meta, root / "imagesTr" / "BRATS_003.nii.gz")
    assert vs.normalization == ["zscore"] * 4


def test_msd_ct_task_normalises_as_ct(tmp_path):
    root = msd(tmp_path / "Task03_Liver", n=2, channels=("CT",), n_test=0)
    vs = read_volume_set(root)
    assert vs.normalization == ["CT"]
    image, _, _ = load_case(vs.train[0], vs)
    assert image.shape == (1, 12, 10, 8)


def test_nnunet_raw_channels_labels_and_test_split(tmp_path):
    root = nnunet_raw(tmp_path / "Dataset004_Hippocampus", n=5, channels=("CT", "ADC"), n_test=2)
    vs = read_volume_set(root)
    assert vs.layout == "nnunet" and vs.channel_names == ["CT", "ADC"] and vs.normalization == ["CT", "zscore"]
    assert vs.label_values == [0, 1, 2, 3] and vs.class_names == ["background", "edema", "necrosis", "enhancing"]
    assert vs.regions is None
    assert [c.case_id for c in select_cases(vs, "test")] == ["case_005", "case_006"]
    from mambaseg.data.splits import kfold_split
    assert [c.case_id for c in select_cases(vs, "val")] == kfold_split([f"case_{k:03d}" for k in range(5)])["val"]
    image, label, meta = load_case(vs.train[0], vs)
    np.testing.assert_array_equal(image[1], case_image(0, 1))
    _assert_geometry(meta, root / "imagesTr" / "case_000_0000.nii.gz")


def test_nnunet_region_labels(tmp_path):
    root = nnunet_raw(tmp_path / "Dataset137_BraTS21", n=3, regions=True)
    vs = read_volume_set(root)
    assert vs.label_values == [0, 1, 2, 3]
    assert vs.regions == [[1, 2, 3], [2, 3], [3]] and vs.regions_class_order == [1, 2, 3]
    assert vs.region_names == ["whole tumor", "tumor core", "enhancing tumor"]


def test_per_case_folders_by_name_and_by_glob(tmp_path):
    root = case_folders(tmp_path / "study", n=3, channels=("flair", "t1c"), label="seg")
    by_name = read_volume_set(root, channels=["flair", "t1c"], label="seg")
    by_glob = read_volume_set(root, channels=["*_flair.nii.gz", "*_t1c.nii.gz"], label="*_seg.nii.gz")
    for vs in (by_name, by_glob):
        assert vs.layout == "folders" and vs.in_channels == 2 and len(vs.train) == 3
        assert vs.label_values == [0, 1, 2, 3]  # read from the labels (none declared)
        image, label, meta = load_case(vs.train[2], vs)
        np.testing.assert_array_equal(image[1], case_image(2, 1))
        _assert_geometry(meta, root / "patient02" / "patient02_flair.nii.gz")
    swapped = read_volume_set(root, channels=["t1c", "flair"], label="seg")
    np.testing.assert_array_equal(load_case(swapped.train[0], swapped)[0][0], case_image(0, 1))


def test_the_header_is_kept(tmp_path):
    root = tmp_path / "c"
    aff = affine_for(seed=3)
    for k in range(2):
        img = nib.Nifti1Image(case_image(k, 0), aff)
        img.header["descrip"] = b"scanner X"
        img.header.set_xyzt_units("mm", "sec")
        (root / f"p{k}").mkdir(parents=True)
        nib.save(img, str(root / f"p{k}" / f"p{k}_t1.nii.gz"))
        write_nii(root / f"p{k}" / f"p{k}_seg.nii.gz", case_label(k, values=(1, 2, 3)), aff, np.uint8)
    vs = read_volume_set(root, channels=["t1"], label="seg", labels=[0, 1, 2, 3])
    _, _, meta = load_case(vs.train[0], vs)
    assert bytes(meta["header"]["descrip"]).rstrip(b"\0") == b"scanner X"
    assert meta["header"].get_xyzt_units() == ("mm", "sec")
    np.testing.assert_allclose(meta["affine"], aff, atol=1e-6)


def test_two_d_path_on_a_volumetric_layout_slices_along_k(tmp_path):
    from mambaseg.data import build_dataset

    root = brats2020(tmp_path / "b", n=2)
    ds = build_dataset("volumes", str(root), split="all", spatial_dims=2)
    assert len(ds) == 2 * 8 and ds.in_channels == 4
    s = ds[3]  # case 0, slice k = 3
    flair = nib.load(str(root / "BraTS20_Training_001" / "BraTS20_Training_001_flair.nii.gz")).get_fdata()
    # the 2D path's arrays are (z, y, x) = (k, j, i), as mambaseg.data.nifti gives them
    np.testing.assert_array_equal(s["image"][0].numpy(), flair[:, :, 3].T.astype(np.float32))
    assert s["mask"].dtype == torch.int64


def test_registry_builds_the_3d_data_set(tmp_path):
    from mambaseg.data import build_dataset

    root = nnunet_raw(tmp_path / "nn", n=3)
    ds = build_dataset("nnunet", str(root), split="all", spatial_dims=3)
    assert ds.spatial_dims == 3 and len(ds) == 3 and ds.in_channels == 2
    assert build_dataset("brats", str(brats2020(tmp_path / "b", n=2)), split="all").regions == [[1, 2, 3], [1, 3], [3]]
    json.loads((root / "dataset.json").read_text())


def test_single_files_and_an_unlabelled_folder_for_prediction(tmp_path):
    from mambaseg.data.volumes import volume_set_from_files
    from mambaseg.data.volumetric import VolumetricDataset

    train = VolumetricDataset(msd(tmp_path / "msd", n=3, n_test=1), "all")
    new = tmp_path / "msd" / "imagesTs" / "BRATS_004.nii.gz"
    one = VolumetricDataset(volume_set=volume_set_from_files(new, like=train.volume_set), split="test",
                            plan=train.plan.to_dict())
    s = one[0]
    assert s["image"].shape[0] == 4 and not s["meta"]["has_label"] and s["meta"]["original_shape"] == (12, 10, 8)
    assert one.plan.target_spacing == train.plan.target_spacing
    flat = tmp_path / "flat"
    for k in range(2):
        write_nii(flat / f"scan{k}.nii.gz", case_image(k, 0), affine_for(seed=k))
    vs = read_volume_set(flat)
    assert [c.case_id for c in select_cases(vs, "test")] == ["scan0", "scan1"] and vs.train == []


def test_ct_without_training_foreground_asks_for_the_training_plan(tmp_path):
    from mambaseg.data.base import DataError
    from mambaseg.data.volumetric import VolumetricDataset

    flat = tmp_path / "flat"
    write_nii(flat / "ct0.nii.gz", case_image(0, 0), affine_for())
    ds = VolumetricDataset(flat, "test", normalization="CT")
    with pytest.raises(DataError, match="pass the plan of the training run"):
        ds[0]
