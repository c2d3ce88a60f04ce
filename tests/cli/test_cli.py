"""The ``mambaseg`` command: listing commands, bad input (clear errors, exit code 2, nothing overwritten),
``test`` and ``predict`` on a tiny trained checkpoint, and (slow) ``demo --fast`` and 2-process CPU DDP."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from mambaseg.cli.main import list_configs, main

TINY = ["--data.dataset", "synthetic-skin", "--data.dataset_kwargs", '{"size": 32}',
        "--data.split_kwargs", '{"train": {"num_samples": 4}, "val": {"num_samples": 2}, "test": {"num_samples": 3}}',
        "--data.val_split", "val", "--data.image_size", "32", "--data.batch_size", "4", "--data.transforms", "default",
        "--model.model", "unet", "--model.model_kwargs", '{"base_channels": 4}',
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["fit", *TINY, "--run_dir", str(run), "--test_after_fit", "false"]) == 0
    return run


def test_models_command_lists_registry_with_params(capsys):
    assert main(["models", "*unet*", "--family", "mamba"]) == 0
    out = capsys.readouterr().out
    for name in ("vmunet", "vmunet_v2", "mamba_unet", "hmt_unet"):
        assert f"\n{name} " in out
    assert "\nunet " not in out  # a baseline
    # VM-UNet paper config: 27,427,561 parameters (upstream_models.md §1.2)
    line = [ln for ln in out.splitlines() if ln.startswith("vmunet ")][0]
    assert "27.43 M" in line
    assert main(["models", "vmunett*"]) == 2
    assert "no registered model matches" in capsys.readouterr().err


def test_datasets_and_configs_commands(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("synthetic-skin", "synthetic-polyp", "synthetic-cardiac", "isic", "acdc", "nifti", "folder"):
        assert name in out
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    for name in ("vmunet_isic17", "vmunet_isic18", "vmunet_synapse", "vmunet_v2_isic17", "vmunet_v2_isic18",
                 "vmunet_v2_polyp", "mamba_unet_acdc", "hmt_unet_isic17", "hmt_unet_isic18", "hmt_unet_polyp", "demo"):
        assert name in out and name in list_configs()


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "mambaseg", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "mambaseg" in r.stdout


def test_unknown_config_key_names_near_matches(capsys, tmp_path):
    assert main(["fit", "--config", "demo", "--model.lrr", "0.1", "--run_dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "'--model.lrr'" in err and "'--model.lr'" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batch_sise: 4\n")
    assert main(["fit", "--config", "demo", "--config", str(bad), "--run_dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "'data.batch_sise'" in err and "'data.batch_size'" in err
    assert not (tmp_path / "r").exists()


def test_unknown_model_and_config_name(capsys, tmp_path):
    assert main(["fit", *TINY, "--model.model", "vmunett", "--run_dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'vmunett'" in err and "'vmunet'" in err
    assert main(["fit", "--config", "vmunet_isic7"]) == 2
    assert "did you mean 'vmunet_isic17'" in capsys.readouterr().err


def test_missing_data_path(capsys, tmp_path):
    missing = tmp_path / "no_such_isic"
    assert main(["fit", "--config", "vmunet_isic17", "--data.root", str(missing), "--run_dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and str(missing) in err


def test_refuses_a_run_dir_holding_a_run(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("keep me")
    assert main(["fit", *TINY, "--run_dir", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (run / "metrics.csv").read_text() == "keep me" and sorted(os.listdir(run)) == ["metrics.csv"]


def test_checkpoint_of_another_network_is_refused_before_training(trained, capsys, tmp_path):
    ckpt = str(trained / "checkpoints" / "best.ckpt")
    other = tmp_path / "other"
    assert main(["fit", *TINY, "--model.model_kwargs", '{"base_channels": 8}', "--ckpt_path", ckpt,
                 "--run_dir", str(other)]) == 2
    err = capsys.readouterr().err
    assert "different network" in err and "base_channels" in err
    assert not (other / "checkpoints").exists()
    cardiac = ["--data.dataset", "synthetic-cardiac", "--data.split_kwargs", '{"train": {"num_samples": 1}}']
    assert main(["test", *TINY, *cardiac, "--ckpt_path", ckpt, "--run_dir", str(tmp_path / "t")]) == 2
    assert "num_classes: checkpoint 2 vs config 4" in capsys.readouterr().err
    assert main(["test", *TINY, "--ckpt_path", str(tmp_path / "nope.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_test_subcommand_writes_a_fresh_eval_dir(trained, capsys):
    ckpt = str(trained / "checkpoints" / "best.ckpt")
    assert main(["test", *TINY, "--ckpt_path", ckpt]) == 0
    assert main(["test", *TINY, "--ckpt_path", ckpt]) == 0
    for d in ("test", "test-2"):
        s = json.loads((trained / d / "summary.json").read_text())
        assert s["settings"]["aggregation"] == "pooled" and s["settings"]["hd95_mode"] == "medpy"
    a = json.loads((trained / "test" / "summary.json").read_text())["metrics"]
    b = json.loads((trained / "test-2" / "summary.json").read_text())["metrics"]
    assert a["dice"] == b["dice"]
    assert "HD95" in capsys.readouterr().out


def test_predict_images_and_nifti(trained, capsys, tmp_path):
    import nibabel as nib
    from PIL import Image
    from mambaseg.data import build_dataset
    src = tmp_path / "in"
    src.mkdir()
    ds = build_dataset("synthetic-skin", split="test", num_samples=2, size=40)
    for i in range(2):
        Image.fromarray(ds[i]["image"].permute(1, 2, 0).numpy().astype(np.uint8)).save(src / f"img{i}.png")
    (src / "broken.png").write_bytes(b"not a png at all")
    vol = np.random.default_rng(0).uniform(0, 255, (24, 20, 3)).astype(np.float32)  # (x, y, z)
    affine = np.array([[0.8, 0, 0, 10], [0, 0.9, 0, -5], [0, 0, 2.5, 3], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(vol, affine), str(src / "case.nii.gz"))
    out = tmp_path / "out"
    assert main(["predict", "--ckpt", str(trained / "checkpoints" / "best.ckpt"), "--input", str(src),
                 "--out", str(out), "--no-progress"]) == 3  # finished, one input skipped
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "skipped 1" in captured.err
    assert "broken.png" in (out / "errors.txt").read_text()
    for i in range(2):
        m = np.asarray(Image.open(out / "masks" / f"img{i}.png"))
        assert m.shape == (40, 40) and set(np.unique(m)) <= {0, 255}
        assert (out / "overlays" / f"img{i}.png").is_file()
    pred = nib.load(str(out / "masks" / "case.nii.gz"))
    assert pred.shape == (24, 20, 3) and np.allclose(pred.affine, affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}
    # never overwrite: a second run into the same folder is refused
    assert main(["predict", "--ckpt", str(trained / "checkpoints" / "best.ckpt"), "--input", str(src),
                 "--out", str(out), "--no-progress"]) == 2
    assert "already holds predictions" in capsys.readouterr().err


def test_predict_rejects_a_foreign_checkpoint(capsys, tmp_path):
    bogus = tmp_path / "w.pth"
    torch.save({"weight": torch.zeros(2)}, bogus)
    assert main(["predict", "--ckpt", str(bogus), "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a mambaseg training checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_fast_smoke(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mambaseg", "demo", "--fast", "--quiet", "--out", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DSC" in r.stdout and "HD95" in r.stdout and "aggregation=pooled" in r.stdout
    report = (tmp_path / "d" / "report.md").read_text()
    assert "| vmunet |" in report and "| unet |" in report
    for p in ("training_curves.png", "dice_histogram.png", "qualitative.png"):
        assert (tmp_path / "d" / "plots" / p).is_file()


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "mambaseg", "fit", *TINY, "--data.split_kwargs",
           '{"train": {"num_samples": 8}, "val": {"num_samples": 4}, "test": {"num_samples": 5}}',
           "--data.batch_size", "2", "--trainer.strategy", "ddp", "--trainer.devices", "2", "--run_dir", str(run)]
    # Two processes rendezvous over TCP on a shared machine: pin a free port, and allow one retry in a fresh
    # run directory (a port taken between the probe and the bind is not a defect of ours); both stderrs are
    # reported if both attempts fail.
    errors = []
    for attempt in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        run = tmp_path / f"ddp{attempt}"
        cmd[cmd.index("--run_dir") + 1] = str(run)
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        if r.returncode == 0:
            break
        errors.append(r.stderr[-3000:])
    assert r.returncode == 0, "\n---- next attempt ----\n".join(errors)
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2 and info["strategy"] == "DDPStrategy"
    assert info["steps"] == 2  # 8 images / 2 processes / batch 2
    import csv
    with open(run / "test" / "per_case.csv") as f:
        ids = [r["case_id"] for r in csv.DictReader(f)]
    assert sorted(ids) == [f"skin_test_{i:05d}" for i in range(5)]  # each case once despite sampler padding
