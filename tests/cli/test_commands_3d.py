"""Every 2-D command on a 3-D config (issue 24): ``fit`` / ``validate`` / ``test`` / ``check`` with ``demo_3d``,
``export`` of a 3-D checkpoint (ONNX at the checkpoint's (D, H, W) size, and a folder that ``predict`` uses as the
checkpoint), ``profile`` with one size per axis, and ``compare`` of two 3-D networks with per-case paired tests.

Tiny settings (as ``tests/engine/test_volumetric_e2e.py``): synthetic-brats volumes of 16 x 16 x 8 voxels at
1 x 1 x 2 mm, 2 channels, regions WT / TC / ET; a two-stage nnU-Net plan with widths 4 and 8; one epoch of one
iteration. Oracles: the rebuilt PyTorch network (ONNX, folder), the checkpoint's own predictions (folder), the
input's affine (NIfTI), the linearity of a convolutional net's MACs in the number of voxels (profile)."""
import csv
import importlib.util
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mambaseg.cli.main import main

DATA = ["--data.dataset_kwargs", '{"size": 16, "spacing": [1.0, 1.0, 2.0], "channels": 2, "label_mode": "regions"}',
        "--data.image_size", "[16, 16, 8]", "--data.batch_size", "1", "--data.iterations_per_epoch", "1",
        "--data.split_kwargs", '{"train": {"num_samples": 2}, "val": {"num_samples": 1}, "test": {"num_samples": 3}}',
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TINY_3D = ["--config", "demo_3d", *DATA,
           "--model.model_kwargs", '{"patch_size": [16, 16, 8], "features_per_stage": [4, 8], '
                                   '"deep_supervision": "train"}',
           "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1"]


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    run = tmp_path_factory.mktemp("cmd3d") / "run"
    assert main(["fit", *TINY_3D, "--run_dir", str(run), "--test_after_fit", "false"]) == 0
    return run


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """One 2-channel case as a 4-D NIfTI (channels last) with an anisotropic, rotated, shifted affine."""
    from mambaseg.data.synthetic3d import SyntheticBraTS
    raw = SyntheticBraTS("test", num_samples=1, size=16, spacing=(1.0, 1.0, 2.0), channels=2, normalize=False)
    img = raw.load(0)[0]
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag([1.0, 1.0, 2.0])
    affine[:3, 3] = [4.0, -7.0, 2.0]
    path = tmp_path_factory.mktemp("vol") / "brain.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(img, 0, -1).astype(np.float32), affine), str(path))
    return path, affine


def test_validate_test_and_check_with_a_3d_checkpoint(run3d, tmp_path):
    ckpt = str(run3d / "checkpoints" / "best.ckpt")
    assert main(["validate", *TINY_3D, "--ckpt_path", ckpt]) == 0
    assert main(["test", *TINY_3D, "--ckpt_path", ckpt, "--run_dir", str(tmp_path / "t")]) == 0
    with open(tmp_path / "t" / "test" / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == [f"brats_test_{i:04d}" for i in range(3)]
    assert all(r["spacing"] == "1x1x2" and "dice/WT" in r and "nsd/ET" in r for r in rows)
    assert main(["check", *TINY_3D]) == 0


def test_export_3d_onnx_at_the_checkpoint_size_and_size_rules(run3d, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from mambaseg.export import network_from_checkpoint, onnx_session, read_training_checkpoint, run_onnx
    ckpt = str(run3d / "checkpoints" / "best.ckpt")
    out = tmp_path / "m.onnx"
    assert main(["export", "--ckpt", ckpt, "--out", str(out)]) == 0  # (D, H, W) of the checkpoint: 16 x 16 x 8
    assert "input (batch, 2, 16, 16, 8)" in capsys.readouterr().out
    net = network_from_checkpoint(read_training_checkpoint(ckpt))
    assert net.num_classes == 3  # one sigmoid output per region (WT, TC, ET), not one per label
    x = torch.randn(2, 2, 16, 16, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = net(x)
    np.testing.assert_allclose(run_onnx(onnx_session(out), x), ref.numpy(), atol=1e-4)
    assert main(["export", "--ckpt", ckpt, "--out", str(tmp_path / "cube.onnx"), "--size", "16"]) == 0
    assert "input (batch, 2, 16, 16, 16)" in capsys.readouterr().out
    assert main(["export", "--ckpt", ckpt, "--out", str(tmp_path / "dhw.onnx"), "--size", "8", "16", "32"]) == 0
    assert "input (batch, 2, 8, 16, 32)" in capsys.readouterr().out
    assert main(["export", "--ckpt", ckpt, "--out", str(tmp_path / "two.onnx"), "--size", "16", "16"]) == 2
    err = capsys.readouterr().err
    assert "3-D network; give N or D H W" in err and not (tmp_path / "two.onnx").exists()


def test_export_3d_folder_predicts_as_the_checkpoint(run3d, volume, tmp_path, capsys):
    from mambaseg.models import from_pretrained
    ckpt = str(run3d / "checkpoints" / "best.ckpt")
    folder = tmp_path / "folder"
    assert main(["export", "--ckpt", ckpt, "--format", "folder", "--out", str(folder)]) == 0
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["input_size"] == [16, 16, 8] and cfg["class_names"] == ["WT", "TC", "ET"]
    assert cfg["training"]["volumetric"]["plan"]["target_spacing"] == [1.0, 1.0, 2.0]
    assert "one sigmoid per region (WT = classes [1, 2, 3]" in cfg["output"]
    card = (folder / "README.md").read_text()
    assert "logits (B, C, I, J, K)" in card and "--input volumes/" in card and "at [1.0, 1.0, 2.0] mm" in card
    assert from_pretrained(folder).spatial_dims == 3
    src, affine = volume
    assert main(["predict", "--ckpt", ckpt, "--input", str(src), "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert main(["predict", "--ckpt", str(folder), "--input", str(src), "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 0
    a, b = nib.load(tmp_path / "a" / "masks" / "brain.nii.gz"), nib.load(tmp_path / "b" / "masks" / "brain.nii.gz")
    assert b.shape == (16, 16, 8)
    np.testing.assert_allclose(b.affine, affine, atol=1e-5)
    assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    if importlib.util.find_spec("onnxruntime"):  # the folder exports to ONNX at its (D, H, W) size too
        assert main(["export", "--ckpt", str(folder), "--out", str(tmp_path / "f.onnx")]) == 0
        assert "input (batch, 2, 16, 16, 8)" in capsys.readouterr().out


def test_profile_3d_takes_one_size_per_axis(capsys):
    common = ["--in-channels", "1", "--no-latency", "--no-used", "--conventions", "paper", "--json"]
    assert main(["profile", "nnunet_3d", "--size", "32", "32", "64", *common]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["input_shape"] == [1, 1, 32, 32, 64]
    assert main(["profile", "nnunet_3d", "--size", "32", "64", "64", *common]) == 0
    q = json.loads(capsys.readouterr().out)
    assert q["input_shape"] == [1, 1, 32, 64, 64]
    # a convolutional U-Net (padding keeps every map proportional): twice the voxels, twice the MACs
    assert q["flops"]["paper"]["macs"] == 2 * p["flops"]["paper"]["macs"]
    assert main(["profile", "nnunet_3d", "--size", "32", "32", *common]) == 2
    assert "3-D network; give one size (a cube) or 3 sizes" in capsys.readouterr().err
    assert main(["profile", "unet", "--size", "32", "32", "32", *common]) == 2
    assert "2-D network" in capsys.readouterr().err
    # one side of a 3-D model is a cube: an absurd one is refused by its volume, before allocating it
    assert main(["profile", "nnunet_3d", "--size", "3000", *common]) == 2
    assert "--size 3000x3000x3000 needs at least" in capsys.readouterr().err


def test_compare_two_3d_networks_with_paired_tests_on_cases(tmp_path):
    out = tmp_path / "cmp"
    kw = {"nnunet_3d": {"patch_size": [16, 16, 8], "features_per_stage": [4, 8]},
          "nnunet_resenc_3d": {"patch_size": [16, 16, 8], "features_per_stage": [4, 8], "n_blocks_per_stage": [1, 1]}}
    assert main(["compare", "--config", "demo_3d", "--models", "nnunet_3d,nnunet_resenc_3d", "--seeds", "1",
                 "--out", str(out), "--model_kwargs", json.dumps(kw), *DATA, "--trainer.max_epochs", "1",
                 "--trainer.check_val_every_n_epoch", "1"]) == 0
    with open(out / "paired_tests.csv") as f:
        tests = {r["metric"]: r for r in csv.DictReader(f)}
    # the class mean and each BraTS region (WT / TC / ET), Dice and HD95, Holm-corrected over the 8 tests
    assert set(tests) == {f"{m}{r}" for m in ("dice", "hd95") for r in ("", "/WT", "/TC", "/ET")}
    assert all(r["model"] == "nnunet_resenc_3d" and r["reference"] == "nnunet_3d" for r in tests.values())
    assert int(tests["dice"]["n"]) == int(tests["dice/WT"]["n"]) == 3
    # the paired differences are those of the two runs' per-case CSVs (3 test volumes each)
    per = {}
    for m in ("nnunet_3d", "nnunet_resenc_3d"):
        with open(out / "runs" / m / "seed0" / "test" / "per_case.csv") as f:
            per[m] = {r["case_id"]: r for r in csv.DictReader(f)}
    for key in ("dice", "dice/WT", "hd95/WT"):
        diffs = [float(per["nnunet_resenc_3d"][c][key]) - float(per["nnunet_3d"][c][key]) for c in per["nnunet_3d"]]
        if all(np.isfinite(diffs)):
            assert float(tests[key]["mean_diff"]) == pytest.approx(float(np.mean(diffs)), abs=1e-9)
    with open(out / "per_case_mean.csv") as f:
        assert next(csv.reader(f))[:5] == ["model", "case_id", "dice", "hd95", "dice/WT"]
    assert "| nnunet_resenc_3d |" in (out / "report.md").read_text()


def test_profile_a_3d_config_uses_its_network_patch_channels_and_regions(capsys):
    """``profile --config demo_3d``: the config's nnU-Net plan at its 32^3 patch, 4 channels of synthetic-brats and
    3 region outputs (WT, TC, ET): the parameters of the network the config trains."""
    import yaml

    from mambaseg.engine.configs import resolve_config_path
    from mambaseg.models import create_model
    assert main(["profile", "--config", "demo_3d", "--no-latency", "--no-used", "--conventions", "", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["model"] == "nnunet_3d" and p["input_shape"] == [1, 4, 32, 32, 32]
    kw = yaml.safe_load(open(resolve_config_path("demo_3d")))["model"]["model_kwargs"]
    net = create_model("nnunet_3d", in_channels=4, num_classes=3, **kw)
    assert p["params"]["total"] == sum(t.numel() for t in net.parameters())
    assert main(["profile", "--no-latency"]) == 2
    assert "name a model" in capsys.readouterr().err
