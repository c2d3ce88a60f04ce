"""End to end on CPU with a tiny 3-D conv net (defined here, registered only for these tests): fit on patches of
the synthetic BraTS set (regions WT/TC/ET), validate and test on whole volumes with the sliding window (metrics in
mm, NSD, per-region keys), save a checkpoint, and predict a NIfTI whose affine and shape equal the input's."""
import math

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn

from mambaseg.models import registry
from mambaseg.models.contract import SegmentationNetwork


class Tiny3D(SegmentationNetwork, nn.Module):
    """Two 3x3x3 convolutions; keeps the input size (downsample factor 1)."""

    spatial_dims = 3
    downsample_factor = 1
    default_input_size = (16, 16, 8)
    feature_info = []
    encoder_modules = []

    def __init__(self, in_channels=2, num_classes=3):
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.body = nn.Sequential(nn.Conv3d(in_channels, 8, 3, padding=1), nn.LeakyReLU(0.01),
                                  nn.Conv3d(8, num_classes, 3, padding=1))

    def forward(self, x):
        return self.body(x)


@pytest.fixture
def tiny3d(monkeypatch):
    info = registry.ModelInfo("tiny3d_test", lambda **kw: Tiny3D(**{k: kw[k] for k in ("in_channels", "num_classes")}),
                              "", 16, "cnn", "tiny 3-D test net", {"spatial_dims": 3}, Tiny3D)
    monkeypatch.setitem(registry._REGISTRY, "tiny3d_test", info)
    return "tiny3d_test"


def _data(**kw):
    from mambaseg.engine.datamodule import SegDataModule
    return SegDataModule("synthetic-brats", dataset_kwargs={"size": 16, "spacing": [1.0, 1.0, 2.0], "channels": 2,
                                                            "label_mode": "regions"},
                         split_kwargs={"train": {"num_samples": 3}, "val": {"num_samples": 2},
                                       "test": {"num_samples": 2}},
                         image_size=[16, 16, 8], batch_size=2, iterations_per_epoch=2, val_split="val",
                         augmentation=None, num_workers=0, check="none", **kw)


def test_fit_validate_test_predict_3d(tiny3d, tmp_path):
    import lightning.pytorch as pl

    from mambaseg.engine.module import SegmentationModule
    from mambaseg.engine.predict import load_module, predict_paths

    dm = _data()
    assert dm.spatial_dims == 3 and dm.regions == [[1, 2, 3], [1, 3], [3]]
    module = SegmentationModule(model=tiny3d, num_classes=dm.num_classes, in_channels=dm.in_channels,
                                image_size=[16, 16, 8], regions=dm.regions, region_names=dm.region_names,
                                nsd_tolerance=[2.0, 2.0, 1.0], sw_overlap=0.5, sw_batch_size=2, lr=1e-2,
                                scheduler="none", aggregation="per_volume", hd95_mode="monai")
    assert module.out_channels == 3 and module.loss_name == "nnunet_region_dc_bce"
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2  # iterations_per_epoch batches of patches
    assert "val/dice" in trainer.callback_metrics and "val/loss" in trainer.callback_metrics
    trainer.test(module, datamodule=dm, verbose=False)
    res = module.test_results
    summary, rows = res["summary"], res["rows"]
    assert summary["count/cases"] == 2 and [r["case_id"] for r in rows] == ["brats_test_0000", "brats_test_0001"]
    for key in ("dice/WT", "dice/TC", "dice/ET", "nsd/WT", "hd95/ET", "std/dice/WT"):
        assert key in summary
    assert all(r["spacing"] == "1x1x2" for r in rows)  # metrics in mm from the volume's spacing
    sw = res["settings"]["sliding_window"]
    assert sw["patch_size"] == [16, 16, 8] and sw["overlap"] == 0.5 and res["settings"]["regions"] == dm.regions

    # the sliding-window labels of the module equal a direct window over the whole volume (patch = volume size)
    case = dm._datasets["test"][0]
    with torch.no_grad():
        direct = module.net(case["image"][None])[0]
    from mambaseg.engine.sliding_window import logits_to_segmentation
    assert torch.equal(module._infer({"image": case["image"][None], "mask": case["mask"][None],
                                      "meta": {"case_id": ["x"], "spacing": [case["meta"]["spacing"]]}})[0][0],
                       logits_to_segmentation(direct, dm.regions))

    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(str(ckpt))
    loaded = load_module(str(ckpt))
    assert loaded.spatial_dims == 3 and loaded.volumetric_info["plan"]["target_spacing"] == [1.0, 1.0, 2.0]

    # a 4-D NIfTI (channels last, as the Decathlon ships) with a rotated, anisotropic affine
    from mambaseg.data.synthetic3d import SyntheticBraTS
    raw = SyntheticBraTS("test", num_samples=1, size=16, spacing=(1.0, 1.0, 2.0), channels=2, normalize=False)
    img = raw.load(0)[0]  # (2, 16, 16, 8)
    c, s = math.cos(0.4), math.sin(0.4)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag([1.0, 1.0, 2.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    src = tmp_path / "in" / "brain.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(np.moveaxis(img, 0, -1), affine), str(src))
    bad = tmp_path / "in" / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file")
    out = tmp_path / "pred"
    result = predict_paths(loaded, [str(src), str(bad)], str(out), progress=False)
    assert len(result.written) == 1 and len(result.errors) == 1 and "broken" in result.errors[0][0]
    assert (out / "errors.txt").read_text().startswith(str(bad))
    pred = nib.load(result.written[0])
    assert pred.shape == (16, 16, 8)
    np.testing.assert_allclose(pred.affine, affine, atol=1e-5)
    vals = set(np.unique(np.asanyarray(pred.dataobj)).tolist())
    assert vals <= {0, 1, 2, 3} and pred.header.get_data_dtype() == np.uint8


def test_3d_model_refuses_2d_batches_and_bad_patch(tiny3d):
    from mambaseg.engine.errors import MambasegUserError
    from mambaseg.engine.module import SegmentationModule

    with pytest.raises(MambasegUserError, match="one per spatial axis"):
        SegmentationModule(model=tiny3d, num_classes=4, in_channels=2, image_size=[16, 16])
    m = SegmentationModule(model=tiny3d, num_classes=4, in_channels=2, image_size=[8, 8, 8])
    assert m.loss_name == "nnunet_dc_ce" and m.out_channels == 4
    with pytest.raises(MambasegUserError, match="2-D data set given to a 3-D config"):
        m._infer({"image": torch.zeros(1, 2, 8, 8), "mask": torch.zeros(1, 8, 8, dtype=torch.long), "meta": {}})


def test_brats_folder_fit_and_predict_keeps_geometry_and_raw_labels(tiny3d, tmp_path):
    """BraTS 2020 folders (labels 0/1/2/4, anisotropic, rotated affine): fit a step on patches, predict the folder;
    every prediction has its flair file's affine and shape and holds BraTS values (4, never the class index 3)."""
    import os
    import sys

    import lightning.pytorch as pl

    from mambaseg.engine.datamodule import SegDataModule
    from mambaseg.engine.module import SegmentationModule
    from mambaseg.engine.predict import load_module, predict_paths

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data"))
    import _volume_fixtures as fx

    root = fx.brats2020(tmp_path / "brats", n=4)
    dm = SegDataModule("brats", root=str(root), image_size=[8, 8, 4], transforms=None, batch_size=2,
                       iterations_per_epoch=1, val_split="val", test_split="val", augmentation=None, check="none",
                       dataset_kwargs={"cache_dir": str(tmp_path / "cache")})
    module = SegmentationModule(model=tiny3d, num_classes=dm.num_classes, in_channels=dm.in_channels,
                                image_size=[8, 8, 4], regions=dm.regions, region_names=dm.region_names,
                                scheduler="none")
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    res = module.test_results
    assert res["settings"]["grid"].startswith("original")
    rows = {r["case_id"]: r for r in res["rows"]}
    assert all(r["spacing"] == "0.8x0.9x3" for r in rows.values())  # the original spacing
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(str(ckpt))
    loaded = load_module(str(ckpt))
    assert loaded.volumetric_info["label_values"] == [0, 1, 2, 4]
    # oracle: the test Dice on the original grid equals the Dice of predict's NIfTI against the seg file, by hand
    out1 = predict_paths(loaded, [str(root)], str(tmp_path / "pred1"), progress=False)
    assert len(out1.written) == 4
    for cid, row in rows.items():
        p = np.asanyarray(nib.load(str(tmp_path / "pred1" / "masks" / f"{cid}.nii.gz")).dataobj)
        g = np.asanyarray(nib.load(str(root / cid / f"{cid}_seg.nii.gz")).dataobj)
        for name, vals in (("WT", (1, 2, 4)), ("TC", (1, 4)), ("ET", (4,))):
            a, b = np.isin(p, vals), np.isin(g, vals)
            denom = a.sum() + b.sum()
            want = 2 * (a & b).sum() / denom if denom else float("nan")
            got = row[f"dice/{name}"]
            assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, abs=1e-9), (cid, name)
    with torch.no_grad():  # force every voxel into all three regions: the prediction must be ET = BraTS label 4
        loaded.net.body[-1].weight.zero_()
        loaded.net.body[-1].bias.fill_(5.0)
    res = predict_paths(loaded, [str(root)], str(tmp_path / "pred"), progress=False)
    assert len(res.written) == 4 and not res.errors
    for path in res.written:
        case = os.path.basename(path)[: -len(".nii.gz")]
        src = nib.load(str(root / case / f"{case}_flair.nii.gz"))
        pred = nib.load(path)
        assert pred.shape == src.shape
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-6)
        lab = np.asanyarray(pred.dataobj)
        assert set(np.unique(lab).tolist()) <= {0, 4} and (lab == 4).any()
        nonzero = sum(np.asanyarray(nib.load(str(f)).dataobj) != 0 for f in (root / case).glob("*_[ft]*.nii.gz"))
        box = tuple(slice(i.min(), i.max() + 1) for i in np.nonzero(nonzero))
        inside = np.zeros(lab.shape, bool)
        inside[box] = True
        assert (lab[inside] == 4).all() and (lab[~inside] == 0).all()  # pasted back into the crop box


def test_3d_predict_skips_bad_inputs_with_one_line_each(tiny3d, tmp_path):
    """A 2-D NIfTI, a volume with the wrong channel count and a text file are skipped with one line each (the CLI
    exits 3); the good volume is written. A module without a preprocessing plan is refused before any work."""
    from mambaseg.data.synthetic3d import SyntheticBraTS
    from mambaseg.engine.errors import MambasegUserError
    from mambaseg.engine.module import SegmentationModule
    from mambaseg.engine.predict import predict_paths
    from mambaseg.engine.volumetric import volumetric_info

    m = SegmentationModule(model=tiny3d, num_classes=4, in_channels=2, image_size=[16, 16, 8])
    src = tmp_path / "in"
    src.mkdir()
    with pytest.raises(MambasegUserError, match="no preprocessing plan"):
        predict_paths(m, [str(src)], str(tmp_path / "o0"), progress=False)
    m.volumetric_info = volumetric_info(SyntheticBraTS("test", num_samples=1, size=16, channels=2))
    img = SyntheticBraTS("test", num_samples=1, size=16, channels=2, normalize=False).load(0)[0]
    nib.save(nib.Nifti1Image(np.moveaxis(img, 0, -1), np.eye(4)), str(src / "good.nii.gz"))
    nib.save(nib.Nifti1Image(img[0], np.eye(4)), str(src / "one_channel.nii.gz"))
    nib.save(nib.Nifti1Image(img[0, :, :, 0], np.eye(4)), str(src / "flat.nii.gz"))
    (tmp_path / "notes.txt").write_text("x")
    res = predict_paths(m, [str(src), str(tmp_path / "notes.txt")], str(tmp_path / "o"), progress=False)
    assert [p.rsplit("/", 1)[-1] for p in res.written] == ["good.nii.gz"]
    msgs = {p.rsplit("/", 1)[-1]: msg for p, msg in res.errors}
    assert set(msgs) == {"one_channel.nii.gz", "flat.nii.gz", "notes.txt"}
    assert "1 channel(s)" in msgs["one_channel.nii.gz"] and "has 2" in msgs["one_channel.nii.gz"]
    assert "2-D image" in msgs["flat.nii.gz"]  # a 2-D file for a 3-D model
    assert "not a NIfTI file" in msgs["notes.txt"]
    assert all("\n" not in msg for msg in msgs.values())
    assert len((tmp_path / "o" / "errors.txt").read_text().splitlines()) == 3


def test_network_and_data_of_different_dimensionality_are_refused(tiny3d, tmp_path, capsys):
    from mambaseg.cli.main import main

    common = ["--trainer.accelerator", "cpu", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
              "--data.num_workers", "0"]
    # a 2-D U-Net on synthetic-brats volumes
    code = main(["fit", "--config", "demo_3d", "--model.model", "unet", "--model.model_kwargs", '{"base_channels": 4}',
                 "--data.image_size", "32", "--run_dir", str(tmp_path / "a"), *common])
    assert code == 2 and not (tmp_path / "a" / "metrics.csv").exists()
    assert "'unet' is a 2-D network but data set 'synthetic-brats' gives 3-D volumes" in capsys.readouterr().err
    # the tiny 3-D network on 2-D images
    code = main(["fit", "--config", "demo", "--model.model", tiny3d, "--data.image_size", "32",
                 "--run_dir", str(tmp_path / "b"), *common])
    assert code == 2 and not (tmp_path / "b" / "metrics.csv").exists()
    assert "is a 3-D network but data set 'synthetic-skin' gives 2-D images" in capsys.readouterr().err


def test_report_counts_empty_pairs_over_named_regions():
    """(case, region) pairs: 2 cases x 3 named regions with ET empty in both is 2 of 6, not 'predicts nothing'."""
    from mambaseg.engine.report import RunRecord, empty_warnings

    summary = {"dice": 0.5, "dice/WT": 0.9, "dice/TC": 0.6, "dice/ET": 0.0, "std/dice/WT": 0.1,
               "count/cases": 2, "count/pred_empty": 2, "count/both_empty": 0, "count/ref_empty": 0}
    (w,) = empty_warnings([RunRecord(name="m", run_dir="", summary=summary, rows=[], qualitative=[],
                                     settings={"empty_policy": "nnunet"})])
    assert "2 of 6 (case, class) predictions are empty" in w and "predicts nothing" not in w
