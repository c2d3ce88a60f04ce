"""nnU-Net preprocessing (mambaseg.data.preprocess) against hand computations, scipy's own zoom, closed forms;
the inverse; the on-disk cache; the 3D data set's samples."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from _volume_fixtures import brats2020, case_label, nnunet_raw
from mambaseg.data import preprocess as pp
from mambaseg.data.volumetric import VolumetricDataset


def _plan(normalization, target=(1.0, 1.0, 1.0), umn=None, props=None, label_order=1):
    n = len(normalization)
    return pp.PreprocessPlan(tuple(target), list(normalization), umn or [False] * n, props or [None] * n,
                             label_order=label_order)


# ----------------------------------------------------------------------------------------------------------------
# cropping and normalisation
# ----------------------------------------------------------------------------------------------------------------
def test_crop_to_nonzero_bbox_hole_filling_and_outside_label():
    img = np.zeros((2, 10, 9, 8), np.float32)
    img[0, 2:7, 3:6, 1:5] = 1.0
    img[0, 4, 4, 2] = 0.0          # a hole: filled, so inside
    img[1, 8, 4, 3] = 5.0           # the second channel widens the box
    lab = np.zeros((10, 9, 8), np.int64)
    lab[3, 3, 1] = 2
    c, seg, bbox, mask = pp.crop_to_nonzero(img, lab)
    assert bbox == [[2, 9], [3, 6], [1, 5]]
    assert c.shape == (2, 7, 3, 4) and seg.shape == (7, 3, 4)
    assert mask[4 - 2, 4 - 3, 2 - 1]                        # the hole is inside the mask
    assert seg[1, 0, 0] == 2 and seg[4 - 2, 4 - 3, 2 - 1] == 0
    assert seg[7 - 2, 3 - 3, 1 - 1] == -1                   # zero voxel outside the mask inside the box
    assert (seg == -1).sum() == (~mask).sum()


def test_zscore_with_the_nonzero_mask_matches_a_hand_computation():
    img = np.zeros((1, 4, 4, 4), np.float32)
    img[0, 1:3, 1:3, 1:3] = np.arange(1, 9, dtype=np.float32).reshape(2, 2, 2)
    c, seg, bbox, _ = pp.crop_to_nonzero(img)
    out = pp.normalize(c, seg, _plan(["zscore"], umn=[True]))
    vals = np.arange(1, 9, dtype=np.float64)
    expect = (vals - 4.5) / np.sqrt(np.mean((vals - 4.5) ** 2))   # population std, as numpy's default
    np.testing.assert_allclose(np.sort(out.ravel()), np.sort(expect), rtol=1e-6)
    # without the mask every voxel of the (cropped) image counts
    img2 = np.zeros((1, 3, 3, 3), np.float32)
    img2[0, 1, 1, 1] = 9.0
    img2[0, 0, 0, 0] = 1.0
    c2, seg2, _, _ = pp.crop_to_nonzero(img2)
    out2 = pp.normalize(c2, seg2, _plan(["zscore"], umn=[False]))
    x = c2[0].astype(np.float64)
    np.testing.assert_allclose(out2[0], (x - x.mean()) / x.std(), rtol=1e-5)
    masked = pp.normalize(c2, seg2, _plan(["zscore"], umn=[True]))
    assert np.all(masked[0][seg2 < 0] == 0)


def test_ct_normalisation_uses_the_training_foreground_percentiles_mean_std():
    rng = np.random.default_rng(0)
    cases = []
    for k in range(3):
        img = np.zeros((1, 8, 8, 8), np.float32)
        img[0, 1:7, 1:7, 1:7] = rng.normal(40 + 10 * k, 30, (6, 6, 6)).astype(np.float32)
        lab = np.zeros((8, 8, 8), np.int64)
        lab[2:5, 2:6, 3:6] = 1 + k % 2
        cases.append((img, lab, (1.0, 1.0, 1.0)))
    plan = pp.plan_preprocessing(cases, ["CT"])
    fg = np.concatenate([img[0][lab > 0] for img, lab, _ in cases]).astype(np.float64)
    p = plan.intensity_properties[0]
    lo, hi = np.percentile(fg, 0.5), np.percentile(fg, 99.5)
    assert p["percentile_00_5"] == pytest.approx(lo, rel=1e-5)
    assert p["percentile_99_5"] == pytest.approx(hi, rel=1e-5)
    assert p["mean"] == pytest.approx(fg.mean(), rel=1e-5) and p["std"] == pytest.approx(fg.std(), rel=1e-5)
    assert plan.use_mask_for_norm == [False]  # never for CT
    img, lab, _ = cases[1]
    c, seg, _, _ = pp.crop_to_nonzero(img, lab)
    out = pp.normalize(c, seg, plan)
    np.testing.assert_allclose(out[0], (np.clip(c[0], lo, hi) - fg.mean()) / fg.std(), rtol=1e-4, atol=1e-5)


def test_use_mask_for_norm_follows_the_relative_size_after_cropping():
    small = np.zeros((1, 10, 10, 10), np.float32)
    small[0, 2:8, 2:8, 2:8] = 1.0      # 216 / 1000 after cropping
    full = np.ones((1, 10, 10, 10), np.float32)
    lab = np.zeros((10, 10, 10), np.int64)
    assert pp.plan_preprocessing([(small, lab, (1, 1, 1))] * 3, ["zscore"]).use_mask_for_norm == [True]
    assert pp.plan_preprocessing([(full, lab, (1, 1, 1))] * 3, ["zscore"]).use_mask_for_norm == [False]


# ----------------------------------------------------------------------------------------------------------------
# spacing and resampling
# ----------------------------------------------------------------------------------------------------------------
def test_target_spacing_median_and_the_anisotropic_rule():
    iso = [(1.0, 1.0, 1.0), (1.2, 0.8, 1.4), (0.9, 1.1, 1.0)]
    assert pp.compute_target_spacing(iso, [(100, 100, 100)] * 3) == pytest.approx((1.0, 1.0, 1.0))
    # thick slices along k: median spacing 5 (> 3 x 0.8) and 20 voxels (x 3 < 256): 10th percentile of k
    sp = [(0.8, 0.8, 5.0), (0.8, 0.8, 4.0), (0.8, 0.8, 6.0), (0.8, 0.8, 2.5), (0.8, 0.8, 5.0)]
    t = pp.compute_target_spacing(sp, [(256, 256, 20)] * 5)
    assert t[:2] == pytest.approx((0.8, 0.8))
    assert t[2] == pytest.approx(np.percentile([5.0, 4.0, 6.0, 2.5, 5.0], 10))
    # many voxels along the coarse axis: no rule, the median
    assert pp.compute_target_spacing(sp, [(256, 256, 200)] * 5)[2] == pytest.approx(5.0)
    # never finer than the other axes
    t2 = pp.compute_target_spacing([(0.8, 0.8, 5.0)] * 8 + [(0.8, 0.8, 0.5)] * 2, [(256, 256, 20)] * 10)
    assert t2[2] == pytest.approx(0.8 + 1e-5)   # the 10th percentile (0.5) is finer than 0.8


def test_separate_z_axis_rule():
    assert pp.separate_z_axis((1.0, 1.0, 2.9), (1.0, 1.0, 1.0)) is None          # ratio 2.9 <= 3
    assert pp.separate_z_axis((0.8, 0.8, 3.0), (1.0, 1.0, 1.0)) == 2             # ratio 3.75
    assert pp.separate_z_axis((1.0, 1.0, 1.0), (4.0, 1.0, 1.0)) == 0             # from the target spacing
    assert pp.separate_z_axis((3.5, 3.5, 1.0), (1, 1, 1)) is None                # two coarsest axes: no


def test_linear_resize_matches_the_hand_computation_and_scipy_zoom():
    from scipy.ndimage import zoom

    a = np.zeros((2, 1, 1), np.float32)
    a[1] = 10.0
    out = pp._zoom(a, (4, 1, 1), 1)
    # align-corners=False: output i samples input (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, edge-clamped
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 2.5, 7.5, 10.0])
    rng = np.random.default_rng(1)
    x = rng.random((7, 9, 5)).astype(np.float32)
    for order in (1, 3):
        ours = pp._zoom(x, (14, 6, 10), order)
        ref = zoom(x, (2.0, 6 / 9, 2.0), order=order, mode="nearest", grid_mode=True)
        assert ref.shape == ours.shape
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_separate_z_resamples_the_thick_axis_by_nearest():
    rng = np.random.default_rng(2)
    img = rng.random((1, 6, 6, 3)).astype(np.float32)
    out = pp.resample_image(img, (6, 6, 6), (0.5, 0.5, 3.0), (0.5, 0.5, 1.5), order=3)
    # in-plane unchanged; along k nearest: output slices 2m and 2m + 1 are input slice m
    for k in range(6):
        np.testing.assert_allclose(out[0, :, :, k], img[0, :, :, k // 2], atol=1e-6)
    iso = pp.resample_image(img, (6, 6, 6), (1.0, 1.0, 1.5), (1.0, 1.0, 0.75), order=3)
    assert not np.allclose(iso[0, :, :, 1], img[0, :, :, 0], atol=1e-3)  # a cubic 3D resize mixes slices


def test_label_resampling_one_hot_linear_and_nearest():
    lab = np.zeros((4, 1, 1), np.int64)
    lab[2:] = 3
    up = pp.resample_label(lab, (8, 1, 1), (1, 1, 1), (0.5, 1, 1), order=1)
    np.testing.assert_array_equal(up[:, 0, 0], [0, 0, 0, 0, 3, 3, 3, 3])
    # one-hot: values are never blended (a linear resize of the raw values would give 1 and 2)
    lab3 = np.array([0, 3, 0, 3], np.int64).reshape(4, 1, 1)
    out = pp.resample_label(lab3, (3, 1, 1), (1, 1, 1), (4 / 3, 1, 1), order=1)
    assert set(np.unique(out)) <= {0, 3}
    near = pp.resample_label(lab3, (8, 1, 1), (1, 1, 1), (0.5, 1, 1), order=0)
    np.testing.assert_array_equal(near[:, 0, 0], [0, 0, 3, 3, 0, 0, 3, 3])


def test_forward_and_inverse_return_the_original_grid(tmp_path):
    img = np.zeros((2, 12, 10, 8), np.float32)
    img[:, 2:10, 2:8, 1:7] = np.random.default_rng(3).uniform(1, 2, (2, 8, 6, 6))
    lab = np.zeros((12, 10, 8), np.int64)
    lab[2:10, 2:8, 1:7] = case_label(0, (8, 6, 6), values=(1, 2, 3))
    same = _plan(["zscore", "zscore"], target=(0.8, 0.9, 3.0), umn=[True, True])
    x, y, props = pp.preprocess_case(img, lab, (0.8, 0.9, 3.0), same)
    assert x.shape == (2, 8, 6, 6) and props["crop_bbox"] == [[2, 10], [2, 8], [1, 7]]
    np.testing.assert_array_equal(pp.invert_label(y, props), lab)       # unchanged spacing: the labels back exactly
    finer = _plan(["zscore", "zscore"], target=(0.5, 0.5, 1.0), umn=[True, True])
    x2, y2, props2 = pp.preprocess_case(img, lab, (0.8, 0.9, 3.0), finer)
    assert x2.shape[1:] == pp.compute_new_shape((8, 6, 6), (0.8, 0.9, 3.0), (0.5, 0.5, 1.0)) == (13, 11, 18)
    back = pp.invert_label(y2, props2)
    assert back.shape == lab.shape
    assert (back == lab).mean() > 0.9 and set(np.unique(back)) <= set(np.unique(lab))
    probs = np.stack([(y2 == c).astype(np.float32) for c in range(4)])
    p = pp.invert_probabilities(probs, props2)
    assert p.shape == (4, 12, 10, 8)
    assert np.all(p[0][:2] == 1.0) and np.all(p[1:, :2] == 0)             # outside the crop: background
    pr = pp.invert_probabilities(probs[1:], props2, regions=True)
    assert pr.shape == (3, 12, 10, 8) and np.all(pr[:, :2] == 0)
    p_same = pp.invert_probabilities(np.stack([(y == c).astype(np.float32) for c in range(4)]), props)
    np.testing.assert_array_equal(p_same.argmax(0), lab)


# ----------------------------------------------------------------------------------------------------------------
# the 3D data set and its cache
# ----------------------------------------------------------------------------------------------------------------
def test_samples_follow_the_volume_contract(tmp_path):
    root = brats2020(tmp_path / "b", n=3)
    ds = VolumetricDataset(root, "all", target_spacing=(0.8, 0.9, 1.5))
    s = ds[0]
    assert s["image"].dtype == torch.float32 and s["mask"].dtype == torch.int64
    assert s["image"].shape[0] == 4 and s["image"].shape[1:] == s["mask"].shape
    m = s["meta"]
    assert m["spacing"] == pytest.approx((0.8, 0.9, 1.5)) and m["original_spacing"] == pytest.approx((0.8, 0.9, 3.0))
    assert m["original_shape"] == (12, 10, 8) and m["crop_bbox"] == [[2, 10], [2, 8], [2, 6]]
    assert np.asarray(m["affine"]).shape == (4, 4) and len(m["source_files"]) == 5
    assert set(s["mask"].unique().tolist()) <= {0, 1, 2, 3}
    assert tuple(s["mask"].shape) == (8, 6, 8)                     # k: 4 voxels at 3 mm -> 8 at 1.5 mm
    back = ds.invert_label(s["mask"], m)
    assert back.shape == (12, 10, 8)
    assert ds.regions == [[1, 2, 3], [1, 3], [3]]
    kept = VolumetricDataset(root, "all", outside_label=-1, target_spacing=(0.8, 0.9, 1.5))[0]["mask"]
    assert (kept == -1).any() and torch.equal(torch.where(kept < 0, 0, kept), s["mask"])


def test_the_cache_is_reused_and_invalidated_by_a_changed_file(tmp_path, monkeypatch):
    root = nnunet_raw(tmp_path / "nn", n=3, channels=("CT",))
    cache = tmp_path / "cache"
    calls = {"plan": 0, "case": 0}
    real_plan, real_case = pp.plan_preprocessing, pp.preprocess_case

    def count_plan(*a, **k):
        calls["plan"] += 1
        return real_plan(*a, **k)

    def count_case(*a, **k):
        calls["case"] += 1
        return real_case(*a, **k)

    import mambaseg.data.volumetric as vol
    monkeypatch.setattr(vol, "plan_preprocessing", count_plan)
    monkeypatch.setattr(vol, "preprocess_case", count_case)
    first = VolumetricDataset(root, "all", cache_dir=cache)
    a = [first[i] for i in range(3)]
    assert calls == {"plan": 1, "case": 3}
    files = sorted(p for p in cache.rglob("*") if p.is_file())
    assert len(files) == 1 + 3 * 3 and not any(p.name.endswith(".tmp") for p in files)  # plan + 3 cases x 3 files
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    second = VolumetricDataset(root, "all", cache_dir=cache)   # a second run
    b = [second[i] for i in range(3)]
    assert calls == {"plan": 1, "case": 3} and second.cache.computed == 0
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        assert x["meta"] == y["meta"]
    # another setting: another key
    VolumetricDataset(root, "all", cache_dir=cache, target_spacing=(1.0, 1.0, 1.0))[0]
    assert calls == {"plan": 2, "case": 4}
    # a training file changed (mtime): plan and cases are recomputed
    f = root / "imagesTr" / "case_001_0000.nii.gz"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    third = VolumetricDataset(root, "all", cache_dir=cache)
    third[0]
    assert calls["plan"] == 3 and third.cache.computed == 1


def test_preprocess_false_gives_the_raw_volumes(tmp_path):
    root = brats2020(tmp_path / "b", n=2)
    ds = VolumetricDataset(root, "all", preprocess=False)
    image, label, _ = ds.raw_case(1)
    s = ds[1]
    np.testing.assert_array_equal(s["image"].numpy(), image)
    np.testing.assert_array_equal(s["mask"].numpy(), label)
    assert s["meta"]["crop_bbox"] == [[0, 12], [0, 10], [0, 8]]


def test_cached_cases_can_be_memory_mapped(tmp_path):
    root = brats2020(tmp_path / "b", n=2)
    ds = VolumetricDataset(root, "all", cache_dir=tmp_path / "cache")
    img, lab, meta = ds.load(1)
    mimg, mlab, mmeta = VolumetricDataset(root, "all", cache_dir=tmp_path / "cache").load(1, mmap=True)
    assert isinstance(mimg, np.memmap) and isinstance(mlab, np.memmap) and not mimg.flags.writeable
    np.testing.assert_array_equal(np.asarray(mimg), img)
    np.testing.assert_array_equal(np.asarray(mlab, np.int64), lab)
    assert lab.dtype == np.int64 and mmeta == meta
