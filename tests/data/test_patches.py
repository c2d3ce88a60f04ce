"""PatchDataset: patch shape, padding, nnU-Net's forced-foreground rule and locations, seeding, -1 handling, 2D."""

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mambaseg.data.base import collate_samples
from mambaseg.data.patches import (PatchDataset, class_locations, forced_positions, patch_loader,
                                   patch_origin_range)
from mambaseg.data.synthetic3d import SyntheticBraTS


class Cases(torch.utils.data.Dataset):
    """Whole cases given as (image, mask) arrays, returned as contract samples."""

    def __init__(self, cases, num_classes=3, regions=None):
        self.cases = [(torch.as_tensor(i, dtype=torch.float32), torch.as_tensor(m, dtype=torch.int64))
                      for i, m in cases]
        self.num_classes = num_classes
        if regions is not None:
            self.regions = regions

    def __len__(self):
        return len(self.cases)

    def __getitem__(self, k):
        img, m = self.cases[k]
        return {"image": img, "mask": m, "meta": {"case_id": f"c{k}", "spacing": (1.0,) * m.dim()}}


def _corner_cube_case(shape=(40, 40, 40), lo=2, hi=5, cls=1):
    img = np.random.default_rng(0).standard_normal((1,) + shape).astype(np.float32)
    m = np.zeros(shape, np.int64)
    m[tuple(slice(lo, hi) for _ in shape)] = cls
    return img, m


def test_forced_positions_closed_form():
    assert forced_positions(1) == [False]  # nnU-Net never oversamples with batch size 1
    assert forced_positions(2) == [False, True]
    assert forced_positions(3) == [False, False, True]
    assert forced_positions(4) == [False, False, False, True]
    assert forced_positions(5) == [False, False, False, True, True]
    assert forced_positions(4, 1.0) == [True] * 4 and forced_positions(4, 0.0) == [False] * 4


def test_origin_range_by_hand():
    lo, hi = patch_origin_range((10, 40, 7), (16, 16, 16))
    # pad 6 -> origin exactly -3; pad 0 -> 0..24; pad 9 -> 4 before, 5 after: origin in [-4, 7 + 4 + 1 - 16 = -4]
    assert lo.tolist() == [-3, 0, -4] and hi.tolist() == [-3, 24, -4]


@pytest.mark.parametrize("patch", [(8, 8, 8), (12, 20, 6), (48, 8, 16)])
def test_patch_shape_is_always_the_configured_size(patch):
    ds = Cases([_corner_cube_case((30, 14, 22)), _corner_cube_case((9, 40, 25))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = PatchDataset(ds, patch, batch_size=2, samples_per_epoch=8, seed=1)
        for i in range(8):
            s = p[i]
            assert s["image"].shape == (1,) + patch and s["mask"].shape == patch
            assert s["image"].dtype == torch.float32 and s["mask"].dtype == torch.int64
            assert s["mask"].min() >= 0  # -1 became outside_label 0


def test_small_volume_is_centred_padded_and_said_once():
    img = np.arange(10 ** 3, dtype=np.float32).reshape(1, 10, 10, 10) + 1
    m = np.ones((10, 10, 10), np.int64)
    p = PatchDataset(Cases([(img, m)]), (16, 16, 16), augmentation=None, outside_label=None, samples_per_epoch=4)
    with pytest.warns(UserWarning, match="smaller than the patch.*padded"):
        s = p[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second case read does not warn again
        p[1]
    assert s["meta"]["patch_origin"] == (-3, -3, -3)
    assert torch.equal(s["image"][0, 3:13, 3:13, 3:13], torch.from_numpy(img[0]))
    assert s["image"].sum() == img.sum()  # nothing else in the patch
    assert (s["mask"][3:13, 3:13, 3:13] == 1).all() and (s["mask"] == -1).sum() == 16 ** 3 - 10 ** 3


def test_oversampling_forces_exactly_the_last_position_and_finds_the_foreground():
    ds = Cases([_corner_cube_case()])  # foreground: a 3^3 cube in a corner of 40^3
    p = PatchDataset(ds, (8, 8, 8), batch_size=3, samples_per_epoch=300, augmentation=None, seed=0)
    forced_fg, free_fg = [], []
    for i in range(300):
        s = p[i]
        has = bool((s["mask"] == 1).any())
        assert s["meta"]["forced_foreground"] == (i % 3 == 2)
        (forced_fg if i % 3 == 2 else free_fg).append(has)
    assert all(forced_fg) and len(forced_fg) == 100
    # a uniform origin in [0, 32]^3 meets the cube with probability (5/33)^3 = 0.35 %
    assert sum(free_fg) <= 6


def test_probabilistic_oversampling_fraction():
    ds = Cases([_corner_cube_case()])
    p = PatchDataset(ds, (8, 8, 8), batch_size=2, samples_per_epoch=600, augmentation=None, seed=3,
                     probabilistic_oversampling=True)
    forced = np.array([p.is_forced(i) for i in range(600)])
    sd = np.sqrt(0.33 * 0.67 / 600)
    assert abs(forced.mean() - 0.33) < 4 * sd
    for i in range(30):  # the sample follows the same coin and forced samples hold foreground
        s = p[i]
        assert s["meta"]["forced_foreground"] == forced[i] and (not forced[i] or (s["mask"] == 1).any())


def test_forced_class_is_drawn_among_present_classes_and_regions():
    img = np.zeros((1, 30, 30, 30), np.float32)
    m = np.zeros((30, 30, 30), np.int64)
    m[2:4, 2:4, 2:4] = 1
    m[25:28, 25:28, 25:28] = 2  # class 3 absent
    ds = Cases([(img, m)], num_classes=4)
    p = PatchDataset(ds, (6, 6, 6), batch_size=1, oversample_foreground=1.0, samples_per_epoch=200,
                     augmentation=None)
    chosen = [p[i]["meta"]["foreground_class"] for i in range(200)]
    assert set(chosen) == {0, 1}  # indices into [[1], [2], [3]]: class 3 is never chosen
    assert 60 < chosen.count(0) < 140
    for i in range(20):
        s = p[i]
        cls = s["meta"]["foreground_class"] + 1
        assert (s["mask"] == cls).any()
    # region mode: the data set's regions decide; region [1, 2] contains both cubes
    pr = PatchDataset(Cases([(img, m)], num_classes=4, regions=[[1, 2], [2]]), (6, 6, 6), batch_size=1,
                      oversample_foreground=1.0, samples_per_epoch=50, augmentation=None)
    assert pr.fg_classes == [[1, 2], [2]]
    for i in range(50):
        s = pr[i]
        assert (s["mask"] > 0).any() and (s["meta"]["foreground_class"] == 0 or (s["mask"] == 2).any())


def test_class_locations_counts_rule():
    m = np.zeros((20, 20, 20), np.int64)
    m[:5, :10, :10] = 1  # 500 voxels
    m[10:12, 10:15, 10:15] = 2  # 50 voxels
    locs = class_locations(m, [[1], [2], [3], [1, 2]], num_samples=10, min_coverage=0.1)
    assert [len(l) for l in locs] == [50, 10, 0, 55]  # max(min(10, n), ceil(0.1 n))
    assert (m[tuple(locs[0].T)] == 1).all() and (m[tuple(locs[1].T)] == 2).all()
    assert len(np.unique(locs[0], axis=0)) == 50  # without replacement
    full = class_locations(m, [[2]])  # default 10,000: every one of the 50 voxels
    assert len(full[0]) == 50


def test_seeding_independent_of_workers_and_fresh_per_epoch():
    ds = SyntheticBraTS("train", num_samples=2, size=24, channels=2)
    p = PatchDataset(ds, (16, 16, 16), batch_size=2, samples_per_epoch=4, seed=7, cache_size=2)
    a = [p[i] for i in range(4)]
    b = [p[i] for i in range(4)]
    assert all(torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"]) for x, y in zip(a, b))
    dl = DataLoader(p, batch_size=2, num_workers=2, collate_fn=collate_samples)
    batches = list(dl)
    assert torch.equal(batches[1]["image"][0], a[2]["image"]) and torch.equal(batches[0]["mask"][1], a[1]["mask"])
    sampler = p.sampler()
    e0, e1 = list(sampler), list(sampler)
    assert e0 == [0, 1, 2, 3] and e1 == [4, 5, 6, 7]
    assert not torch.equal(p[4]["image"], a[0]["image"])
    assert p.is_forced(5) == p.is_forced(1)  # positions follow the epoch layout
    p.set_epoch(1)
    assert not torch.equal(p[0]["image"], a[0]["image"])


def test_patch_loader_batches_and_fresh_epochs():
    ds = Cases([_corner_cube_case((20, 20, 20))])
    p = PatchDataset(ds, (8, 8, 8), batch_size=3, samples_per_epoch=7, augmentation=None)
    dl = patch_loader(p)
    e0, e1 = list(dl), list(dl)
    assert len(e0) == 2 and e0[0]["image"].shape == (3, 1, 8, 8, 8) and isinstance(e0[0]["meta"], list)
    assert [m["forced_foreground"] for m in e0[1]["meta"]] == [False, False, True]
    assert not torch.equal(e0[0]["image"], e1[0]["image"])


def test_outside_label_and_masked_channels():
    img = np.ones((2, 6, 6, 6), np.float32)
    m = np.zeros((6, 6, 6), np.int64)
    m[0] = -1  # "outside the non-zero crop" from preprocessing
    ds = Cases([(img, m)])
    keep = PatchDataset(ds, (8, 8, 8), augmentation=None, outside_label=None, mask_outside_channels=[1],
                        samples_per_epoch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = keep[0]
    outside = s["mask"] == -1
    assert outside.sum() == 8 ** 3 - 5 * 36  # padding + the -1 slice
    assert (s["image"][1][outside] == 0).all() and (s["image"][0][outside & (s["image"][0] != 0)] == 1).all()
    assert (s["image"][0] == 1).sum() == 6 ** 3  # channel 0 keeps the -1 slice's voxels
    zero = PatchDataset(ds, (8, 8, 8), augmentation=None, samples_per_epoch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert zero[0]["mask"].min() == 0


def test_2d_patches_with_augmentation():
    img = np.random.default_rng(0).standard_normal((3, 40, 50)).astype(np.float32)
    m = np.zeros((40, 50), np.int64)
    m[30:34, 40:45] = 1
    p = PatchDataset(Cases([(img, m)], num_classes=2), (16, 24), batch_size=2, samples_per_epoch=20)
    assert p.augmentation.spatial_dims == 2
    for i in range(20):
        s = p[i]
        assert s["image"].shape == (3, 16, 24) and s["mask"].shape == (16, 24)


def test_bad_arguments():
    ds = Cases([_corner_cube_case((10, 10, 10))])
    with pytest.raises(ValueError, match="patch_size"):
        PatchDataset(ds, (8, 0, 8))
    with pytest.raises(ValueError, match="oversample_foreground"):
        PatchDataset(ds, (8, 8, 8), oversample_foreground=1.5)
    with pytest.raises(ValueError, match="augmentation"):
        PatchDataset(ds, (8, 8, 8), augmentation="monai")
    with pytest.raises(ValueError, match="spatial axes"):
        PatchDataset(ds, (8, 8))[0]
