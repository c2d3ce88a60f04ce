"""3-D metrics in physical units: NSD and HD95 against MONAI (oracle) on anisotropic volumes, hand-computed cases,
BraTS regions, the SegMamba / nnU-Net empty-mask policies, and the spread over cases."""
import math

import numpy as np
import pytest
import torch

from mambaseg.metrics import (
    EmptyMaskError,
    SegmentationMetrics,
    get_empty_policy,
    hd95,
    normalized_surface_dice,
    surface_distances,
)

SPACING = (0.7, 1.3, 3.0)  # anisotropic, thick third axis


def _blobs(seed: int, shape=(22, 19, 13), k: int = 3) -> np.ndarray:
    """Random label map with k classes: a few random ellipsoids per class (smooth enough to have real surfaces)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    lab = np.zeros(shape, dtype=np.int64)
    for c in range(1, k):
        for _ in range(2):
            centre = rng.uniform(3, np.asarray(shape) - 3)
            radii = rng.uniform(2, 6, size=3)
            inside = (((grid - centre) / radii) ** 2).sum(-1) <= 1
            lab[inside] = c
    return lab


def _onehot(lab: np.ndarray, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(lab), k).permute(3, 0, 1, 2)[None].float()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nsd_and_hd95_match_monai_with_anisotropic_spacing(seed):
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    k = 3
    pred, ref = _blobs(seed), _blobs(seed + 100)
    tol = [1.5, 4.0]
    monai_nsd = compute_surface_dice(_onehot(pred, k), _onehot(ref, k), class_thresholds=tol,
                                     include_background=False, spacing=list(SPACING))[0]
    monai_hd95 = compute_hausdorff_distance(_onehot(pred, k), _onehot(ref, k), include_background=False,
                                            percentile=95, spacing=list(SPACING))[0]
    for j, c in enumerate(range(1, k)):
        a, b = pred == c, ref == c
        assert a.any() and b.any()
        ours_nsd = normalized_surface_dice(a, b, tol[j], spacing=SPACING)
        ours_hd = hd95(a, b, spacing=SPACING, mode="monai")
        assert np.float32(ours_nsd) == pytest.approx(float(monai_nsd[j]), abs=1e-6)
        assert np.float32(ours_hd) == pytest.approx(float(monai_hd95[j]), rel=1e-6)
    # the accumulator reports the same numbers per class
    m = SegmentationMetrics(k, aggregation="per_volume", hd95_mode="monai", empty_policy="monai",
                            nsd_tolerance=tol, spacing=SPACING)
    m.update(torch.as_tensor(pred), torch.as_tensor(ref), case_ids="c0")
    out = m.compute()
    for j, c in enumerate(range(1, k)):
        assert out[f"nsd/class_{c}"] == pytest.approx(float(monai_nsd[j]), abs=1e-6)
        assert out[f"hd95/class_{c}"] == pytest.approx(float(monai_hd95[j]), rel=1e-6)


def test_nsd_hand_computed_single_voxels_on_thick_axis():
    a = np.zeros((5, 5, 9), bool)
    b = np.zeros_like(a)
    a[2, 2, 2] = True
    b[2, 2, 5] = True  # 3 voxels apart along an axis of 2 mm spacing -> 6 mm
    sp = (1.0, 1.0, 2.0)
    d = surface_distances(a, b, spacing=sp)
    assert d.pred_to_ref.tolist() == [6.0] and d.ref_to_pred.tolist() == [6.0]
    assert hd95(a, b, spacing=sp) == pytest.approx(6.0)
    assert normalized_surface_dice(a, b, 5.9, spacing=sp) == 0.0
    assert normalized_surface_dice(a, b, 6.0, spacing=sp) == 1.0  # "<=" as MONAI


def test_nsd_hand_computed_partial():
    # pred: a 1x1x4 line; ref: one voxel at the line's first end. Surfaces = every voxel (too thin to erode).
    a = np.zeros((3, 3, 6), bool)
    a[1, 1, 0:4] = True
    b = np.zeros_like(a)
    b[1, 1, 0] = True
    sp = (1.0, 1.0, 1.5)
    # pred->ref distances 0, 1.5, 3, 4.5; ref->pred 0. Tolerance 2 mm: 2 pred + 1 ref of 5 surface voxels.
    assert normalized_surface_dice(a, b, 2.0, spacing=sp) == pytest.approx(3 / 5)
    with pytest.raises(EmptyMaskError):
        normalized_surface_dice(a, np.zeros_like(a), 1.0)
    with pytest.raises(ValueError, match="tolerance"):
        normalized_surface_dice(a, b, -1.0)


def test_brats_regions_dice_by_hand_and_std_over_cases():
    # labels remapped: 1 NCR, 2 ED, 3 ET; WT = {1,2,3}, TC = {1,3}, ET = {3}
    ref = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    pred = torch.zeros_like(ref)
    ref[0, 0, 0, :] = torch.tensor([1, 2, 3, 3])  # WT 4, TC 3, ET 2
    pred[0, 0, 0, :] = torch.tensor([2, 2, 3, 0])  # WT 3 (all inside), TC 1, ET 1
    ref[1, 1, 1, :2] = 2  # case 1: only oedema, no core / enhancing
    pred[1, 1, 1, :2] = 2
    m = SegmentationMetrics(4, aggregation="per_volume", regions=[[1, 2, 3], [1, 3], [3]],
                            region_names=["WT", "TC", "ET"], empty_policy="nnunet", distances=False)
    m.update(pred, ref, case_ids=["a", "b"])
    out = m.compute()
    wt0, tc0, et0 = 2 * 3 / (3 + 4), 2 * 1 / (1 + 3), 2 * 1 / (1 + 2)
    assert out["dice/WT"] == pytest.approx((wt0 + 1.0) / 2)
    assert out["std/dice/WT"] == pytest.approx(abs(wt0 - 1.0) / 2)  # nanstd, ddof=0, of two values
    # case b has no TC / ET in either mask: nnU-Net's NaN, excluded from the means
    assert out["dice/TC"] == pytest.approx(tc0) and out["dice/ET"] == pytest.approx(et0)
    assert out["count/both_empty"] == 2 and out["count/excluded/dice"] == 2
    rows = {r["case_id"]: r for r in m.per_case()}
    assert math.isnan(rows["b"]["dice/ET"]) and rows["b"]["empty/ET"] == "both_empty"
    assert rows["a"]["dice"] == pytest.approx((wt0 + tc0 + et0) / 3)
    assert m.settings()["regions"] == [[1, 2, 3], [1, 3], [3]]


def test_segmamba_policy_dice0_hd95_50_when_either_is_empty():
    pol = get_empty_policy("segmamba")
    for case in ("both_empty", "pred_empty", "ref_empty"):
        assert pol.values(case) == (0.0, 50.0)
    ref = torch.zeros(1, 6, 6, 6, dtype=torch.long)
    ref[0, 2:4, 2:4, 2:4] = 1
    pred = torch.zeros_like(ref)  # missed
    m = SegmentationMetrics(3, aggregation="per_volume", empty_policy="segmamba", nsd_tolerance=1.0,
                            spacing=SPACING)
    m.update(pred, ref)
    out = m.compute()
    assert out["dice/class_1"] == 0.0 and out["hd95/class_1"] == 50.0  # pred empty
    assert out["dice/class_2"] == 0.0 and out["hd95/class_2"] == 50.0  # both empty
    assert out["nsd/class_1"] == 0.0
    assert m.settings()["empty_policy"]["name"] == "segmamba"


def test_monai_policy_nsd_follows_compute_surface_dice_for_empty_masks():
    from monai.metrics import compute_surface_dice

    ref = np.zeros((6, 6, 6), np.int64)
    ref[1:3, 1:3, 1:3] = 1
    pred = np.zeros_like(ref)  # class 1 missed, class 2 absent in both
    monai = compute_surface_dice(_onehot(pred, 3), _onehot(ref, 3), class_thresholds=[1.0, 1.0],
                                 include_background=False)[0]
    m = SegmentationMetrics(3, aggregation="per_volume", empty_policy="monai", nsd_tolerance=1.0)
    m.update(torch.as_tensor(pred), torch.as_tensor(ref))
    rows = m.per_case()[0]
    assert rows["nsd/class_1"] == float(monai[0]) == 0.0
    assert math.isnan(rows["nsd/class_2"]) and math.isnan(float(monai[1]))


def test_nsd_tolerance_count_must_match_classes():
    with pytest.raises(ValueError, match="one per reported class"):
        SegmentationMetrics(4, aggregation="per_volume", nsd_tolerance=[1.0, 2.0])
    with pytest.raises(ValueError, match="regions"):
        SegmentationMetrics(4, aggregation="per_volume", regions=[[1, 7]])
