"""Surface distances (HD, HD95 medpy/monai, ASD, ASSD) against hand-computed cases and an O(n^2) oracle."""
import math

import numpy as np
import pytest
import torch

from mambaseg.metrics import (
    EmptyMaskError,
    average_surface_distance,
    hausdorff_distance,
    hd95,
    surface_distance_metrics,
    surface_distances,
)


# ------------------------------------------------------------------ independent oracle (no scipy.ndimage)
def oracle_surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with at least one face-neighbour (connectivity 1) outside the mask or the array."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = np.ones_like(mask, dtype=bool)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            sl = [slice(1, -1)] * mask.ndim
            sl[axis] = slice(1 + step, padded.shape[axis] - 1 + step)
            inner &= padded[tuple(sl)]
    return mask & ~inner


def oracle_metrics(a: np.ndarray, b: np.ndarray, spacing):
    pa = np.argwhere(oracle_surface(a)) * np.asarray(spacing, float)
    pb = np.argwhere(oracle_surface(b)) * np.asarray(spacing, float)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))  # O(n^2) pairwise distances
    ab, ba = d.min(1), d.min(0)
    return {
        "hd": max(ab.max(), ba.max()),
        "hd95_medpy": np.percentile(np.concatenate([ab, ba]), 95),
        "hd95_monai": max(np.percentile(ab, 95), np.percentile(ba, 95)),
        "asd": ab.mean(),
        "assd": np.concatenate([ab, ba]).mean(),
    }


# ------------------------------------------------------------------ hand-computed cases
def _squares(spacing):
    a = np.zeros((10, 12), bool)
    b = np.zeros((10, 12), bool)
    a[2:6, 2:6] = True  # 4x4 square
    b[2:6, 5:9] = True  # same square, 3 columns to the right
    return a, b


def test_two_squares_known_offset_exact_values():
    # Per direction the 12 surface pixels lie 3,2,1,0 (top and bottom rows) and 3,0 (side rows) columns apart.
    # spacing (row 2.0, column 1.0): the nearest surface is always in the same row, so distances are in columns.
    a, b = _squares(None)
    m = surface_distance_metrics(a, b, spacing=(2.0, 1.0))
    assert m["hd"] == pytest.approx(3.0)
    assert m["asd"] == pytest.approx(18 / 12)  # (0*4 + 1*2 + 2*2 + 3*4) / 12
    assert m["assd"] == pytest.approx(18 / 12)
    assert m["hd95_medpy"] == pytest.approx(3.0)
    assert m["hd95_monai"] == pytest.approx(3.0)


def test_two_squares_anisotropic_spacing_scales_the_right_axis():
    a, b = _squares(None)
    m = surface_distance_metrics(a, b, spacing=(1.0, 2.0))  # column spacing 2: all distances double
    assert m["hd"] == pytest.approx(6.0)
    assert m["asd"] == pytest.approx(3.0)
    assert m["hd95_medpy"] == pytest.approx(6.0)


def test_lines_distinguish_medpy_and_monai_hd95():
    # A: 10-pixel line in row 1, B: 5-pixel line in row 3 over A's first 5 columns; row spacing 1.5 -> dy = 3.
    a = np.zeros((5, 12), bool)
    b = np.zeros((5, 12), bool)
    a[1, 1:11] = True
    b[3, 1:6] = True
    s = math.sqrt
    ab = sorted([3.0] * 5 + [s(10), s(13), s(18), 5.0, s(34)])  # thin lines are all surface
    ba = [3.0] * 5
    pooled = sorted(ab + ba)
    # numpy's linear percentile by hand: position 0.95*(n-1)
    medpy = pooled[13] + 0.3 * (pooled[14] - pooled[13])  # 0.95*14 = 13.3
    monai = max(ab[8] + 0.55 * (ab[9] - ab[8]), 3.0)  # 0.95*9 = 8.55
    spacing = (1.5, 1.0)
    assert hd95(a, b, spacing=spacing, mode="medpy") == pytest.approx(medpy)
    assert hd95(a, b, spacing=spacing, mode="monai") == pytest.approx(monai)
    assert monai > medpy + 0.1
    assert hausdorff_distance(a, b, spacing=spacing) == pytest.approx(s(34))
    asd = (15 + s(10) + s(13) + s(18) + 5 + s(34)) / 10
    assert average_surface_distance(a, b, spacing=spacing) == pytest.approx(asd)
    assert average_surface_distance(b, a, spacing=spacing) == pytest.approx(3.0)  # directed
    assd = (10 * asd + 5 * 3.0) / 15  # mean of the 15 pooled distances (medpy >= 0.5, MONAI)
    assert average_surface_distance(a, b, spacing=spacing, symmetric=True) == pytest.approx(assd)


# ------------------------------------------------------------------ brute force on random masks
@pytest.mark.parametrize("shape,spacing", [((9, 11), (1.0, 1.0)), ((12, 10), (0.7, 2.3)),
                                           ((5, 7, 6), (3.0, 0.8, 1.1)), ((4, 6, 6), None)])
def test_random_masks_equal_pairwise_oracle(shape, spacing):
    rng = np.random.default_rng(sum(shape))
    for trial in range(6):
        a = rng.random(shape) < rng.uniform(0.1, 0.6)
        b = rng.random(shape) < rng.uniform(0.1, 0.6)
        a[(0,) * len(shape)] = b[(1,) * len(shape)] = True  # non-empty
        ours = surface_distance_metrics(a, b, spacing=spacing)
        ref = oracle_metrics(a, b, spacing if spacing is not None else (1.0,) * len(shape))
        for k in ref:
            assert ours[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-9), (k, trial)


def test_small_blobs_far_apart_in_large_array_bbox_crop_is_exact():
    a = np.zeros((64, 64), bool)
    b = np.zeros((64, 64), bool)
    a[3:7, 40:45] = True
    b[50:60, 2:5] = True
    ours = surface_distance_metrics(a, b, spacing=(0.5, 1.5))
    ref = oracle_metrics(a, b, (0.5, 1.5))
    for k in ref:
        assert ours[k] == pytest.approx(ref[k])


def test_monai_hd95_is_never_below_medpy_hd95():
    rng = np.random.default_rng(0)
    for _ in range(10):
        a = rng.random((16, 16)) < 0.3
        b = rng.random((16, 16)) < 0.3
        a[0, 0] = b[0, 0] = True
        m = surface_distance_metrics(a, b)
        assert m["hd95_monai"] >= m["hd95_medpy"] - 1e-12
        assert m["hd"] >= m["hd95_monai"] - 1e-12


def test_identical_masks_have_zero_distances_and_torch_input_works():
    a = torch.zeros(8, 8, dtype=torch.long)
    a[2:5, 3:7] = 1
    m = surface_distance_metrics(a, a.clone())
    assert all(v == 0.0 for v in m.values())


# ------------------------------------------------------------------ medpy as an optional oracle
def test_matches_medpy_when_installed():
    binary = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(3)
    for shape, sp in [((6, 9, 8), (2.0, 0.5, 1.0)), ((20, 17), (0.6, 1.4)), ((15, 15), None)]:
        a = rng.random(shape) < 0.3
        b = rng.random(shape) < 0.3
        m = surface_distance_metrics(a, b, spacing=sp)
        assert m["hd"] == pytest.approx(binary.hd(a, b, voxelspacing=sp))
        assert m["hd95_medpy"] == pytest.approx(binary.hd95(a, b, voxelspacing=sp))
        assert m["asd"] == pytest.approx(binary.asd(a, b, voxelspacing=sp))
        assert m["assd"] == pytest.approx(binary.assd(a, b, voxelspacing=sp))  # medpy >= 0.5 (pooled mean)


# ------------------------------------------------------------------ bad input
def test_empty_mask_raises_named_error():
    a = np.zeros((5, 5), bool)
    b = np.zeros((5, 5), bool)
    b[1, 1] = True
    with pytest.raises(EmptyMaskError, match="pred is empty"):
        surface_distances(a, b)
    with pytest.raises(EmptyMaskError, match="reference is empty"):
        surface_distances(b, a)
    with pytest.raises(EmptyMaskError, match="both"):
        surface_distances(a, a)


def test_bad_inputs_give_clear_errors():
    a = np.ones((4, 4), bool)
    with pytest.raises(ValueError, match="same shape"):
        surface_distances(a, np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="binary mask"):
        surface_distances(np.full((4, 4), 2), a)
    with pytest.raises(ValueError, match="one value per spatial axis"):
        surface_distances(a, a, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="> 0"):
        surface_distances(a, a, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="hd95 mode"):
        hd95(a, a, mode="nnunet")
