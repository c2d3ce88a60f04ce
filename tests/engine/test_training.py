"""End-to-end engine tests on tiny synthetic runs (CPU, seconds): resume == uninterrupted, the test metrics
equal an independent numpy computation from the saved checkpoint, per-volume evaluation, run outputs."""

import csv
import json

import pytest
import torch

from mambaseg.engine.run import MambaSegCLI

TINY = ["--data.dataset", "synthetic-skin", "--data.dataset_kwargs", '{"size": 32}',
        "--data.split_kwargs", '{"train": {"num_samples": 8}, "val": {"num_samples": 4}, "test": {"num_samples": 4}}',
        "--data.val_split", "val", "--data.image_size", "32", "--data.batch_size", "4", "--data.eval_batch_size", "4",
        "--data.transforms", "default",
        "--model.model", "unet", "--model.model_kwargs", '{"base_channels": 4}', "--model.lr", "0.01",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.deterministic", "true",
        "--trainer.log_every_n_steps", "1", "--seed_everything", "7"]


def fit(run_dir, *extra):
    return MambaSegCLI(args=["fit", *TINY, "--run_dir", str(run_dir), *extra])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("full") / "run"
    fit(run, "--trainer.max_epochs", "2")
    return run


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_run_directory_holds_every_output(full_run):
    for rel in ("config.yaml", "metrics.csv", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "run.json",
                "test/per_case.csv", "test/summary.json", "report.md", "plots/training_curves.png",
                "plots/dice_histogram.png", "plots/qualitative.png"):
        assert (full_run / rel).is_file(), rel
    summary = json.loads((full_run / "test" / "summary.json").read_text())
    assert summary["settings"]["aggregation"] == "pooled" and summary["settings"]["hd95_mode"] == "medpy"
    report = (full_run / "report.md").read_text()
    assert "HD95" in report and "ASD" in report and "plots/qualitative.png" in report
    info = json.loads((full_run / "run.json").read_text())
    assert "scan_backend" in info["environment"] and info["steps"] == 4  # 2 epochs x 2 batches


def test_resume_gives_the_same_weights_as_uninterrupted(full_run, tmp_path):
    run = tmp_path / "interrupted"
    fit(run, "--trainer.max_epochs", "1", "--test_after_fit", "false")
    mid = _weights(run / "checkpoints" / "last.ckpt")
    fit(run, "--trainer.max_epochs", "2", "--test_after_fit", "false", "--resume", "true")
    resumed, straight = _weights(run / "checkpoints" / "last.ckpt"), _weights(full_run / "checkpoints" / "last.ckpt")
    assert resumed.keys() == straight.keys()
    assert any(not torch.equal(mid[k], resumed[k]) for k in mid)  # the second epoch really trained
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
    resumed_logs = [p for p in run.iterdir() if p.name.startswith("resume-")]
    assert len(resumed_logs) == 1 and (resumed_logs[0] / "metrics.csv").is_file()  # first log kept
    assert (run / "metrics.csv").is_file() and (run / "config.yaml").is_file()


def test_test_metrics_equal_an_independent_computation(full_run):
    """Reload best.ckpt, predict the test split with plain torch, pool TP/FP/FN in numpy: same Dice/IoU."""
    from mambaseg.data import build_dataset
    from mambaseg.data.transforms import preset_transforms
    from mambaseg.models import create_model
    ck = torch.load(full_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    net = create_model("unet", in_channels=3, num_classes=1, base_channels=4)
    net.load_state_dict({k[4:]: v for k, v in ck["state_dict"].items() if k.startswith("net.")})
    net.eval()
    ds = build_dataset("synthetic-skin", split="test", num_samples=4, size=32,
                       transform=preset_transforms("default", 32, train=False))
    tp = fp = fn = 0
    per_case = {}
    with torch.no_grad():
        for i in range(len(ds)):
            s = ds[i]
            pred = (torch.sigmoid(net(s["image"][None]))[0, 0] >= 0.5).numpy()
            gt = s["mask"].numpy() == 1
            a, b, c = int((pred & gt).sum()), int((pred & ~gt).sum()), int((~pred & gt).sum())
            tp, fp, fn = tp + a, fp + b, fn + c
            per_case[s["meta"]["case_id"]] = 2 * a / (2 * a + b + c) if (2 * a + b + c) else None
    summary = json.loads((full_run / "test" / "summary.json").read_text())["metrics"]
    assert summary["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6)
    assert summary["iou"] == pytest.approx(tp / (tp + fp + fn), abs=1e-6)
    with open(full_run / "test" / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["case_id"] for r in rows) == sorted(per_case)
    for r in rows:
        if per_case[r["case_id"]] is not None and float(r["dice"]) > 0:
            assert float(r["dice"]) == pytest.approx(per_case[r["case_id"]], abs=1e-6)


def test_validation_dice_is_logged_and_drives_best_checkpoint(full_run):
    with open(full_run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    vals = [float(r["val/dice"]) for r in rows if r.get("val/dice")]
    assert len(vals) == 2 and all(0.0 <= v <= 1.0 for v in vals)
    best = torch.load(full_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    cb = [v for k, v in best["callbacks"].items() if "ModelCheckpoint" in k][0]
    assert cb["monitor"] == "val/dice" and float(cb["best_model_score"]) == pytest.approx(max(vals))


def test_per_volume_evaluation_on_synthetic_cardiac(tmp_path):
    """Volumes are evaluated whole: one per_case row per test volume, 3D Dice per class equal to numpy."""
    run = tmp_path / "cardiac"
    cli = MambaSegCLI(args=[
        "fit", "--data.dataset", "synthetic-cardiac", "--data.dataset_kwargs", '{"size": 32, "depth": 3}',
        "--data.split_kwargs", '{"train": {"num_samples": 2}, "val": {"num_samples": 1}, "test": {"num_samples": 2}}',
        "--data.val_split", "val", "--data.image_size", "32", "--data.batch_size", "3", "--data.transforms", "default",
        "--model.model", "unet", "--model.model_kwargs", '{"base_channels": 4}', "--model.aggregation", "per_volume",
        "--model.empty_policy", "mamba_unet", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--run_dir", str(run)])
    assert cli.model.hparams.num_classes == 4 and cli.model.hparams.in_channels == 1
    with open(run / "test" / "per_case.csv") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["cardiac_test_0000", "cardiac_test_0001"]
    summary = json.loads((run / "test" / "summary.json").read_text())
    assert summary["settings"]["aggregation"] == "per_volume"
    # independent 3D Dice per class from the trained network
    from mambaseg.data import build_dataset, volume_slices
    from mambaseg.data.transforms import preset_transforms
    net = cli.model.net.eval()
    vols = build_dataset("synthetic-cardiac", split="test", num_samples=2, size=32, depth=3).volumes()
    t = preset_transforms("default", 32, train=False)
    checked = 0
    with torch.no_grad():
        for v in vols:
            pred = net(volume_slices(v, t)).argmax(1).numpy()
            gt = v["mask"].numpy()
            for k in (1, 2, 3):
                p, g = pred == k, gt == k
                if p.any() and g.any():
                    want = 2 * (p & g).sum() / (p.sum() + g.sum())
                    name = ["background", "right_ventricle", "myocardium", "left_ventricle"][k]  # the set's names
                    assert float(rows[v["meta"]["case_id"]][f"dice/{name}"]) == pytest.approx(want, abs=1e-6)
                    checked += 1
    assert checked > 0
