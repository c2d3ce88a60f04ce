"""The polyp benchmark reports every test set on its own: a `test` run over the concatenated test sets writes a
summary per set, each equal to a pooled Dice computed independently from the set's own predictions, and case
ids stay unique although the sets reuse image names (CVC-300 and CVC-ClinicDB both number theirs 1, 2, ...)."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mambaseg.engine.run import MambaSegCLI


def _write_set(folder, names, rng, shift):
    for n in names:
        img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        m = np.zeros((32, 32), np.uint8)
        m[4 + shift:20 + shift, 6:22] = 255
        img[m > 0] = 200
        for sub, arr in (("images", img), ("masks", m)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(folder / sub / f"{n}.png")


@pytest.fixture(scope="module")
def polyp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("polyp")
    rng = np.random.default_rng(0)
    _write_set(root / "TrainDataset", [f"t{i}" for i in range(8)], rng, 0)
    _write_set(root / "TestDataset" / "CVC-300", ["1", "2", "3"], rng, 2)
    _write_set(root / "TestDataset" / "CVC-ClinicDB", ["1", "2"], rng, 8)     # same names as CVC-300
    run = tmp_path_factory.mktemp("run") / "run"
    MambaSegCLI(args=[
        "fit", "--data.dataset", "polyp", "--data.root", str(root), "--data.val_fraction", "0.25",
        "--data.image_size", "32", "--data.batch_size", "4", "--data.eval_batch_size", "2",
        "--data.transforms", "default", "--data.num_workers", "0",
        "--model.model", "unet", "--model.model_kwargs", '{"base_channels": 4}',
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--seed_everything", "3", "--run_dir", str(run)])
    return run


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_each_test_set_gets_its_own_summary(polyp_run):
    test = polyp_run / "test"
    all_rows = _rows(test / "per_case.csv")
    assert sorted(r["case_id"] for r in all_rows) == sorted(
        ["CVC-300/1", "CVC-300/2", "CVC-300/3", "CVC-ClinicDB/1", "CVC-ClinicDB/2"])
    for name, n in (("CVC-300", 3), ("CVC-ClinicDB", 2)):
        rows = _rows(test / "subsets" / name / "per_case.csv")
        assert sorted(r["case_id"] for r in rows) == sorted(f"{name}/{i}" for i in range(1, n + 1))
        summary = json.loads((test / "subsets" / name / "summary.json").read_text())
        assert summary["settings"]["subset"] == name and summary["settings"]["aggregation"] == "pooled"
        assert summary["counts"]["count/cases"] == n


def test_per_set_pooled_dice_equals_an_independent_computation(polyp_run):
    from mambaseg.data import build_dataset
    from mambaseg.data.transforms import preset_transforms
    from mambaseg.models import create_model
    ck = torch.load(polyp_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    net = create_model("unet", in_channels=3, num_classes=1, base_channels=4)
    net.load_state_dict({k[4:]: v for k, v in ck["state_dict"].items() if k.startswith("net.")})
    net.eval()
    cfg_root = [line.split(":", 1)[1].strip() for line in (polyp_run / "config.yaml").read_text().splitlines()
                if line.strip().startswith("root:")][0]
    for name in ("CVC-300", "CVC-ClinicDB"):
        ds = build_dataset("polyp", root=cfg_root, split=f"test/{name}",
                           transform=preset_transforms("default", 32, train=False))
        tp = fp = fn = 0
        with torch.no_grad():
            for i in range(len(ds)):
                s = ds[i]
                pred = (torch.sigmoid(net(s["image"][None]))[0, 0] >= 0.5).numpy()
                gt = s["mask"].numpy() == 1
                tp += int((pred & gt).sum())
                fp += int((pred & ~gt).sum())
                fn += int((~pred & gt).sum())
        summary = json.loads((polyp_run / "test" / "subsets" / name / "summary.json").read_text())["metrics"]
        expect = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
        assert summary["dice"] == pytest.approx(expect, abs=1e-6), name
