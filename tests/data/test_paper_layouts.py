"""ISIC (VM-UNet and challenge naming), polyp benchmark (PraNet), ACDC (SSL4MIS h5), Synapse (TransUNet)."""

import numpy as np
import pytest
import torch

from mambaseg.data import DataError, MissingDataError, build_dataset
from mambaseg.data.polyp import polyp_test_sets

from _data_helpers import case_image, case_mask, vol_label, write_h5, write_png


# ---------------------------------------------------------------------------------------------------------- ISIC
def test_isic_vmunet_layout_splits(tmp_path, pair_folder):
    root = tmp_path / "isic2017"
    pair_folder(root / "train", [("ISIC_0000001", "ISIC_0000001_segmentation.png", 1),
                                 ("ISIC_0000002", "ISIC_0000002_segmentation.png", 2)])
    pair_folder(root / "val", [("ISIC_0000009", "ISIC_0000009_segmentation.png", 3)])
    tr = build_dataset("isic", str(root), "train")
    assert tr.case_ids() == ["ISIC_0000001", "ISIC_0000002"]
    assert torch.equal(tr[1]["mask"], torch.from_numpy(case_mask(2)).long())
    te = build_dataset("isic", str(root), "test")  # upstream's val/ folder is the test set
    assert te.case_ids() == ["ISIC_0000009"]
    with pytest.warns(UserWarning, match="also the test set"):
        assert build_dataset("isic", str(root), "val").case_ids() == ["ISIC_0000009"]
    v = build_dataset("isic", str(root), "val", val_fraction=0.5)
    t = build_dataset("isic", str(root), "train", val_fraction=0.5)
    assert len(v) == len(t) == 1 and set(v.case_ids()) | set(t.case_ids()) == {"ISIC_0000001", "ISIC_0000002"}


def test_isic_challenge_naming_ignores_superpixels(tmp_path):
    root = tmp_path / "raw"
    for k in (3, 7):
        write_png(root / "ISIC-2017_Training_Data" / f"ISIC_000000{k}.jpg", case_image(k))
        write_png(root / "ISIC-2017_Training_Data" / f"ISIC_000000{k}_superpixels.png", case_image(0))
        write_png(root / "ISIC-2017_Training_Part1_GroundTruth" / f"ISIC_000000{k}_segmentation.png",
                  case_mask(k) * 255)
    write_png(root / "ISIC-2017_Training_Part2_GroundTruth" / "ISIC_0000003_globules.png", case_mask(0))
    ds = build_dataset("isic", str(root), "train")
    assert ds.case_ids() == ["ISIC_0000003", "ISIC_0000007"]
    assert torch.equal(ds[1]["mask"], torch.from_numpy(case_mask(7)).long())
    with pytest.raises(MissingDataError, match="no test image"):
        build_dataset("isic", str(root), "test")


def test_isic_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="train,val"):
        build_dataset("isic", str(tmp_path / "missing"))


# --------------------------------------------------------------------------------------------------------- polyp
@pytest.fixture
def polyp_root(tmp_path, pair_folder):
    root = tmp_path / "polyp"
    pair_folder(root / "TrainDataset", [(f"t{k}", f"t{k}.png", k) for k in range(4)])
    pair_folder(root / "TestDataset" / "Kvasir", [("k1", "k1.png", 5)])
    pair_folder(root / "TestDataset" / "CVC-300", [("c1", "c1.png", 6), ("c2", "c2.png", 7)])
    return root


def test_polyp_splits(polyp_root):
    assert len(build_dataset("polyp", str(polyp_root), "train")) == 4
    kv = build_dataset("polyp", str(polyp_root), "test/Kvasir")
    assert kv.case_ids() == ["k1"] and torch.equal(kv[0]["mask"], torch.from_numpy(case_mask(5)).long())
    assert build_dataset("polyp", str(polyp_root), "test", subset="cvc-300").case_ids() == ["c1", "c2"]
    allt = build_dataset("polyp", str(polyp_root), "test")
    assert len(allt) == 3 and [allt[i]["meta"]["subset"] for i in range(3)] == ["CVC-300", "CVC-300", "Kvasir"]
    sets = polyp_test_sets(polyp_root)
    assert list(sets) == ["CVC-300", "Kvasir"]  # benchmark order, only those present
    with pytest.raises(MissingDataError, match="found: \\['CVC-300', 'Kvasir'\\]"):
        build_dataset("polyp", str(polyp_root), "test/ETIS-LaribPolypDB")
    v = build_dataset("polyp", str(polyp_root), "val", val_fraction=0.25)
    t = build_dataset("polyp", str(polyp_root), "train", val_fraction=0.25)
    assert len(v) == 1 and len(t) == 3 and not set(v.case_ids()) & set(t.case_ids())


def test_polyp_missing_layout(tmp_path):
    (tmp_path / "p").mkdir()
    with pytest.raises(MissingDataError, match="TrainDataset"):
        build_dataset("polyp", str(tmp_path / "p"), "train")


# ---------------------------------------------------------------------------------------------------------- ACDC
@pytest.fixture
def acdc_root(tmp_path):
    root = tmp_path / "ACDC"
    data = root / "data"
    vols = {f"patient00{p}_frame01": p for p in range(1, 5)}
    for name, p in vols.items():
        img = np.random.default_rng(p).random((3, 8, 8)).astype(np.float32)
        write_h5(data / f"{name}.h5", img, vol_label(p))
    train = ["patient001_frame01", "patient002_frame01"]
    slices = []
    for name in train:
        for z in range(3):
            sname = f"{name}_slice_{z}"
            img = np.full((8, 8), vols[name] * 10 + z, np.float32)
            write_h5(data / "slices" / f"{sname}.h5", img, vol_label(vols[name])[z])
            slices.append(sname)
    (root / "train_slices.list").write_text("\n".join(slices) + "\n")
    (root / "val.list").write_text("patient003_frame01\n")
    (root / "test.list").write_text("patient004_frame01\n")
    return root


def test_acdc_train_slices(acdc_root):
    ds = build_dataset("acdc", str(acdc_root), "train")
    assert len(ds) == 6 and ds.num_classes == 4 and ds.in_channels == 1
    s = ds[4]  # patient002 slice 1
    assert s["image"].shape == (1, 8, 8) and float(s["image"][0, 0, 0]) == 21
    assert np.array_equal(s["mask"].numpy(), vol_label(2)[1])
    m = s["meta"]
    assert (m["volume_id"], m["slice_index"], m["spacing"], m["spacing_known"]) == \
        ("patient002_frame01", 1, (1.0, 1.0, 1.0), False)
    vols = ds.volumes()
    assert [v["meta"]["case_id"] for v in vols] == ["patient001_frame01", "patient002_frame01"]


def test_acdc_val_test_volumes(acdc_root):
    val = build_dataset("acdc", str(acdc_root), "val")
    assert len(val) == 3 and val[2]["meta"]["volume_id"] == "patient003_frame01"
    assert np.array_equal(val[2]["mask"].numpy(), vol_label(3)[2])
    v = build_dataset("acdc", str(acdc_root), "test").volumes()[0]
    assert v["image"].shape == (1, 3, 8, 8) and v["mask"].shape == (3, 8, 8) and v["mask"].dtype == torch.int64
    assert np.array_equal(v["mask"].numpy(), vol_label(4))
    expect = np.random.default_rng(4).random((3, 8, 8)).astype(np.float32)
    assert np.array_equal(v["image"][0].numpy(), expect)
    assert v["meta"]["case_id"] == "patient004_frame01" and v["meta"]["shape"] == (3, 8, 8)


def test_acdc_errors(acdc_root, tmp_path):
    (acdc_root / "val.list").write_text("patient003_frame01\npatient099_frame01\n")
    with pytest.raises(MissingDataError, match="patient099_frame01.h5"):
        build_dataset("acdc", str(acdc_root), "val")
    (acdc_root / "data" / "slices" / "patient001_frame01_slice_0.h5").write_bytes(b"garbage")
    with pytest.raises(DataError, match="patient001_frame01_slice_0.h5.*corrupt"):
        build_dataset("acdc", str(acdc_root), "train")[0]
    write_h5(acdc_root / "data" / "slices" / "patient001_frame01_slice_1.h5", np.zeros((8, 8), np.float32),
             np.full((8, 8), 7, np.uint8))
    with pytest.raises(DataError, match=r"values \[7\]"):
        build_dataset("acdc", str(acdc_root), "train")[1]
    with pytest.raises(FileNotFoundError, match="train_slices.list"):
        build_dataset("acdc", str(tmp_path))


# ------------------------------------------------------------------------------------------------------- Synapse
@pytest.fixture
def synapse_root(tmp_path):
    root = tmp_path / "Synapse"
    names = []
    for case in ("case0005", "case0006"):
        for z in range(2):
            n = f"{case}_slice{z:03d}"
            lab = np.zeros((8, 8), np.uint8)
            lab[z, :] = 8
            lab[3, z] = 5
            (root / "train_npz").mkdir(parents=True, exist_ok=True)
            np.savez(root / "train_npz" / f"{n}.npz", image=np.full((8, 8), z / 10, np.float32), label=lab)
            names.append(n)
    write_h5(root / "test_vol_h5" / "case0001.npy.h5", np.zeros((4, 8, 8), np.float32), vol_label(1, 4, 8, 8, 9))
    lists = root / "lists" / "lists_Synapse"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(names) + "\n")
    (lists / "test_vol.txt").write_text("case0001\n")
    return root


def test_synapse(synapse_root):
    tr = build_dataset("synapse", str(synapse_root), "train")
    assert len(tr) == 4 and tr.num_classes == 9
    s = tr[1]
    assert s["mask"][1].tolist() == [8] * 8 and s["mask"][3, 1] == 5 and s["meta"]["volume_id"] == "case0005"
    assert s["meta"]["slice_index"] == 1
    te = build_dataset("synapse", str(synapse_root), "test")
    assert len(te) == 4
    v = te.volumes()[0]
    assert v["meta"]["case_id"] == "case0001" and np.array_equal(v["mask"].numpy(), vol_label(1, 4, 8, 8, 9))
    with pytest.raises(ValueError, match="no validation split"):
        build_dataset("synapse", str(synapse_root), "val")


def test_synapse_corrupt_npz(synapse_root):
    (synapse_root / "train_npz" / "case0005_slice000.npz").write_bytes(b"nope")
    with pytest.raises(DataError, match="case0005_slice000.npz"):
        build_dataset("synapse", str(synapse_root), "train")[0]
