"""``model.eval_regions``: a label-trained (softmax) model on a data set that declares regions (BraTS WT/TC/ET) is
scored on the regions derived from the predicted and the reference label maps, in validation and test; without the
option (or on data without regions) it is scored per class."""
import math
import types

import numpy as np
import pytest
import torch

from test_volumetric_e2e import tiny3d  # noqa: F401  (the tiny registered 3-D net fixture)

REGIONS = {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}


def _dm(label_mode="regions", **kw):
    from mambaseg.engine.datamodule import SegDataModule
    return SegDataModule("synthetic-brats", dataset_kwargs={"size": 16, "spacing": [1.0, 1.0, 2.0], "channels": 2,
                                                            "label_mode": label_mode},
                         split_kwargs={"train": {"num_samples": 2}, "val": {"num_samples": 1},
                                       "test": {"num_samples": 2}},
                         image_size=[16, 16, 8], batch_size=2, iterations_per_epoch=1, val_split="val",
                         augmentation=None, num_workers=0, check="none", region_based=False, **kw)


def _module(model, **kw):
    from mambaseg.engine.module import SegmentationModule
    return SegmentationModule(model=model, num_classes=4, in_channels=2, image_size=[16, 16, 8], scheduler="none",
                              aggregation="per_volume", hd95_mode="monai", sw_batch_size=2, **kw)


def _hand_dice(p, t, members):
    a, b = np.isin(p, members), np.isin(t, members)
    denom = a.sum() + b.sum()
    return 2.0 * (a & b).sum() / denom if denom else float("nan")


def test_label_model_scored_on_regions_derived_from_both_label_maps(tiny3d):  # noqa: F811
    """Oracle: known prediction / reference label volumes through the module's scoring (test metrics and the
    pooled validation counts); WT/TC/ET Dice equal Dice computed by hand on the derived binary masks."""
    m = _module(tiny3d)
    assert m.out_channels == 4 and m._metric_regions() == (None, None)  # label-trained, per class by default
    dm = types.SimpleNamespace(declared_regions=list(REGIONS.values()), declared_region_names=list(REGIONS),
                               dataset_name="fake")
    m._resolve_eval_regions(dm)
    g = np.random.default_rng(0)
    cases = [(g.integers(0, 4, (6, 5, 4)), g.integers(0, 4, (6, 5, 4))) for _ in range(2)]
    cases[1][0][cases[1][0] == 2] = 1  # the prediction swaps SNFH for NCR: WT unchanged, TC and ET differ
    metrics = m._new_metrics(volumetric=True)
    for i, (p, t) in enumerate(cases):
        metrics.update(torch.from_numpy(p), torch.from_numpy(t), case_ids=[f"c{i}"], spacing=(1.0, 1.0, 2.0))
    rows, summary = metrics.per_case(), metrics.compute()
    for i, (p, t) in enumerate(cases):
        for name, members in REGIONS.items():
            assert rows[i][f"dice/{name}"] == pytest.approx(_hand_dice(p, t, members), abs=1e-9), (i, name)
    for name, members in REGIONS.items():
        assert summary[f"dice/{name}"] == pytest.approx(np.mean([_hand_dice(p, t, members) for p, t in cases]))
    assert not any(k.startswith("dice/") and k[5:] not in REGIONS for k in summary if k.count("/") == 1)

    # validation (model selection): pooled counts per region over the cases, val/dice = their mean
    m._infer = lambda batch: [(torch.from_numpy(p), torch.from_numpy(t), f"c{i}", None, None, None)
                              for i, (p, t) in enumerate(cases)]
    m.on_validation_epoch_start()
    m.validation_step({"image": torch.zeros(2, 2, 6, 5, 4)}, 0)
    tp, fp, fn = (m._val_counts[k, 1:] for k in range(3))
    got = (2 * tp / (2 * tp + fp + fn)).tolist()
    P, T = np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases])
    assert got == pytest.approx([_hand_dice(P, T, members) for members in REGIONS.values()])


def test_eval_regions_choices_and_refusals(tiny3d):  # noqa: F811
    from mambaseg.engine.errors import MambasegUserError

    with pytest.raises(MambasegUserError, match="eval_regions must be true, false or auto"):
        _module(tiny3d, eval_regions="yes")
    m = _module(tiny3d, eval_regions=True)
    with pytest.raises(MambasegUserError, match="declares no regions"):
        m._resolve_eval_regions(types.SimpleNamespace(declared_regions=None, dataset_name="x"))
    m = _module(tiny3d)  # auto, no regions declared: per class
    m._resolve_eval_regions(types.SimpleNamespace(declared_regions=None))
    assert m._metric_regions() == (None, None)
    m = _module(tiny3d, eval_regions=False)  # off: per class even where regions are declared
    m._resolve_eval_regions(types.SimpleNamespace(declared_regions=[[1, 2, 3]], declared_region_names=["WT"]))
    assert m._metric_regions() == (None, None)
    m = _module(tiny3d, nsd_tolerance=[1.0, 2.0])  # two tolerances for three regions: refused before training
    with pytest.raises(MambasegUserError, match="nsd_tolerance has 2 values but the data has 3 regions"):
        m._resolve_eval_regions(types.SimpleNamespace(declared_regions=list(REGIONS.values()),
                                                      declared_region_names=list(REGIONS)))


def test_label_trained_fit_and_test_report_regions_only_with_the_option(tiny3d, tmp_path):  # noqa: F811
    import lightning.pytorch as pl

    dm = _dm()
    assert dm.regions is None and dm.declared_regions == list(REGIONS.values())  # trains labels, declares regions
    m = _module(tiny3d, eval_regions=True)
    assert m.out_channels == 4 and m.loss_name == "nnunet_dc_ce"
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(m, datamodule=dm)
    assert "val/dice" in trainer.callback_metrics and m._scored() == list(REGIONS.values())
    trainer.test(m, datamodule=dm, verbose=False)
    res = m.test_results
    for key in ("dice/WT", "dice/TC", "dice/ET", "hd95/WT", "std/dice/TC"):
        assert key in res["summary"]
    assert all({"dice/WT", "dice/TC", "dice/ET"} <= set(r) for r in res["rows"])
    assert res["settings"]["regions"] == list(REGIONS.values())
    assert res["settings"]["regions_from"].startswith("labels") and res["settings"]["training"] == "labels (softmax)"
    # the reported WT Dice is the Dice of the derived masks of the module's own labels (oracle by hand)
    case = dm._datasets["test"][0]
    pred = m._infer({"image": case["image"][None], "mask": case["mask"][None],
                     "meta": {"case_id": ["x"], "spacing": [case["meta"]["spacing"]]}})[0][0].numpy()
    want = _hand_dice(pred, case["mask"].numpy(), REGIONS["WT"])
    got = res["rows"][0]["dice/WT"]
    assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, abs=1e-9)

    m.hparams.eval_regions = False  # the same model without the option: per class (NCR/NET, ED, ET)
    trainer.test(m, datamodule=dm, verbose=False)
    summary = m.test_results["summary"]
    assert "dice/WT" not in summary and "regions_from" not in m.test_results["settings"]
    assert {"dice/NCR/NET", "dice/ED", "dice/ET"} <= set(summary)
    assert m.test_results["settings"]["regions"] is None


@pytest.mark.parametrize("region_based", [False, True])
def test_foreground_oversampling_follows_what_is_trained(region_based):
    """As nnU-Net: patches are forced onto a random foreground class of a label-trained model, onto a random region
    of a region-trained one, whatever regions the data set declares."""
    dm = _dm()
    dm.hparams.region_based = region_based
    dm.setup("fit")
    want = list(REGIONS.values()) if region_based else [[1], [2], [3]]
    assert dm._datasets["train"].fg_classes == want
