"""The shipped 3-D configs: each loads through the CLI against a tiny fixture of the layout it expects (BraTS 2020
folders, nnU-Net raw with a CT or an MR channel), builds its 3-D network at the planned patch, links the data set's
regions, and states the nnU-Net recipe numbers (spec volumetric_pipeline.md 5-7, upstream_3d_models.md 3.1)."""
import json
import os
import sys

import pytest
import yaml

from mambaseg.engine.run import MambaSegCLI
from mambaseg.cli.main import config_dir

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data"))
import _volume_fixtures as fx  # noqa: E402

CONFIGS = {"nnunet_3d_brats": lambda r: fx.brats2020(r, n=3),
           "nnunet_3d_abdomen_ct": lambda r: fx.nnunet_raw(r, n=3, channels=("CT",)),
           "nnunet_3d_abdomen_mr": lambda r: fx.nnunet_raw(r, n=3, channels=("MR",))}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_3d_config_loads_against_a_fixture_of_its_layout(name, tmp_path):
    path = os.path.join(config_dir(), name + ".yaml")
    text = open(path).read()
    assert text.startswith("# ") and "Deviations:" in text
    raw = yaml.safe_load(text)
    root = tmp_path / "data"
    root.mkdir()
    CONFIGS[name](root)
    kw = dict(raw["data"].get("dataset_kwargs") or {}, cache_dir=str(tmp_path / "cache"))
    extra = [] if name == "nnunet_3d_brats" else ["--model.nsd_tolerance", "2.0"]  # the fixture has 3 classes
    cli = MambaSegCLI(args=["--config", path, "--data.root", str(root), "--data.num_workers", "0",
                            "--data.dataset_kwargs", json.dumps(kw), "--trainer.accelerator", "cpu",
                            "--run_dir", str(tmp_path / "run"), *extra], run=False)
    m, dm = cli.model, cli.datamodule
    assert m.spatial_dims == 3 and dm.spatial_dims == 3
    assert list(m.sliding_window.patch_size) == raw["data"]["image_size"] == list(m.net.default_input_size)
    assert m.sliding_window.overlap == 0.5 and m.sliding_window.gaussian and m.sliding_window.mode == "nnunet"
    mk, d = raw["model"], raw["data"]
    assert (mk["optimizer"], mk["lr"], mk["momentum"], mk["weight_decay"]) == ("sgd", 0.01, 0.99, 3e-5)
    assert (mk["scheduler"], mk["poly_power"], mk["max_iters"]) == ("poly", 0.9, 1000 * 250)
    assert (d["batch_size"], d["iterations_per_epoch"], d["oversample_foreground"]) == (2, 250, 0.33)
    assert raw["trainer"]["max_epochs"] == 1000 and raw["trainer"]["gradient_clip_val"] == 12
    if name == "nnunet_3d_brats":
        assert dm.regions == [[1, 2, 3], [1, 3], [3]] and m.hparams.regions == dm.regions
        assert m.out_channels == 3 and m.loss_name == "nnunet_region_dc_bce" and m.sliding_window.mirror
        assert d["image_size"] == [128, 128, 128]
    else:
        assert m.hparams.regions is None and m.loss_name == "nnunet_dc_ce" and not m.sliding_window.mirror
        assert d["image_size"] == [192, 224, 40]  # nnU-Net's 40 x 224 x 192 (z, y, x) in (i, j, k) order
        assert len(mk["nsd_tolerance"]) == 13  # one per organ of the 13-organ set (U-Mamba's tolerances)


def test_nsd_tolerances_must_match_the_data_before_training(tmp_path):
    """13 organ tolerances for a data set with 3 foreground classes: refused with one line at start."""
    root = tmp_path / "data"
    root.mkdir()
    fx.nnunet_raw(root, n=3, channels=("CT",))
    path = os.path.join(config_dir(), "nnunet_3d_abdomen_ct.yaml")
    from mambaseg.cli.main import main
    code = main(["fit", "--config", path, "--data.root", str(root), "--data.dataset_kwargs",
                 json.dumps({"cache_dir": str(tmp_path / "cache")}), "--trainer.accelerator", "cpu",
                 "--run_dir", str(tmp_path / "run"), "--trainer.max_epochs", "1", "--data.iterations_per_epoch", "1",
                 "--data.image_size", "[16, 16, 8]", "--data.num_workers", "0", "--trainer.enable_progress_bar",
                 "false", "--model.model_kwargs", json.dumps({"patch_size": [16, 16, 8],
                                                              "features_per_stage": [4, 8, 16]})])
    assert code == 2
    assert not (tmp_path / "run" / "metrics.csv").exists()  # refused before any training step
