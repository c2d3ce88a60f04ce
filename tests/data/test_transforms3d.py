"""nnU-Net augmentation (N-D torch): exact flips and rotations, image/label alignment, determinism, sampling rules,
and the intensity operations against MONAI / scipy as oracles."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from mambaseg.data.transforms3d import (NnUNetAugmentation, bg_contrast, contrast_transform, crop_pad,
                                        extract_patch, gamma_transform, gaussian_blur, is_dummy_2d, rotation_matrix)

OFF = dict(p_rotation=0, p_scaling=0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_lowres=0,
           p_gamma_inverted=0, p_gamma=0, p_mirror=0)
ALL_ON = dict(p_rotation=1, p_scaling=1, p_noise=1, p_blur=1, p_brightness=1, p_contrast=1, p_lowres=1,
              p_gamma_inverted=1, p_gamma=1, p_mirror=0.5)


def _two_balls(shape):
    """Signed distance-like field (1-Lipschitz): positive inside two off-centre balls."""
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    d1 = 6.0 - np.sqrt(sum((g - 0.35 * s) ** 2 for g, s in zip(grids, shape)))
    d2 = 4.0 - np.sqrt(sum((g - 0.7 * s) ** 2 for g, s in zip(grids, shape)))
    return np.maximum(d1, d2).astype(np.float32)


def test_crop_pad_matches_numpy_pad():
    a = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(2, 5, 6)
    out = crop_pad(a, [-2, 3], [4, 9], value=-7)
    ref = np.pad(a.numpy(), [(0, 0), (2, 0), (0, 3)], constant_values=-7)[:, 0:6, 3:9]
    assert np.array_equal(out.numpy(), ref)
    assert (crop_pad(a, [10, 10], [12, 12], value=3) == 3).all()  # entirely outside
    inside = crop_pad(a, [0, 0], [5, 6])  # the whole array: still a copy, never the caller's tensor
    inside += 1
    assert torch.equal(inside - 1, a) and inside.is_contiguous()


@pytest.mark.parametrize("dims", [2, 3])
def test_mirroring_is_an_exact_flip_of_every_axis(dims):
    shape = (6, 7, 8)[:dims]
    img = torch.randn((2,) + shape)
    mask = torch.randint(-1, 4, shape)
    aug = NnUNetAugmentation(dims, **{**OFF, "p_mirror": 1.0})
    out = aug({"image": img, "mask": mask}, np.random.default_rng(0))
    axes = list(range(dims))
    assert torch.equal(out["image"], img.flip([a + 1 for a in axes]))
    assert torch.equal(out["mask"], mask.flip(axes))  # -1 passes through


def test_rotation_by_a_quarter_turn_equals_rot90():
    img = torch.randn(2, 9, 9, 9)
    mask = torch.randint(0, 4, (9, 9, 9))
    for axis, plane in [(0, (1, 2)), (1, (0, 2)), (2, (0, 1))]:
        angles = [0.0, 0.0, 0.0]
        angles[axis] = np.pi / 2
        x, y = extract_patch(img, mask, [0, 0, 0], (9, 9, 9), rotation_matrix(angles))
        # the matrix maps output offsets to input offsets: the content turns by -90 degrees in the plane
        assert torch.allclose(x, torch.rot90(img, -1, (plane[0] + 1, plane[1] + 1)), atol=1e-5)
        assert torch.equal(y, torch.rot90(mask, -1, plane))


def test_identity_matrix_equals_plain_crop_and_pads_label_minus_one():
    img = torch.randn(1, 10, 12, 14)
    mask = torch.randint(0, 3, (10, 12, 14))
    a, b = extract_patch(img, mask, [-3, 4, 8], (8, 8, 8))
    c, d = extract_patch(img, mask, [-3, 4, 8], (8, 8, 8), np.eye(3))
    assert torch.allclose(a, c, atol=1e-5) and torch.equal(b, d)
    assert (b[:3] == -1).all() and (a[:, :3] == 0).all() and (b[:, :, 6:] == -1).all()
    assert torch.equal(b[3:, :, :6], mask[0:5, 4:12, 8:14])


@pytest.mark.parametrize("dims", [2, 3])
def test_spatial_transforms_keep_image_and_label_aligned(dims):
    """Label = (image channel > 0) before; after rotation + scaling + flips the label (nearest) still equals the sign
    of the moved image (linear) wherever the image is more than ``dims`` voxel steps of change from the threshold (a
    linear interpolant differs from its nearest corner by at most that)."""
    shape = (20, 22, 18)[:dims]
    f = _two_balls(shape)
    grad = dims * max(float(np.abs(np.diff(f, axis=a)).max()) for a in range(dims))
    img = torch.from_numpy(np.stack([f, -f]))
    mask = torch.from_numpy((f > 0).astype(np.int64))
    aug = NnUNetAugmentation(dims, **{**OFF, "p_rotation": 1, "p_scaling": 1, "p_mirror": 0.5})
    changed = 0
    for seed in range(12):
        out = aug({"image": img, "mask": mask}, np.random.default_rng(seed))
        x, y = out["image"][0].numpy(), out["mask"].numpy()
        inside = y >= 0
        sure = inside & (np.abs(x) > grad)
        assert sure.sum() > 0.1 * y.size and (x[sure] > 0).any()
        assert np.array_equal(y[sure], (x[sure] > 0).astype(np.int64))
        assert np.allclose(out["image"][1].numpy(), -x)  # channels moved together
        changed += not np.array_equal(y, mask.numpy())
    assert changed == 12


def test_spatial_draw_probabilities_and_dummy_2d():
    aug = NnUNetAugmentation(3, (64, 64, 64))
    rng = np.random.default_rng(0)
    none = sum(aug.spatial_matrix(rng) is None for _ in range(2000)) / 2000
    assert abs(none - 0.8 * 0.8) < 0.04  # rotation and scaling drawn independently with p 0.2 each
    assert is_dummy_2d((16, 128, 128)) and not is_dummy_2d((48, 128, 128)) and not is_dummy_2d((128, 128))
    aniso = NnUNetAugmentation(3, (16, 128, 128), p_rotation=1, p_scaling=1)
    for _ in range(20):
        m = aniso.spatial_matrix(rng)
        assert np.allclose(m[0], [1, 0, 0]) and np.allclose(m[:, 0], [1, 0, 0])  # axis 0 untouched
    iso = NnUNetAugmentation(3, (32, 32, 32), p_rotation=0, p_scaling=1)
    m = iso.spatial_matrix(rng)
    assert np.allclose(m, np.eye(3) * m[0, 0]) and 0.7 <= m[0, 0] <= 1.4  # one factor for all axes


def test_bg_contrast_draws_half_below_one():
    rng = np.random.default_rng(0)
    v = np.array([bg_contrast(rng, 0.7, 1.5) for _ in range(4000)])
    assert v.min() >= 0.7 and v.max() <= 1.5
    assert abs((v < 1).mean() - 0.5) < 0.03  # a plain U(0.7, 1.5) would give 0.375


@pytest.mark.parametrize("dims", [2, 3])
def test_deterministic_under_a_seed_including_monai_elastic(dims):
    shape = (12, 14, 10)[:dims]
    img = torch.randn((2,) + shape)
    mask = torch.randint(0, 3, shape)
    aug = NnUNetAugmentation(dims, **ALL_ON, p_elastic=1.0)
    a = aug({"image": img, "mask": mask}, np.random.default_rng(5))
    b = aug({"image": img, "mask": mask}, np.random.default_rng(5))
    c = aug({"image": img, "mask": mask}, np.random.default_rng(6))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], c["image"])
    assert a["image"].shape == img.shape and a["mask"].shape == mask.shape and a["mask"].dtype == torch.int64
    assert set(a["mask"].unique().tolist()) <= {-1, 0, 1, 2}


def test_gamma_matches_monai_adjust_contrast():
    from monai.transforms import AdjustContrast

    x = torch.randn(7, 8, 9) * 3 + 1
    for g, inv in [(0.7, False), (1.4, False), (0.8, True), (1.5, True)]:
        ref = AdjustContrast(gamma=g, invert_image=inv, retain_stats=True)(x)
        ref = ref.as_tensor() if hasattr(ref, "as_tensor") else ref
        assert torch.allclose(gamma_transform(x, g, invert=inv), ref, atol=1e-4)


def test_contrast_matches_monai_scale_intensity_fixed_mean():
    from monai.transforms import ScaleIntensityFixedMean

    x = torch.randn(6, 7, 8)
    for f in (0.75, 1.2):
        ref = ScaleIntensityFixedMean(factor=f - 1, fixed_mean=True, preserve_range=True)(x)
        ref = ref.as_tensor() if hasattr(ref, "as_tensor") else ref
        assert torch.allclose(contrast_transform(x, f), ref, atol=1e-5)


def test_blur_matches_scipy_gaussian_filter():
    x = np.random.default_rng(0).standard_normal((9, 10, 11)).astype(np.float32)
    sig = [0.5, 0.8, 1.0]
    ref = gaussian_filter(x.astype(np.float64), sig, mode="mirror", truncate=4.0)
    assert np.allclose(gaussian_blur(torch.from_numpy(x), sig).numpy(), ref, atol=1e-5)


def test_intensity_steps_leave_the_label_alone():
    img = torch.randn(3, 10, 10, 10)
    mask = torch.randint(-1, 4, (10, 10, 10))
    aug = NnUNetAugmentation(3, **{**ALL_ON, "p_rotation": 0, "p_scaling": 0, "p_mirror": 0})
    out = aug({"image": img, "mask": mask}, np.random.default_rng(1))
    assert torch.equal(out["mask"], mask) and not torch.allclose(out["image"], img)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="spatial_dims"):
        NnUNetAugmentation(4)
    with pytest.raises(ValueError, match="patch_size"):
        NnUNetAugmentation(3, (64, 64))
    with pytest.raises(ValueError, match="mirror_axes"):
        NnUNetAugmentation(2, mirror_axes=(2,))
    with pytest.raises(ValueError, match="spatial axes"):
        NnUNetAugmentation(3)({"image": torch.zeros(1, 4, 4), "mask": torch.zeros(4, 4, dtype=torch.long)})


def test_low_resolution_spares_axis_0_in_dummy_2d():
    """Slices constant in-plane, varying along axis 0: in dummy-2D mode the low-res simulation works in-plane only
    and leaves them as they are; in 3D mode it resamples axis 0 too."""
    x = torch.arange(8, dtype=torch.float32).view(1, 8, 1, 1).expand(2, 8, 32, 32).contiguous()
    mask = torch.zeros(8, 32, 32, dtype=torch.long)
    lowres = {**OFF, "p_lowres": 1.0, "p_lowres_per_channel": 1.0}
    dummy = NnUNetAugmentation(3, (8, 32, 32), **lowres)
    full = NnUNetAugmentation(3, (8, 32, 32), **lowres, dummy_2d=False)
    changed = 0
    for seed in range(5):
        assert torch.allclose(dummy({"image": x, "mask": mask}, np.random.default_rng(seed))["image"], x, atol=1e-5)
        changed += not torch.allclose(full({"image": x, "mask": mask}, np.random.default_rng(seed))["image"], x)
    assert changed >= 3
