"""Unit tests of the engine pieces that need no training run: recipes, label conversion, slice-wise inference,
sampler determinism, collation, checkpoint compatibility, run-directory rules, report formatting."""

import math
import os

import numpy as np
import pytest
import torch

from mambaseg.engine.datamodule import EpochSeededSampler, collate_cases
from mambaseg.engine.errors import CheckpointMismatchError, MambasegUserError, RunDirExistsError
from mambaseg.engine.inference import logits_to_labels, predict_volume
from mambaseg.engine.module import SegmentationModule, check_checkpoint_compatible
from mambaseg.engine.runs import check_run_dir, next_free_dir


def _module(**kw):
    base = dict(model="unet", model_kwargs={"base_channels": 4}, num_classes=2, in_channels=3, image_size=32)
    base.update(kw)
    return SegmentationModule(**base)


def _lrs_per_epoch(module, epochs):
    cfg = module.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return cfg, out


def test_adamw_cosine_recipe_matches_closed_form():
    m = _module(optimizer="adamw", lr=1e-3, weight_decay=1e-2, scheduler="cosine", t_max=50, eta_min=1e-5)
    cfg, lrs = _lrs_per_epoch(m, 120)
    opt = cfg["optimizer"]
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["weight_decay"] == 1e-2 and opt.defaults["betas"] == (0.9, 0.999)
    assert cfg["lr_scheduler"]["interval"] == "epoch"
    for e, lr in enumerate(lrs):  # CosineAnnealingLR oscillates with period 2*T_max (upstream: 300 epochs)
        want = 1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * e / 50)) / 2
        assert lr == pytest.approx(want, rel=1e-6, abs=1e-12)


def test_sgd_poly_recipe_per_iteration():
    m = _module(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, scheduler="poly", max_iters=100,
                poly_power=0.9, num_classes=4, loss="mamba_unet")
    cfg, lrs = _lrs_per_epoch(m, 100)
    opt = cfg["optimizer"]
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 1e-4
    assert cfg["lr_scheduler"]["interval"] == "step"
    for it, lr in enumerate(lrs):
        assert lr == pytest.approx(0.01 * (1 - it / 100) ** 0.9, rel=1e-9, abs=1e-15)


def test_binary_uses_one_sigmoid_channel_and_multiclass_softmax():
    assert _module().net(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    m = _module(num_classes=4)
    assert m.net(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 32, 32)
    assert type(m.loss_fn).__name__ == "CeDiceLoss"
    assert type(_module().loss_fn).__name__ == "BceDiceLoss"


def test_logits_to_labels_threshold_is_inclusive_and_argmax():
    p = torch.tensor([0.2, 0.5, 0.7])
    logits = torch.log(p / (1 - p)).view(1, 1, 1, 3)
    assert logits_to_labels(logits, 0.5).tolist() == [[[0, 1, 1]]]
    assert logits_to_labels(logits, 0.6).tolist() == [[[0, 0, 1]]]
    mc = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 5.0]]).T.reshape(1, 3, 1, 2)
    assert logits_to_labels(mc).tolist() == [[[1, 2]]]


class _Shift(torch.nn.Module):
    """logit = channel 0 - 0.5, so label = (x >= 0.5): an oracle we can compute by hand."""

    def forward(self, x):
        return x[:, :1] - 0.5


def test_predict_volume_slicewise_matches_direct_threshold_and_resizes_back():
    torch.manual_seed(0)
    vol = torch.rand(5, 1, 16, 16)
    out = predict_volume(_Shift(), vol, output_size=(16, 16), chunk=2)
    assert out.shape == (5, 16, 16)
    assert torch.equal(out, (vol[:, 0] >= 0.5).long())
    # a constant volume survives any resize: labels are all 1 at the requested size
    big = predict_volume(_Shift(), torch.full((3, 1, 8, 8), 0.9), output_size=(20, 12), chunk=16)
    assert big.shape == (3, 20, 12) and bool(big.all())


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochSeededSampler(10, seed=3), EpochSeededSampler(10, seed=3)
    a.set_epoch(4)
    b.set_epoch(1)
    first = list(b)
    b.set_epoch(4)
    assert list(a) == list(b) and sorted(list(a)) == list(range(10))
    assert first != list(a)
    calls = []
    EpochSeededSampler(4, 0, on_epoch=calls.append).set_epoch(2)
    assert calls == [0, 2]


def test_collate_keeps_meta_as_lists_and_rejects_ragged():
    items = [{"image": torch.zeros(3, 4, 4), "mask": torch.zeros(4, 4, dtype=torch.long),
              "meta": {"case_id": f"c{i}", "original_size": (4, 4)}} for i in range(2)]
    b = collate_cases(items)
    assert b["image"].shape == (2, 3, 4, 4) and b["meta"]["case_id"] == ["c0", "c1"]
    items[1]["image"] = torch.zeros(3, 5, 5)
    with pytest.raises(MambasegUserError, match="different shapes"):
        collate_cases(items)


def test_checkpoint_compatibility_names_the_difference():
    hp = {"model": "unet", "num_classes": 2, "in_channels": 3, "model_kwargs": {"base_channels": 4}}
    check_checkpoint_compatible({"hyper_parameters": dict(hp)}, hp)
    with pytest.raises(CheckpointMismatchError, match="num_classes: checkpoint 4 vs config 2"):
        check_checkpoint_compatible({"hyper_parameters": {**hp, "num_classes": 4}}, hp)
    with pytest.raises(CheckpointMismatchError, match="model: checkpoint 'vmunet'"):
        check_checkpoint_compatible({"hyper_parameters": {**hp, "model": "vmunet"}}, hp)
    with pytest.raises(CheckpointMismatchError, match="base_channels"):
        check_checkpoint_compatible({"hyper_parameters": {**hp, "model_kwargs": {"base_channels": 8}}}, hp)
    with pytest.raises(CheckpointMismatchError, match="not written by mambaseg"):
        check_checkpoint_compatible({"state_dict": {}}, hp)


def test_bad_module_options_are_named():
    with pytest.raises(MambasegUserError, match="did you mean 'adamw'"):
        _module(optimizer="adamww")
    with pytest.raises(MambasegUserError, match="select_on"):
        _module(select_on="test_dice")
    with pytest.raises(ValueError, match="vmunet"):
        _module(model="vmunett")


def test_run_dir_rules(tmp_path):
    run = tmp_path / "run"
    assert check_run_dir(str(run), resume=False) is None  # missing: fine
    run.mkdir()
    assert check_run_dir(str(run), resume=False) is None  # empty: fine
    (run / "metrics.csv").write_text("x")
    with pytest.raises(RunDirExistsError, match="no mambaseg run"):  # no config.yaml: not ours
        check_run_dir(str(run), resume=False)
    (run / "config.yaml").write_text("x")
    assert check_run_dir(str(run), resume=False) is None  # no checkpoint (a fit that failed early): reused
    with pytest.raises(FileNotFoundError, match="without --resume"):
        check_run_dir(str(run), resume=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_text("x")
    with pytest.raises(RunDirExistsError, match="--resume"):
        check_run_dir(str(run), resume=False)
    with pytest.raises(MambasegUserError, match="no checkpoint .* reads"):  # a text file is no checkpoint
        check_run_dir(str(run), resume=True)
    assert next_free_dir(str(run)) == str(run) + "-2"
    assert (run / "metrics.csv").read_text() == "x"  # untouched


def test_metrics_table_names_all_eight_metrics_and_semantics(tmp_path):
    from mambaseg.engine.report import RunRecord, format_metrics_table, write_report
    summary = {"dice": 0.9, "iou": 0.8, "accuracy": 0.95, "precision": 0.91, "sensitivity": 0.89,
               "specificity": 0.97, "hd95": 3.5, "asd": 1.25}
    rows = [{"case_id": f"c{i}", "dice": d} for i, d in enumerate([0.5, 0.9, 0.95])]
    rec = RunRecord("m", summary=summary, rows=rows,
                    settings={"aggregation": "pooled", "hd95_mode": "medpy"},
                    qualitative=[{"case_id": "c0", "image": np.zeros((8, 8, 3), np.float32),
                                  "target": np.eye(8, dtype=np.uint8), "pred": np.eye(8, dtype=np.uint8)}])
    table = format_metrics_table([rec])
    for label in ("DSC", "IoU", "Acc", "Pre", "Sen", "Spe", "HD95", "ASD"):
        assert label in table
    assert "90.00" in table and "3.50" in table and "1.25" in table
    assert "aggregation=pooled" in table and "hd95_mode=medpy" in table
    path = write_report(str(tmp_path), [rec])
    text = open(path).read()
    assert "| m | 90.00 | 80.00 |" in text
    assert os.path.isfile(tmp_path / "plots" / "dice_histogram.png")
    assert os.path.isfile(tmp_path / "plots" / "qualitative.png")
