"""Carving a validation split out of the training data: seeded, about the requested fraction, and never
splitting one volume's slices across train and validation."""

import pytest
import torch

from mambaseg.engine.datamodule import _group_ids, carve_indices


def test_without_groups_it_is_a_seeded_random_subset_of_the_requested_size():
    n, frac, seed = 50, 0.2, 42
    train, val = carve_indices(n, frac, seed)
    oracle = sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()[:10])
    assert val == oracle
    assert sorted(train + val) == list(range(n)) and not set(train) & set(val)
    assert carve_indices(n, frac, seed) == (train, val)
    assert carve_indices(n, frac, seed + 1) != (train, val)


def test_slices_of_one_volume_stay_on_one_side():
    groups = [f"case{c}" for c in range(8) for _ in range(5)]   # 8 volumes x 5 slices
    train, val = carve_indices(len(groups), 0.25, 0, groups)
    val_cases = {groups[i] for i in val}
    train_cases = {groups[i] for i in train}
    assert not val_cases & train_cases
    assert len(val) >= 10 and len(val) % 5 == 0 and train


def test_a_single_volume_cannot_be_split_into_train_and_validation():
    with pytest.raises(ValueError, match="one case"):
        carve_indices(6, 0.5, 0, ["vol"] * 6)


def test_group_ids_come_from_slice_case_ids_of_volume_readers():
    from mambaseg.data import build_dataset
    ds = build_dataset("synthetic-cardiac", split="train", num_samples=3, size=32)
    groups = _group_ids(ds)
    assert groups is not None and len(groups) == len(ds)
    vols = {ds[i]["meta"].get("volume_id") for i in range(len(ds))}
    assert set(groups) == {str(v) for v in vols} and len(set(groups)) == 3
