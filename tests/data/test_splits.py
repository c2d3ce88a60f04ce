"""Ratio and k-fold splits, JSON round trip, no silent overwrite."""

import json

import numpy as np
import pytest

from mambaseg.data.splits import acdc_patient_split, kfold_split, kfold_splits, load_split, ratio_split, save_split


def test_ratio_split_partitions_with_exact_sizes():
    ids = [f"c{i:02d}" for i in range(23)]
    sp = ratio_split(ids, (0.7, 0.1, 0.2), seed=1)
    # largest remainder: 16.1, 2.3, 4.6 -> 16, 2, 5
    assert [len(sp[k]) for k in ("train", "val", "test")] == [16, 2, 5]
    assert sorted(sum(sp.values(), [])) == ids
    assert ratio_split(list(reversed(ids)), (0.7, 0.1, 0.2), seed=1) == sp  # input order does not matter
    assert ratio_split(ids, (0.7, 0.1, 0.2), seed=2) != sp
    assert set(ratio_split(ids, {"a": 1, "b": 1})) == {"a", "b"}
    with pytest.raises(ValueError, match="unique"):
        ratio_split(["a", "a"], (1, 1))


def test_kfold_split_is_a_partition():
    ids = [f"case{i}" for i in range(11)]
    folds = kfold_splits(ids, 5, seed=12345)
    vals = [f["val"] for f in folds]
    assert sorted(sum(vals, [])) == sorted(ids)
    assert [len(v) for v in vals] == [3, 2, 2, 2, 2]  # sklearn: the first n % k folds get one more
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and len(f["train"]) + len(f["val"]) == 11
        assert f["val"] == sorted(f["val"]) and f["train"] == sorted(f["train"])
    with pytest.raises(ValueError):
        kfold_split(ids, 5, 5)


def test_kfold_matches_sklearn():
    sk = pytest.importorskip("sklearn.model_selection")
    ids = sorted(f"p{i:03d}" for i in range(17))
    for fold, (tr, te) in enumerate(sk.KFold(5, shuffle=True, random_state=12345).split(ids)):
        mine = kfold_split(ids, 5, fold, 12345)
        assert mine["val"] == [ids[i] for i in te] and mine["train"] == [ids[i] for i in tr]


def test_kfold_matches_numpy_shuffle_by_hand():
    # sklearn's KFold(shuffle=True, random_state=s) = RandomState(s).shuffle(arange(n)), then consecutive chunks
    idx = np.arange(7)
    np.random.RandomState(3).shuffle(idx)
    ids = list("abcdefg")
    assert kfold_split(ids, 3, 0, 3)["val"] == sorted(ids[i] for i in idx[:3])
    assert kfold_split(ids, 3, 2, 3)["val"] == sorted(ids[i] for i in idx[5:])


def test_save_load_roundtrip_and_no_overwrite(tmp_path):
    p = tmp_path / "s" / "split.json"
    sp = {"train": ["a", "b"], "val": ["c"]}
    save_split(p, sp)
    assert load_split(p) == sp
    save_split(p, sp)  # same content: fine
    with pytest.raises(FileExistsError):
        save_split(p, {"train": ["a"], "val": ["b", "c"]})
    assert load_split(p) == sp
    save_split(p, {"train": ["a"]}, overwrite=True)
    assert load_split(p) == {"train": ["a"]}
    folds = tmp_path / "splits_final.json"
    folds.write_text(json.dumps(kfold_splits(list("abcde"), 5)))
    assert load_split(folds, fold=2) == kfold_split(list("abcde"), 5, 2)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_split(tmp_path / "bad.json")


def test_acdc_patient_split_keeps_patients_together():
    cases = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 21) for f in (1, 12)]
    sp = acdc_patient_split(cases, seed=0)
    pats = {k: {c.split("_")[0] for c in v} for k, v in sp.items()}
    assert [len(pats[k]) for k in ("train", "val", "test")] == [14, 2, 4]
    assert not pats["train"] & pats["val"] and not pats["train"] & pats["test"]
