"""synthetic-brats: determinism, contract sample, nested tumour anatomy, anisotropic spacing, registry."""

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation

from mambaseg.data import build_dataset, build_volume_dataset, list_datasets
from mambaseg.data.synthetic3d import BRATS_REGIONS, SyntheticBraTS

SIX = np.zeros((3, 3, 3), bool)
SIX[1, 1, :] = SIX[1, :, 1] = SIX[:, 1, 1] = True  # 6-neighbourhood


def _touches(lab, inside, others_allowed):
    """Labels found in the 6-neighbourhood of the region ``inside`` that are not in ``others_allowed``."""
    ring = binary_dilation(inside, SIX) & ~inside
    return set(np.unique(lab[ring]).tolist()) - set(others_allowed)


def test_deterministic_and_distinct_per_seed_split_index():
    a = SyntheticBraTS("train", num_samples=2, size=32, seed=0)
    b = SyntheticBraTS("train", num_samples=5, size=32, seed=0)  # case i independent of num_samples
    c = SyntheticBraTS("train", num_samples=2, size=32, seed=1)
    v = SyntheticBraTS("val", num_samples=2, size=32, seed=0)
    for i in range(2):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["mask"], b[i]["mask"])
        assert not torch.equal(a[i]["image"], c[i]["image"])
        assert not torch.equal(a[i]["image"], v[i]["image"])
    assert not torch.equal(a[0]["mask"], a[1]["mask"])


def test_contract_sample_and_zscore_inside_brain():
    ds = SyntheticBraTS("test", num_samples=1, size=32, channels=3)
    s = ds[0]
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 32, 32, 32)
    assert s["mask"].dtype == torch.int64 and s["mask"].shape == (32, 32, 32)
    m = s["meta"]
    assert m["case_id"] == "brats_test_0000" and m["spacing"] == (1.0, 1.0, 1.0)
    assert m["original_shape"] == (32, 32, 32) and m["crop_bbox"] == [[0, 32]] * 3
    assert np.asarray(m["affine"]).shape == (4, 4) and m["channel_names"] == ["flair", "t1ce", "t2"]
    assert ds.in_channels == 3 and ds.num_classes == 4 and ds.regions is None and ds.spatial_dims == 3
    img = s["image"].numpy()
    brain = np.any(img != 0, axis=0)
    assert 0.1 < brain.mean() < 0.5  # a brain in the field of view (BraTS: ~17 %), background around it
    for c in range(3):
        v = img[c][brain]
        assert abs(v.mean()) < 1e-4 and abs(v.std() - 1) < 1e-3
    raw = SyntheticBraTS("test", num_samples=1, size=32, channels=3, normalize=False)[0]["image"].numpy()
    assert raw.min() >= 0 and np.array_equal(np.any(raw != 0, axis=0), brain)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_tumour_parts_nested(index):
    ds = SyntheticBraTS("train", num_samples=3, size=40, seed=3, label_mode="regions")
    s = ds[index]
    lab = s["mask"].numpy()
    brain = np.any(s["image"].numpy() != 0, axis=0)
    assert ds.regions == BRATS_REGIONS and ds.region_names == ["WT", "TC", "ET"]
    counts = np.bincount(lab.ravel(), minlength=4)
    assert counts[2] > 0 and counts[3] > 0  # oedema and enhancing rim always present
    assert not (lab > 0)[~brain].any()  # tumour only inside the brain
    # necrosis enclosed by the enhancing rim; the core (NCR + ET) enclosed by oedema
    if counts[1]:
        assert _touches(lab, lab == 1, {1, 3}) == set()
    assert _touches(lab, np.isin(lab, [1, 3]), {1, 2, 3}) == set()
    # region targets as the contract builds them are nested WT >= TC >= ET and ET is not all of TC
    reg = torch.stack([torch.isin(s["mask"], torch.tensor(r)) for r in ds.regions]).numpy()
    assert (reg[1] <= reg[0]).all() and (reg[2] <= reg[1]).all() and reg[0].sum() > reg[1].sum()


def test_channels_show_the_tumour_with_different_contrasts():
    ds = SyntheticBraTS("train", num_samples=2, size=32, channels=4, seed=0)
    s = ds[0]
    img, lab = s["image"].numpy(), s["mask"].numpy()
    brain = np.any(img != 0, axis=0)
    healthy = brain & (lab == 0)
    flair, t1ce = img[0], img[1]
    assert flair[lab == 2].mean() > flair[healthy].mean() + 0.5  # oedema bright on FLAIR
    assert t1ce[lab == 3].mean() > t1ce[lab == 2].mean() + 0.5  # enhancing rim bright on T1ce
    corr = np.corrcoef(img[:, brain].reshape(4, -1))
    assert (np.abs(corr[np.triu_indices(4, 1)]) < 0.98).all()  # channels are not copies of each other


def test_anisotropic_spacing_keeps_the_field_of_view():
    iso = SyntheticBraTS("train", num_samples=1, size=48)[0]
    ani = SyntheticBraTS("train", num_samples=1, size=48, spacing=(1.0, 1.5, 4.0))[0]
    assert ani["image"].shape[1:] == (48, 32, 12) and ani["meta"]["spacing"] == (1.0, 1.5, 4.0)
    assert np.allclose(np.diag(np.asarray(ani["meta"]["affine"]))[:3], (1.0, 1.5, 4.0))
    # the same anatomy in mm: brain volume in mm^3 agrees within 10 %
    vol = lambda s, v: float(np.any(s["image"].numpy() != 0, axis=0).sum()) * v  # noqa: E731
    assert abs(vol(ani, 6.0) / vol(iso, 1.0) - 1) < 0.1


def test_registry_and_bad_arguments():
    assert "synthetic-brats" in list_datasets()
    ds = build_dataset("synthetic-brats", split="val", num_samples=1, size=32, channels=2, label_mode="regions",
                       transform=lambda s: {**s, "seen": True})
    s = ds[0]
    assert s["seen"] and s["image"].shape[0] == 2 and ds.regions is not None
    vols = build_volume_dataset("synthetic-brats", split="test", num_samples=1, size=32)
    assert vols[0]["image"].shape == (4, 32, 32, 32)
    with pytest.raises(ValueError, match="channels"):
        SyntheticBraTS(channels=5)
    with pytest.raises(ValueError, match="unknown channel"):
        SyntheticBraTS(channels=["pd"])
    with pytest.raises(ValueError, match="spacing"):
        SyntheticBraTS(spacing=(1, 0, 1))
    with pytest.raises(ValueError, match="label_mode"):
        SyntheticBraTS(label_mode="softmax")
