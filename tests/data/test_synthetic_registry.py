"""Synthetic data sets (determinism, split/seed independence, anatomy, cache) and the registry."""

import numpy as np
import pytest
import torch

from mambaseg.data import build_dataset, build_volume_dataset, list_datasets
from mambaseg.data.synthetic import SyntheticSkin


@pytest.mark.parametrize("name", ["synthetic-skin", "synthetic-polyp"])
def test_2d_synthetic_deterministic_per_seed_and_distinct(name):
    a = build_dataset(name, split="train", num_samples=3, size=64, seed=0)
    b = build_dataset(name, split="train", num_samples=5, size=64, seed=0)  # sample i independent of num_samples
    c = build_dataset(name, split="train", num_samples=3, size=64, seed=1)
    v = build_dataset(name, split="val", num_samples=3, size=64, seed=0)
    for i in range(3):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["mask"], b[i]["mask"])
        assert not torch.equal(a[i]["image"], c[i]["image"])
        assert not torch.equal(a[i]["image"], v[i]["image"])
    s = a[0]
    assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
    assert s["mask"].dtype == torch.int64 and set(s["mask"].unique().tolist()) == {0, 1}
    assert 0 <= float(s["image"].min()) and float(s["image"].max()) <= 255
    assert a.num_classes == 2 and a.in_channels == 3 and s["meta"]["original_size"] == (64, 64)
    frac = np.mean([float(a[i]["mask"].float().mean()) for i in range(3)])
    assert 0.005 < frac < 0.6  # a lesion/polyp, not the whole image


@pytest.mark.parametrize("size", [32, 96, 128])
def test_synthetic_any_size(size):
    s = build_dataset("synthetic-polyp", split="test", num_samples=1, size=size)[0]
    assert s["image"].shape == (3, size, size) and s["mask"].shape == (size, size)


def test_synthetic_cardiac_volumes_and_anatomy():
    ds = build_dataset("synthetic-cardiac", split="train", num_samples=2, size=64, depth=6, seed=0)
    assert len(ds) == 12 and ds.num_classes == 4 and ds.in_channels == 1
    s = ds[7]
    assert s["image"].shape == (1, 64, 64) and s["meta"]["volume_id"] == "cardiac_train_0001"
    assert s["meta"]["slice_index"] == 1 and len(s["meta"]["spacing"]) == 3
    vols = ds.volumes()
    v = vols[1]
    assert v["image"].shape == (1, 6, 64, 64) and v["mask"].shape == (6, 64, 64)
    assert torch.equal(v["mask"][1], s["mask"]) and torch.equal(v["image"][:, 1], s["image"])
    lab = v["mask"].numpy()
    assert {1, 2, 3} <= set(np.unique(lab[0]))  # basal slice: RV, myocardium, LV
    # the LV cavity is enclosed by myocardium: no LV pixel touches background or RV
    for z in range(6):
        lv = lab[z] == 3
        for sh in ((0, 1), (0, -1), (1, 1), (1, -1)):
            nb = np.roll(lab[z], sh[1], axis=sh[0])
            assert not np.any(lv & ((nb == 0) | (nb == 1)))
    # the LV shrinks from base to apex
    areas = [(lab[z] == 3).sum() for z in range(6)]
    assert areas[0] > areas[-1]
    again = build_dataset("synthetic-cardiac", split="train", num_samples=2, size=64, depth=6, seed=0).volumes()[1]
    assert torch.equal(again["image"], v["image"])
    other = build_dataset("synthetic-cardiac", split="test", num_samples=2, size=64, depth=6, seed=0).volumes()[1]
    assert not torch.equal(other["image"], v["image"])
    assert len(build_volume_dataset("synthetic-cardiac", split="val", num_samples=1, size=32)) == 1


def test_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBASEG_CACHE", str(tmp_path))
    a = SyntheticSkin("val", 2, 32, seed=5, disk_cache=True)
    files = list((tmp_path / "synthetic").glob("*.npz"))
    assert len(files) == 1 and "seed5" in files[0].name
    b = SyntheticSkin("val", 2, 32, seed=5, disk_cache=True)
    mem = SyntheticSkin("val", 2, 32, seed=5)
    assert torch.equal(a[1]["image"], b[1]["image"]) and torch.equal(b[1]["image"], mem[1]["image"])


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        build_dataset("synthetic-skin", size=16)
    with pytest.raises(ValueError, match="split"):
        build_dataset("synthetic-skin", split="training")
    with pytest.raises(ValueError, match="no root"):
        build_dataset("synthetic-skin", root="/data")


def test_registry_names_and_errors():
    names = list_datasets()
    assert set(names) == {"folder", "isic", "polyp", "acdc", "synapse", "nnunet", "nifti", "synthetic-skin",
                          "synthetic-polyp", "synthetic-cardiac", "synthetic-brats", "volumes", "brats", "msd"}
    assert all(isinstance(d, str) and d for d in names.values())
    with pytest.raises(ValueError, match="did you mean 'synthetic-skin'"):
        build_dataset("synthetic_skin")
    with pytest.raises(ValueError, match="needs root"):
        build_dataset("isic")
    with pytest.raises(ValueError, match="2D data set"):
        build_dataset("synthetic-skin", num_samples=1, size=32).volumes()
