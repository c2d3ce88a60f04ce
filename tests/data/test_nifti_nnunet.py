"""NIfTI volumes (axes, spacing, slicing, volumes) and nnU-Net v2 raw data sets (2D PNG and NIfTI, folds)."""

import json

import numpy as np
import pytest
import torch

from mambaseg.data import DataError, MissingDataError, build_dataset, volume_slices
from mambaseg.data.nifti import read_nifti, save_nifti
from mambaseg.data.splits import kfold_split
from mambaseg.data.transforms import Compose, Normalize, Resize

from _data_helpers import case_image, case_mask, write_nifti, write_png


def _case_xyz(k, shape=(6, 5, 3)):
    """Image with a marker at voxel (x=1, y=2, z=k%3) and a label (class 2) at the same voxel."""
    img = np.zeros(shape, np.float32)
    lab = np.zeros(shape, np.uint8)
    x, y, z = 1, 2, k % shape[2]
    img[x, y, z] = 100 + k
    lab[x, y, z] = 2
    lab[4, 0, :] = 1
    return img, lab


@pytest.fixture
def nifti_root(tmp_path):
    root = tmp_path / "nii"
    for k in range(4):
        img, lab = _case_xyz(k)
        write_nifti(root / "images" / f"c{k}.nii.gz", img, (0.8, 0.7, 5.0))
        write_nifti(root / "labels" / f"c{k}.nii.gz", lab, (0.8, 0.7, 5.0))
    return root


def test_read_nifti_axes_and_spacing(nifti_root):
    arr, sp = read_nifti(nifti_root / "images" / "c1.nii.gz")
    assert arr.shape == (3, 5, 6) and sp == pytest.approx((5.0, 0.7, 0.8))  # (z, y, x)
    assert arr[1, 2, 1] == 101 and arr.sum() == 101


def test_nifti_dataset_slices_and_volumes(nifti_root):
    ds = build_dataset("nifti", str(nifti_root), "all")
    assert len(ds) == 4 * 3 and ds.num_classes == 3 and ds.in_channels == 1  # num_classes read from labels
    s = ds[1 * 3 + 1]  # case c1, slice z=1 holds the marker
    assert s["image"].shape == (1, 5, 6) and float(s["image"][0, 2, 1]) == 101
    assert s["mask"][2, 1] == 2 and s["mask"][0, 4] == 1 and int(s["mask"].sum()) == 3
    assert s["meta"]["volume_id"] == "c1" and s["meta"]["slice_index"] == 1
    assert s["meta"]["spacing"] == pytest.approx((5.0, 0.7, 0.8)) and s["meta"]["spacing_known"]
    v = ds.volumes()[2]
    assert v["image"].shape == (1, 3, 5, 6) and v["mask"].shape == (3, 5, 6)
    assert v["meta"]["case_id"] == "c2" and v["meta"]["spacing"] == pytest.approx((5.0, 0.7, 0.8))
    batch = volume_slices(v, Compose([Resize(8, "nearest"), Normalize("none")]))
    assert batch.shape == (3, 1, 8, 8)


def test_nifti_splits_by_case(nifti_root):
    parts = {s: build_dataset("nifti", str(nifti_root), s, ratios=(0.5, 0.25, 0.25)) for s in ("train", "val", "test")}
    ids = {s: {m for m in (d[i]["meta"]["volume_id"] for i in range(len(d)))} for s, d in parts.items()}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    assert set().union(*ids.values()) == {"c0", "c1", "c2", "c3"}


def test_nifti_flat_gt_suffix_and_errors(tmp_path):
    root = tmp_path / "flat"
    img, lab = _case_xyz(0)
    write_nifti(root / "patient001_frame01.nii.gz", img)
    write_nifti(root / "patient001_frame01_gt.nii.gz", lab)
    ds = build_dataset("nifti", str(root), "all", num_classes=4)
    assert ds.volumes()[0]["meta"]["case_id"] == "patient001_frame01"
    write_nifti(root / "patient002_frame01.nii.gz", img)
    with pytest.raises(DataError, match="have no mask: patient002_frame01.nii.gz"):
        build_dataset("nifti", str(root), "all", num_classes=4)
    bad = tmp_path / "bad"
    write_nifti(bad / "images" / "a.nii.gz", img)
    write_nifti(bad / "labels" / "a.nii.gz", np.zeros((6, 5, 2), np.uint8))
    with pytest.raises(DataError, match="must match"):
        build_dataset("nifti", str(bad), "all", num_classes=2)[0]
    (bad / "labels" / "a.nii.gz").write_bytes(b"broken")
    with pytest.raises(DataError, match="a.nii.gz.*corrupt"):
        build_dataset("nifti", str(bad), "all", num_classes=2)[0]
    with pytest.raises(DataError, match="a.nii.gz.*corrupt"):  # num_classes inferred: labels read up front
        build_dataset("nifti", str(bad), "all")
    with pytest.raises(MissingDataError):
        build_dataset("nifti", str(tmp_path / "none"))


def test_save_nifti_roundtrip_and_no_overwrite(tmp_path):
    arr = np.arange(24).reshape(2, 3, 4).astype(np.int64)
    p = save_nifti(arr, tmp_path / "p.nii.gz", spacing=(3.0, 2.0, 1.0))
    back, sp = read_nifti(p, label=True)
    assert np.array_equal(back, arr) and sp == pytest.approx((3.0, 2.0, 1.0))
    with pytest.raises(FileExistsError):
        save_nifti(arr, p)


# -------------------------------------------------------------------------------------------------------- nnU-Net
def _dataset_json(root, ending, channels, labels):
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": channels, "labels": labels,
                                                   "numTraining": 5, "file_ending": ending}))


def test_nnunet_png_rgb_and_default_folds(tmp_path):
    root = tmp_path / "Dataset001_Toy"
    _dataset_json(root, ".png", {"0": "R", "1": "G", "2": "B"}, {"background": 0, "lesion": 1})
    for k in range(5):
        write_png(root / "imagesTr" / f"toy_{k:03d}_0000.png", case_image(k))
        write_png(root / "labelsTr" / f"toy_{k:03d}.png", case_mask(k))
    tr = build_dataset("nnunet", str(root), "train", fold=1)
    va = build_dataset("nnunet", str(root), "val", fold=1)
    ids = sorted(f"toy_{k:03d}" for k in range(5))
    assert va.case_ids() == kfold_split(ids, 5, 1, 12345)["val"] and len(tr) == 4
    s = va[0]
    k = int(va.case_ids()[0][-3:])
    assert s["image"].shape == (3, 8, 10) and float(s["image"][0, 0, 0]) == 200 + k
    assert torch.equal(s["mask"], torch.from_numpy(case_mask(k)).long())
    assert tr.class_names == ["background", "lesion"]
    # an explicit splits_final.json wins
    (root / "splits_final.json").write_text(json.dumps([{"train": ids[1:], "val": ids[:1]}]))
    assert build_dataset("nnunet", str(root), "val", fold=0).case_ids() == ids[:1]
    assert len(build_dataset("nnunet", str(root), "all")) == 5


def test_nnunet_nifti_multichannel(tmp_path):
    root = tmp_path / "Dataset002_Vol"
    _dataset_json(root, ".nii.gz", {"0": "T1", "1": "T2"}, {"background": 0, "a": 1, "b": 2})
    for k in range(2):
        img, lab = _case_xyz(k)
        write_nifti(root / "imagesTr" / f"v{k}_0000.nii.gz", img, (1.0, 1.0, 2.0))
        write_nifti(root / "imagesTr" / f"v{k}_0001.nii.gz", img * 2, (1.0, 1.0, 2.0))
        write_nifti(root / "labelsTr" / f"v{k}.nii.gz", lab, (1.0, 1.0, 2.0))
    ds = build_dataset("nnunet", str(root), "all")
    assert ds.in_channels == 2 and ds.num_classes == 3 and len(ds) == 6
    v = ds.volumes()[1]
    assert v["image"].shape == (2, 3, 5, 6) and float(v["image"][1, 1, 2, 1]) == 202
    assert v["meta"]["spacing"] == pytest.approx((2.0, 1.0, 1.0))


def test_nnunet_errors(tmp_path):
    root = tmp_path / "Dataset003_Bad"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        build_dataset("nnunet", str(root))
    _dataset_json(root, ".png", {"0": "gray"}, {"background": 0, "x": 1})
    write_png(root / "imagesTr" / "a_0000.png", case_image(0, rgb=False))
    write_png(root / "imagesTr" / "b_0000.png", case_image(1, rgb=False))
    write_png(root / "labelsTr" / "a.png", case_mask(0))
    with pytest.raises(DataError, match=r"have no label.*\['b'\]"):
        build_dataset("nnunet", str(root), "all")
    _dataset_json(root, ".png", {"0": "gray"}, {"background": 0, "x": 2})
    with pytest.raises(DataError, match="consecutive"):
        build_dataset("nnunet", str(root), "all")
