"""Joint transforms keep image and mask aligned; oracles: a marker pixel, torch's interpolate, hand arithmetic."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from mambaseg.data.transforms import (CenterCrop, Compose, IntensityJitter, Normalize, RandomCrop, RandomHFlip,
                                      RandomRot90, RandomRotation, RandomRotFlip, RandomVFlip, Resize,
                                      preset_transforms, seed_transforms)


def _marker(h, w, y, x, c=3):
    img = np.zeros((h, w, c), np.float32)
    img[y, x] = 9.0
    mask = np.zeros((h, w), np.int64)
    mask[y, x] = 1
    return img, mask


@settings(max_examples=40, deadline=None)
@given(h=st.integers(8, 24), w=st.integers(8, 24), data=st.data(), seed=st.integers(0, 2 ** 16))
def test_geometric_transforms_keep_marker_aligned(h, w, data, seed):
    y, x = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
    img, mask = _marker(h, w, y, x)
    t = Compose([RandomHFlip(0.5, seed), RandomVFlip(0.5, seed + 1), RandomRot90(0.5, seed + 2),
                 RandomRotFlip(0.5, seed + 3), RandomCrop((6, 7), seed=seed + 4)])
    oi, om = t(img, mask)
    assert oi.shape == (6, 7, 3) and om.shape == (6, 7)
    assert np.array_equal(oi[..., 0] == 9.0, om == 1)  # marker in both or in neither, at the same place


@settings(max_examples=40, deadline=None)
@given(angle=st.one_of(st.floats(-180, 180), st.sampled_from([0.0, 45.0, 90.0, -90.0, 180.0, 60.0])),
       h=st.integers(8, 24), w=st.integers(8, 24), data=st.data())
def test_rotation_nearest_keeps_marker_aligned(angle, h, w, data):
    y, x = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
    img, mask = _marker(h, w, y, x)
    rot = RandomRotation((angle, angle), p=1.0, order=0)
    oi, om = rot(img, mask)
    assert np.array_equal(oi[..., 0] == 9.0, om == 1)


def test_rotation_bilinear_marker_peak_inside_mask():
    img, mask = np.zeros((32, 32, 1), np.float32), np.zeros((32, 32), np.int64)
    img[10:14, 18:22] = 1.0
    mask[10:14, 18:22] = 1
    oi, om = RandomRotation((37.0, 37.0), p=1.0, order=1)(img, mask)
    peak = np.unravel_index(np.argmax(oi[..., 0]), om.shape)
    assert om[peak] == 1 and 12 <= om.sum() <= 20


def test_rotation_draws_a_fresh_angle_per_sample():
    rot = RandomRotation(180, p=1.0, seed=0)
    img, mask = _marker(8, 8, 2, 3)
    angles = set()
    for _ in range(5):
        rot(img, mask)
        angles.add(rot.last_angle)
    assert len(angles) == 5


def test_rotation_by_90_equals_rot90():
    rng = np.random.default_rng(0)
    img = rng.random((9, 9, 2)).astype(np.float32)
    mask = rng.integers(0, 3, (9, 9))
    oi, om = RandomRotation((90, 90), p=1.0, order=1)(img, mask)
    k = 1 if np.allclose(oi, np.rot90(img, 1), atol=1e-5) else 3  # direction convention either way
    assert np.allclose(oi, np.rot90(img, k), atol=1e-5) and np.array_equal(om, np.rot90(mask, k))


@pytest.mark.parametrize("size", [(5, 7), (16, 12), (8, 8)])
def test_resize_matches_torch_interpolate(size):
    rng = np.random.default_rng(1)
    img = rng.random((8, 10, 3)).astype(np.float32)
    mask = rng.integers(0, 4, (8, 10))
    oi, om = Resize(size)(img, mask)
    ref = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=size, mode="bilinear",
                                          align_corners=False)[0].permute(1, 2, 0).numpy()
    assert np.allclose(oi, ref, atol=1e-5)
    refm = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None].float(), size=size,
                                           mode="nearest-exact")[0, 0].long().numpy()
    assert np.array_equal(om, refm) and om.dtype == mask.dtype


def test_resize_mask_keeps_label_set_and_cubic_runs():
    mask = np.zeros((10, 10), np.int64)
    mask[3:7, 2:5] = 3
    img = np.ones((10, 10, 1), np.float32)
    oi, om = Resize(23, "bicubic")(img, mask)
    assert set(np.unique(om)) == {0, 3} and np.allclose(oi, 1, atol=1e-5)


def test_crop_pads_small_inputs_and_center_crop():
    img, mask = _marker(4, 4, 1, 1)
    oi, om = RandomCrop(6, seed=0)(img, mask)
    assert oi.shape == (6, 6, 3) and om.sum() == 1 and oi[..., 0].max() == 9
    ci, cm = CenterCrop(2)(*_marker(4, 4, 1, 1))
    assert cm[0, 0] == 1 and ci[0, 0, 0] == 9


def test_intensity_jitter_touches_image_only():
    img, mask = _marker(8, 8, 3, 3)
    img += 1
    oi, om = IntensityJitter(0.3, 0.3, 0.2, p=1.0, seed=0)(img, mask)
    assert om is mask and not np.allclose(oi, img)


def test_normalize_presets_by_hand():
    img = np.array([[[0, 128, 255], [255, 0, 51]]], np.float32)  # (1, 2, 3)
    out, _ = Normalize("imagenet")(img, None)
    assert np.allclose(out[0, 0], [(0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    assert np.allclose(Normalize("minmax")(img, None)[0], img / 255)
    g = np.array([[[2.0], [4.0], [6.0]]], np.float32)
    assert np.allclose(Normalize("minmax255")(g, None)[0].ravel(), [0, 127.5, 255])
    assert np.allclose(Normalize("imagenet")(g, None)[0].ravel(), (g.ravel() / 255 - 0.449) / 0.226, atol=1e-3)
    z = Normalize("zscore")(g, None)[0]
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-5
    assert np.all(Normalize("minmax")(np.full((2, 2, 1), 5.0, np.float32), None)[0] == 0)
    with pytest.raises(ValueError, match="preset"):
        Normalize("bogus")


@pytest.mark.parametrize("name", ["vmunet_isic", "mamba_unet_acdc", "synapse", "default"])
@pytest.mark.parametrize("train", [True, False])
def test_presets_produce_network_size(name, train):
    rng = np.random.default_rng(0)
    c = 3 if name in ("vmunet_isic", "default") else 1
    img = (rng.random((40, 30, c)) * 255).astype(np.float32)
    mask = rng.integers(0, 2, (40, 30))
    t = preset_transforms(name, 32, train=train, seed=0)
    oi, om = t(img, mask)
    assert oi.shape == (32, 32, c) and om.shape == (32, 32) and set(np.unique(om)) <= {0, 1}
    if name == "vmunet_isic":
        assert oi.min() >= 0 and oi.max() <= 255.0001
    with pytest.raises(ValueError, match="did you mean 'synapse'"):
        preset_transforms("synaps")


def test_seed_transforms_reproducible():
    img, mask = _marker(16, 16, 4, 5)
    t1 = seed_transforms(preset_transforms("default", 16, train=True), 7)
    t2 = seed_transforms(preset_transforms("default", 16, train=True), 7)
    for _ in range(3):
        a, b = t1(img, mask), t2(img, mask)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_any_callable_is_a_transform(tmp_path):
    from mambaseg.data import build_dataset

    ds = build_dataset("synthetic-skin", split="val", num_samples=2, size=32,
                       transform=lambda i, m: (i[:16, :16] / 255.0, m[:16, :16]))
    s = ds[0]
    assert s["image"].shape == (3, 16, 16) and float(s["image"].max()) <= 1.0
    bad = build_dataset("synthetic-skin", split="val", num_samples=2, size=32, transform=lambda i, m: (i, m[:8]))
    with pytest.raises(ValueError, match="after transform"):
        bad[0]


def test_worker_init_fn_gives_workers_different_augmentations():
    from mambaseg.data import build_dataset
    from mambaseg.data.transforms import worker_init_fn

    t = Compose([RandomRotation(180, p=1.0, seed=0)])
    ds = build_dataset("synthetic-skin", split="val", num_samples=1, size=32, transform=t)

    class Rep(torch.utils.data.Dataset):  # the same sample twice: one per worker
        transform = None
        datasets = [ds]

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return ds[0]["image"]

    out = list(torch.utils.data.DataLoader(Rep(), batch_size=1, num_workers=2, worker_init_fn=worker_init_fn))
    assert not torch.equal(out[0], out[1])
