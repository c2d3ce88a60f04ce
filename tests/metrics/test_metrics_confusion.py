"""Confusion counts and confusion-based scores against direct formulas."""
import numpy as np
import pytest
import torch

from mambaseg.metrics import FN, FP, TN, TP, confusion, scores_from_confusion


def test_confusion_counts_equal_direct_masks_multiclass_any_shape():
    rng = np.random.default_rng(0)
    p = rng.integers(0, 4, size=(3, 5, 7))
    t = rng.integers(0, 4, size=(3, 5, 7))
    cm = confusion(p, t, 4)
    assert isinstance(cm, np.ndarray) and cm.dtype == np.int64 and cm.shape == (4, 4)
    for c in range(4):
        assert cm[c, TP] == np.sum((p == c) & (t == c))
        assert cm[c, FP] == np.sum((p == c) & (t != c))
        assert cm[c, FN] == np.sum((p != c) & (t == c))
        assert cm[c, TN] == np.sum((p != c) & (t != c))


def test_confusion_torch_in_torch_out_and_bool_binary():
    p = torch.tensor([[True, False], [True, True]])
    t = torch.tensor([[1, 0], [0, 1]])
    cm = confusion(p, t, 2)
    assert isinstance(cm, torch.Tensor) and cm.dtype == torch.int64
    assert cm[1].tolist() == [2, 1, 0, 1]  # TP, FP, FN, TN of the foreground
    assert cm[0].tolist() == [1, 0, 1, 2]


def test_confusion_ignore_index_drops_pixels():
    p = np.array([0, 1, 1, 2])
    t = np.array([0, 1, 255, 2])
    cm = confusion(p, t, 3, ignore_index=255)
    assert cm[:, TP].tolist() == [1, 1, 1]
    assert cm.sum(1).tolist() == [3, 3, 3]


def test_scores_match_formulas_and_vmunet_zero_division():
    counts = np.array([[3, 1, 2, 10], [0, 0, 0, 16]])
    s = scores_from_confusion(counts, zero_division=0.0)
    assert s["dice"][0] == pytest.approx(6 / 9)
    assert s["iou"][0] == pytest.approx(3 / 6)
    assert s["accuracy"][0] == pytest.approx(13 / 16)
    assert s["precision"][0] == pytest.approx(3 / 4)
    assert s["sensitivity"][0] == pytest.approx(3 / 5)
    assert s["specificity"][0] == pytest.approx(10 / 11)
    assert s["dice"][1] == 0.0 and s["precision"][1] == 0.0
    assert np.isnan(scores_from_confusion(counts)["dice"][1])  # default: nan


def test_confusion_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        confusion(np.zeros((2, 3)), np.zeros((3, 2)), 2)
    with pytest.raises(ValueError, match="num_classes=2"):
        confusion(np.array([0, 255]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="integer class labels"):
        confusion(np.array([0.2, 0.9]), np.array([0, 1]), 2)
