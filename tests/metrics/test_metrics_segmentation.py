"""SegmentationMetrics: aggregations, empty policies, streaming/DDP state, per-case rows and the summary files."""
import csv
import json
import math

import numpy as np
import pytest
import torch

from mambaseg.metrics import (
    EMPTY_POLICIES,
    SegmentationMetrics,
    logits_to_labels,
    surface_distance_metrics,
    write_summary,
)


def _dice(p, t):
    p, t = np.asarray(p, bool), np.asarray(t, bool)
    return 2 * (p & t).sum() / (p.sum() + t.sum())


# ------------------------------------------------------------------ pooled vs per-image
def _crafted_pair():
    """Image 1: TP=2, FP=2, FN=2 (Dice 1/2). Image 2: perfect, 20 foreground pixels (Dice 1)."""
    t = np.zeros((2, 10, 10), np.int64)
    p = np.zeros((2, 10, 10), np.int64)
    t[0, 0, 0:4] = 1
    p[0, 0, 2:6] = 1
    t[1, 5:7, 0:10] = 1
    p[1] = t[1]
    return p, t


def test_pooled_and_per_image_dice_differ_by_computed_amount():
    p, t = _crafted_pair()
    pooled = SegmentationMetrics(2, aggregation="pooled", distances=False)
    per_image = SegmentationMetrics(2, aggregation="per_image", distances=False)
    pooled.update(p, t)
    per_image.update(p, t)
    dp, di = pooled.compute()["dice"], per_image.compute()["dice"]
    assert dp == pytest.approx(2 * 22 / (2 * 22 + 2 + 2))  # one confusion matrix: TP=22, FP=2, FN=2
    assert di == pytest.approx((0.5 + 1.0) / 2)
    assert dp - di == pytest.approx(44 / 48 - 0.75)
    # VM-UNet's "mIoU" is the foreground IoU of the pooled matrix; accuracy/specificity pooled too
    r = pooled.compute()
    assert r["iou"] == pytest.approx(22 / 26)
    assert r["accuracy"] == pytest.approx(196 / 200)
    assert r["specificity"] == pytest.approx(174 / 176)
    assert r["sensitivity"] == pytest.approx(22 / 24)


def test_streaming_in_batches_equals_one_update():
    rng = np.random.default_rng(1)
    p = rng.integers(0, 3, (5, 12, 12))
    t = rng.integers(0, 3, (5, 12, 12))
    one = SegmentationMetrics(3, aggregation="per_image")
    one.update(p, t, case_ids=[f"c{i}" for i in range(5)])
    many = SegmentationMetrics(3, aggregation="per_image")
    many.update(p[:2], t[:2], case_ids=["c0", "c1"])
    many.update(p[2:], t[2:], case_ids=["c2", "c3", "c4"])
    a, b = one.compute(), many.compute()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], nan_ok=True)
    many.reset()
    many.update(p[:1], t[:1])
    assert many.compute()["count/cases"] == 1


def test_per_image_multiclass_equals_direct_mean_over_images_then_classes():
    rng = np.random.default_rng(2)
    p = rng.integers(0, 3, (3, 10, 10))
    t = rng.integers(0, 3, (3, 10, 10))
    m = SegmentationMetrics(3, aggregation="per_image", hd95_mode="monai", spacing=(0.5, 2.0))
    m.update(torch.from_numpy(p), torch.from_numpy(t))
    r = m.compute()
    for c in (1, 2):
        d = np.mean([_dice(p[i] == c, t[i] == c) for i in range(3)])
        assert r[f"dice/class_{c}"] == pytest.approx(d)
        h = np.mean([surface_distance_metrics(p[i] == c, t[i] == c, (0.5, 2.0))["hd95_monai"] for i in range(3)])
        assert r[f"hd95/class_{c}"] == pytest.approx(h)
    assert r["dice"] == pytest.approx((r["dice/class_1"] + r["dice/class_2"]) / 2)
    assert "dice/class_0" not in r
    with_bg = SegmentationMetrics(3, aggregation="per_image", include_background=True, distances=False)
    with_bg.update(p, t)
    assert with_bg.compute()["dice/class_0"] == pytest.approx(np.mean([_dice(p[i] == 0, t[i] == 0) for i in range(3)]))


def test_per_volume_synapse_protocol_mean_over_cases_then_classes():
    rng = np.random.default_rng(4)
    vols = []
    for _ in range(2):
        t = rng.integers(0, 3, (4, 8, 8))
        p = t.copy()
        flip = rng.random(t.shape) < 0.3
        p[flip] = rng.integers(0, 3, flip.sum())
        vols.append((p, t))
    # case 3: class 2 absent from GT but predicted -> VM-UNet/TransUNet rule gives (dice 1, hd95 0)
    t3 = np.zeros((4, 8, 8), np.int64)
    t3[1:3, 2:6, 2:6] = 1
    p3 = t3.copy()
    p3[0, 0, 0] = 2
    vols.append((p3, t3))
    m = SegmentationMetrics(3, aggregation="per_volume", empty_policy="vmunet")
    for i, (p, t) in enumerate(vols):
        m.update(p, t, case_ids=f"case{i:04d}")
    r = m.compute()
    per_class = {}
    for c in (1, 2):
        d, h = [], []
        for p, t in vols:
            if (p == c).any() and (t == c).any():
                d.append(_dice(p == c, t == c))
                h.append(surface_distance_metrics(p == c, t == c)["hd95_medpy"])
            elif (p == c).any():
                d.append(1.0)
                h.append(0.0)
            else:
                d.append(0.0)
                h.append(0.0)
        per_class[c] = (np.mean(d), np.mean(h))
        assert r[f"dice/class_{c}"] == pytest.approx(per_class[c][0])
        assert r[f"hd95/class_{c}"] == pytest.approx(per_class[c][1])
    assert r["dice"] == pytest.approx((per_class[1][0] + per_class[2][0]) / 2)
    assert r["count/ref_empty"] == 1 and r["count/cases"] == 3
    rows = m.per_case()
    assert [row["case_id"] for row in rows] == ["case0000", "case0001", "case0002"]
    assert rows[2]["dice/class_2"] == 1.0 and rows[2]["empty/class_2"] == "ref_empty"


# ------------------------------------------------------------------ empty policies
def _four_cases():
    """Images (pred, target): normal, both empty, pred empty, ref empty."""
    t = np.zeros((4, 8, 8), np.int64)
    p = np.zeros((4, 8, 8), np.int64)
    t[0, 2:5, 2:5] = 1
    p[0, 2:5, 3:6] = 1
    t[2, 1:4, 1:4] = 1
    p[3, 4:7, 4:7] = 1
    return p, t


@pytest.mark.parametrize("policy,expect", [
    # (dice, hd95) of: both_empty, pred_empty, ref_empty -- from the upstream rules quoted in the policy table
    ("vmunet", [(0, 0), (0, 0), (1, 0)]),
    ("mamba_unet", [(0, 0), (0, 0), (0, math.nan)]),
    ("monai", [(math.nan, math.nan), (0, math.nan), (math.nan, math.nan)]),
])
def test_empty_policy_presets_per_case_values_and_counts(policy, expect):
    p, t = _four_cases()
    m = SegmentationMetrics(2, aggregation="per_image", empty_policy=policy)
    m.update(p, t, case_ids=["normal", "both", "pred", "ref"])
    rows = m.per_case()
    normal_dice = _dice(p[0], t[0])
    normal_hd95 = surface_distance_metrics(p[0], t[0])["hd95_medpy"]
    assert rows[0]["dice"] == pytest.approx(normal_dice)
    for row, (d, h) in zip(rows[1:], expect):
        assert row["dice"] == pytest.approx(d, nan_ok=True)
        assert row["hd95"] == pytest.approx(h, nan_ok=True)
    assert [r["empty/class_1"] for r in rows] == ["none", "both_empty", "pred_empty", "ref_empty"]
    r = m.compute()
    assert (r["count/both_empty"], r["count/pred_empty"], r["count/ref_empty"]) == (1, 1, 1)
    dices = [normal_dice] + [d for d, _ in expect]
    hds = [normal_hd95] + [h for _, h in expect]
    assert r["dice"] == pytest.approx(np.nanmean(dices))
    assert r["hd95"] == pytest.approx(np.nanmean(hds))
    assert r["count/excluded/hd95"] == int(np.isnan(hds).sum())


def test_unknown_policy_and_aggregation_are_rejected():
    with pytest.raises(ValueError, match="empty_policy"):
        SegmentationMetrics(2, empty_policy="nnunet_v1")
    with pytest.raises(ValueError, match="aggregation"):
        SegmentationMetrics(2, aggregation="micro")
    with pytest.raises(ValueError, match="hd95_mode"):
        SegmentationMetrics(2, hd95_mode="p95")
    assert set(EMPTY_POLICIES) == {"vmunet", "mamba_unet", "monai", "nnunet", "segmamba", "umamba"}


# ------------------------------------------------------------------ DDP
def test_ddp_sync_gathers_cases_from_all_ranks():
    rng = np.random.default_rng(5)
    p = rng.integers(0, 2, (4, 9, 9))
    t = rng.integers(0, 2, (4, 9, 9))
    ids = ["a", "b", "c", "d"]
    full = SegmentationMetrics(2, aggregation="per_image")
    full.update(p, t, case_ids=ids)
    rank1 = SegmentationMetrics(2, aggregation="per_image")
    rank1.update(p[3:], t[3:], case_ids=ids[3:])
    other = torch.cat(rank1.cases)

    def fake_all_gather(x, group=None):  # what torchmetrics' gather_all_tensors returns on rank 0 of 2
        return [x, other]

    rank0 = SegmentationMetrics(2, aggregation="per_image", dist_sync_fn=fake_all_gather,
                                distributed_available_fn=lambda: True)
    rank0.update(p[:1], t[:1], case_ids=ids[:1])
    rank0.update(p[1:3], t[1:3], case_ids=ids[1:3])
    got, want = rank0.compute(), full.compute()
    for k in want:
        assert got[k] == pytest.approx(want[k], nan_ok=True)
    assert [r["case_id"] for r in rank0.per_case()] == ids
    assert rank0.compute()["count/cases"] == 4  # local state restored after each sync, cached result
    rank0.update(p[:1], t[:1], case_ids=["e"])
    assert rank0.compute()["count/cases"] == 5  # 3 + 1 local, 1 from the other rank
    assert [r["case_id"] for r in full.per_case()] == ids


# ------------------------------------------------------------------ outputs
def test_write_summary_csv_and_json(tmp_path):
    p, t = _four_cases()
    m = SegmentationMetrics(2, aggregation="per_image", empty_policy="monai", spacing=(0.5, 0.5))
    m.update(p, t, case_ids=["n", "b", "p", "r"])
    csv_path, json_path = write_summary(m.per_case(), m.compute(), tmp_path / "eval", m.settings())
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == ["n", "b", "p", "r"]
    assert rows[0]["spacing"] == "0.5x0.5"
    assert float(rows[0]["dice"]) == pytest.approx(_dice(p[0], t[0]))
    data = json.loads(json_path.read_text())  # strict JSON: nan became null
    assert data["settings"]["aggregation"] == "per_image"
    assert data["settings"]["hd95_mode"] == "medpy"
    assert data["settings"]["empty_policy"]["name"] == "monai"
    assert data["settings"]["spacing"] == [0.5, 0.5]
    assert data["counts"]["count/both_empty"] == 1
    assert data["metrics"]["dice"] == pytest.approx(np.nanmean([_dice(p[0], t[0]), 0.0]))
    with pytest.raises(FileExistsError):
        write_summary([], {}, tmp_path / "eval", m.settings(), overwrite=False)
    with pytest.raises(ValueError, match="settings must name"):
        write_summary([], {}, tmp_path / "x", {"aggregation": "pooled"})


def test_distances_off_omits_distance_metrics():
    p, t = _crafted_pair()
    m = SegmentationMetrics(2, distances=False)
    m.update(p, t)
    r = m.compute()
    assert "hd95" not in r and "asd" not in r and "dice" in r


def test_logits_to_labels_binary_threshold_and_argmax():
    logits = torch.tensor([[[[-1.0, 0.0, 2.0]]]])  # (1, 1, 1, 3): sigmoid >= 0.5 <=> logit >= 0
    assert logits_to_labels(logits).tolist() == [[[0, 1, 1]]]
    multi = torch.tensor([[[[0.0, 3.0]], [[1.0, 0.0]], [[2.0, 1.0]]]])  # (1, 3, 1, 2)
    assert logits_to_labels(multi).tolist() == [[[2, 0]]]


def test_update_bad_inputs_give_clear_errors():
    m = SegmentationMetrics(3, aggregation="per_image")
    with pytest.raises(ValueError, match="same shape"):
        m.update(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))
    with pytest.raises(ValueError, match="integer class labels"):
        m.update(np.full((1, 4, 4), 0.5), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="num_classes=3"):
        m.update(np.full((1, 4, 4), 3), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        m.update(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match="one value per spatial axis"):
        m.update(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), spacing=(1.0, 1.0, 2.0))
    with pytest.raises(ValueError, match="case ids"):
        m.update(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), case_ids=["only_one"])
    v = SegmentationMetrics(2, aggregation="per_volume")
    with pytest.raises(ValueError, match="one value per spatial axis"):
        SegmentationMetrics(2, aggregation="per_volume", spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        v.update(np.zeros((4, 4)), np.zeros((4, 4)))


_DDP_SCRIPT = r'''
import os, sys, json
import numpy as np
import torch
import torch.distributed as dist
from mambaseg.metrics import SegmentationMetrics

def data():
    rng = np.random.default_rng(7)
    return rng.integers(0, 3, (5, 10, 10)), rng.integers(0, 3, (5, 10, 10))

def worker(rank, world, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
    p, t = data()
    m = SegmentationMetrics(3, aggregation="per_image")
    idx = [0, 1, 2] if rank == 0 else [3, 4]  # uneven shards
    m.update(p[idx], t[idx], case_ids=[f"img{i}" for i in idx])
    res = m.compute()
    rows = m.per_case()
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump({"res": res, "ids": sorted(r["case_id"] for r in rows)}, f)
    dist.destroy_process_group()

if __name__ == "__main__":
    worker(int(sys.argv[1]), 2, sys.argv[2], sys.argv[3])
'''


@pytest.mark.slow
def test_real_gloo_ddp_two_processes_equal_single_process(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "ddp_metrics.py"
    script.write_text(_DDP_SCRIPT)
    out = tmp_path / "out.json"
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), str(tmp_path / "init"), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
    got = json.loads(out.read_text())
    rng = np.random.default_rng(7)
    p, t = rng.integers(0, 3, (5, 10, 10)), rng.integers(0, 3, (5, 10, 10))
    single = SegmentationMetrics(3, aggregation="per_image")
    single.update(p, t)
    want = single.compute()
    for k in want:
        assert got["res"][k] == pytest.approx(want[k], nan_ok=True)
    assert got["ids"] == [f"img{i}" for i in range(5)]


def test_vmunet_and_mamba_unet_policies_match_upstream_rules_with_medpy():
    binary = pytest.importorskip("medpy.metric.binary")

    def transunet_case(pred, gt):  # rule of VM-UNet/TransUNet calculate_metric_percase (spec 1.3)
        if pred.sum() > 0 and gt.sum() > 0:
            return binary.dc(pred, gt), binary.hd95(pred, gt)
        if pred.sum() > 0 and gt.sum() == 0:
            return 1, 0
        return 0, 0

    def ssl4mis_case(pred, gt):  # rule of Mamba-UNet val_2D.calculate_metric_percase (spec 3.3)
        if pred.sum() > 0:
            return binary.dc(pred, gt), binary.hd95(pred, gt)
        return 0, 0

    rng = np.random.default_rng(9)
    vols = []
    for i in range(3):
        t = rng.integers(0, 3, (3, 9, 9))
        p = np.where(rng.random(t.shape) < 0.25, rng.integers(0, 3, t.shape), t)
        vols.append((p, t))
    t = np.ones((3, 9, 9), np.int64)
    vols.append((np.where(rng.random(t.shape) < 0.1, 2, 1), t))  # class 2: GT empty, predicted
    vols.append((np.ones_like(t), np.full_like(t, 2)))  # class 2: predicted empty
    for policy, rule in (("vmunet", transunet_case), ("mamba_unet", ssl4mis_case)):
        m = SegmentationMetrics(3, aggregation="per_volume", empty_policy=policy)
        for p, t in vols:
            m.update(p, t)
        rows = m.per_case()
        for row, (p, t) in zip(rows, vols):
            for c in (1, 2):
                pc, tc = (p == c).astype(np.uint8), (t == c).astype(np.uint8)
                if policy == "mamba_unet" and pc.sum() > 0 and tc.sum() == 0:
                    assert row[f"dice/class_{c}"] == binary.dc(pc, tc)  # medpy hd95 raises here; we give nan
                    assert math.isnan(row[f"hd95/class_{c}"])
                    continue
                d, h = rule(pc, tc)
                assert row[f"dice/class_{c}"] == pytest.approx(d)
                assert row[f"hd95/class_{c}"] == pytest.approx(h)



def test_class_names_name_the_per_class_keys():
    from mambaseg.metrics import SegmentationMetrics
    p = torch.tensor([[[0, 1], [2, 3]]])
    names = ["background", "RV", "Myo", "LV"]
    m = SegmentationMetrics(4, aggregation="per_image", distances=False, class_names=names)
    m.update(p, p)
    r = m.compute()
    assert r["dice/RV"] == r["dice/Myo"] == r["dice/LV"] == 1.0 and not any("class_" in k for k in r)
    row = m.per_case()[0]
    assert "dice/LV" in row and "empty/Myo" in row and m.settings()["class_names"] == names
    with pytest.raises(ValueError, match="class_names has 3"):
        SegmentationMetrics(4, class_names=names[:3])
