"""Fault: with named classes (RV, MYO, LV) the empty-prediction counts read "EmptyPred 2/1" and "2 of 1
predictions are empty" (the total counted only classes named ``class_<k>``), and the warning was printed twice
(in the table on stdout and again on stderr). Now the total is cases x classes, the words say (case, class), and
the warning is printed once."""

import types

import numpy as np
import torch

from mambaseg.engine.report import RunRecord, empty_warnings, format_metrics_table
from mambaseg.metrics.segmentation import SegmentationMetrics


def _summary():
    # one case, 4 labels (background + RV, MYO, LV); the prediction holds only LV: RV and MYO are missed
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 0:2, 0:2], target[0, 3:5, 3:5], target[0, 6:8, 6:8] = 1, 2, 3
    pred = torch.zeros_like(target)
    pred[0, 6:8, 6:8] = 3
    m = SegmentationMetrics(num_classes=4, aggregation="per_image", class_names=["bg", "RV", "MYO", "LV"],
                            distances=False)
    m.update(pred, target, case_ids=["case0"])
    return m.compute()


def test_empty_prediction_counts_are_case_class_pairs():
    rec = RunRecord(name="net", summary=_summary(), settings={"empty_policy": "vmunet"})
    table = format_metrics_table([rec])
    row = next(ln for ln in table.splitlines() if ln.startswith("net"))
    # oracle: 1 case x 3 foreground classes = 3 pairs, 2 of them with an empty prediction
    assert row.split()[-2:] == ["2/3", "0/3"], table
    warns = empty_warnings([rec])
    assert len(warns) == 1 and "2 of 3 (case, class) predictions are empty" in warns[0]


def test_empty_prediction_warning_is_printed_once(tmp_path, capsys):
    from mambaseg.engine.runs import write_test_outputs
    summary = _summary()
    module = types.SimpleNamespace(
        test_results={"summary": summary, "rows": [{"case_id": "case0", "dice": 0.33}], "qualitative": [],
                      "settings": {"aggregation": "per_image", "empty_policy": "vmunet", "hd95_mode": "medpy",
                                   "spacing": None}},
        hparams={"model": "net"}, parameters=lambda: iter([torch.zeros(3)]))
    write_test_outputs(module, str(tmp_path / "test"), run_dir=str(tmp_path))
    out, err = capsys.readouterr()
    both = out + err
    assert both.count("predictions are empty") == 1, both
    assert np.isfinite(summary["dice"])
