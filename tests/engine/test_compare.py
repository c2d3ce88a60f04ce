"""``mambaseg compare``: two tiny models x 2 seeds on tiny synthetic data (1-2 epochs, seconds per run).

Oracles: the table's means / stds are recomputed with numpy from each run's own ``test/summary.json``; the paired
test is recomputed with ``scipy.stats.wilcoxon`` from the saved ``per_case.csv`` files; Holm and the rank-biserial
effect size against hand-computed cases; resumption is checked by file mtimes and a call counter after a run is
crashed on purpose; the fold split against the volume ids of the slices."""

import csv
import json
import math
import os

import numpy as np
import pytest

from lightning.pytorch.callbacks import Callback

from mambaseg.cli.main import main
from mambaseg.engine import compare as cmp

MODEL_KWARGS = {"unet": {"base_channels": 4},
                "vmunet": {"embed_dim": 8, "depths": [1, 1, 1, 1], "depths_decoder": [1, 1, 1, 1], "d_state": 4}}
TINY = ["--data.dataset", "synthetic-skin", "--data.dataset_kwargs", '{"size": 32}',
        "--data.split_kwargs", '{"train": {"num_samples": 10}, "test": {"num_samples": 5}}',
        "--data.val_split", "null", "--data.val_fraction", "0.3", "--data.image_size", "32",
        "--data.batch_size", "4", "--data.eval_batch_size", "8", "--model.num_qualitative", "2",
        "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1"]


def compare_argv(out, models="unet,vmunet", seeds="2", *extra):
    return ["compare", "--config", "demo", "--models", models, "--seeds", seeds, "--out", str(out),
            "--model_kwargs", json.dumps(MODEL_KWARGS), *extra, *TINY]


class Crash(Callback):
    """Stands in for a killed process: dies at the start of the second epoch (after epoch 1's last.ckpt)."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("injected crash")


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """Compare unet vs vmunet x 2 seeds; the 2nd run (unet/seed1) crashes mid-training, the rerun finishes."""
    out = tmp_path_factory.mktemp("cmp") / "out"
    mp = pytest.MonkeyPatch()
    orig = cmp.run_one
    calls = []

    def crashing(spec, callbacks=()):
        calls.append(spec["label"] + "/seed" + str(spec["seed"]))
        return orig(spec, callbacks=[Crash()] if calls[-1] == "unet/seed1" else ())

    mp.setattr(cmp, "run_one", crashing)
    with pytest.raises(RuntimeError, match="injected crash"):
        main(compare_argv(out))
    first = out / "runs" / "unet" / "seed0"
    stamps = {p: os.stat(first / p).st_mtime_ns for p in ("checkpoints/best.ckpt", "checkpoints/last.ckpt",
                                                          "test/summary.json", "test/per_case.csv")}
    crashed_calls = list(calls)
    calls.clear()

    def counting(spec, callbacks=()):
        calls.append(spec["label"] + "/seed" + str(spec["seed"]))
        res = orig(spec, callbacks)
        calls.append(res["state"])
        return res

    mp.setattr(cmp, "run_one", counting)
    assert main(compare_argv(out)) == 0
    mp.undo()
    return {"out": out, "stamps": stamps, "crashed_calls": crashed_calls, "calls": list(calls)}


def _runs(out, label):
    return sorted((out / "runs" / label).glob("seed*"))


def test_a_crashed_compare_resumes_without_retraining_finished_runs(compared):
    out = compared["out"]
    assert compared["crashed_calls"] == ["unet/seed0", "unet/seed1"]
    # the rerun never called the finished run, resumed the crashed one, trained the others
    assert compared["calls"] == ["unet/seed1", "resumed", "vmunet/seed0", "trained", "vmunet/seed1", "trained"]
    first = out / "runs" / "unet" / "seed0"
    for p, t in compared["stamps"].items():
        assert os.stat(first / p).st_mtime_ns == t, p
    crashed = out / "runs" / "unet" / "seed1"
    resumed = [d for d in crashed.iterdir() if d.name.startswith("resume-")]
    assert len(resumed) == 1  # continued from its checkpoint (Lightning logged into a resume-* folder)
    with open(resumed[0] / "metrics.csv") as f:
        epochs = {r["epoch"] for r in csv.DictReader(f) if r.get("train/loss_epoch")}
    assert epochs == {"1"}  # only the second epoch was trained after the crash
    assert json.loads((crashed / "run.json").read_text())["epochs"] == 2


def test_table_means_equal_the_per_run_summaries(compared):
    out = compared["out"]
    res = json.loads((out / "results.json").read_text())
    table = (out / "table.md").read_text()
    for label in ("unet", "vmunet"):
        summaries = [json.loads((d / "test" / "summary.json").read_text())["metrics"] for d in _runs(out, label)]
        assert len(summaries) == 2
        for metric in ("dice", "iou", "hd95", "asd", "specificity"):
            vals = np.array([s[metric] for s in summaries], float)
            got = res["per_model"][label]["metrics"][metric]
            assert got["mean"] == pytest.approx(vals.mean(), rel=1e-12, abs=1e-12)
            assert got["std"] == pytest.approx(vals.std(ddof=1), rel=1e-12, abs=1e-12)
        d = np.array([s["dice"] for s in summaries])
        assert f"{100 * d.mean():.2f} ± {100 * d.std(ddof=1):.2f}" in table
    assert "aggregation=pooled, hd95_mode=medpy" in res["metric_semantics"]
    assert "aggregation=pooled, hd95_mode=medpy" in table
    with open(out / "results.csv") as f:
        rows = {(r["model"], r["metric"]): r for r in csv.DictReader(f)}
    assert float(rows[("vmunet", "dice")]["mean"]) == pytest.approx(res["per_model"]["vmunet"]["metrics"]["dice"]["mean"])


def _per_case(out, label, metric):
    acc = {}
    for d in _runs(out, label):
        with open(d / "test" / "per_case.csv") as f:
            for r in csv.DictReader(f):
                acc.setdefault(r["case_id"], []).append(float(r[metric]))
    return {c: float(np.mean(v)) for c, v in acc.items()}


def test_paired_test_equals_scipy_on_the_saved_per_case_csvs(compared):
    from scipy.stats import wilcoxon
    out = compared["out"]
    res = json.loads((out / "results.json").read_text())
    tests = {t["metric"]: t for t in res["paired_tests"]}
    assert set(tests) == {"dice", "hd95"} and all(t["model"] == "vmunet" and t["reference"] == "unet"
                                                  for t in tests.values())
    raw_p = {}
    for metric, t in tests.items():
        a, b = _per_case(out, "vmunet", metric), _per_case(out, "unet", metric)
        cases = sorted(c for c in a if math.isfinite(a[c]) and math.isfinite(b[c]))
        x, y = np.array([a[c] for c in cases]), np.array([b[c] for c in cases])
        assert t["n"] == len(cases) == 5
        if np.any(x != y):
            ref = wilcoxon(x, y)
            assert t["statistic"] == pytest.approx(float(ref.statistic), abs=1e-12)
            assert t["pvalue"] == pytest.approx(float(ref.pvalue), rel=1e-12)
        raw_p[metric] = t["pvalue"]
    lo, hi = sorted(raw_p.values())
    expected = {m: (min(1.0, 2 * lo) if p == lo else max(min(1.0, 2 * lo), hi)) for m, p in raw_p.items()}
    for m, t in tests.items():
        assert t["pvalue_holm"] == pytest.approx(expected[m])
    report = (out / "report.md").read_text()
    assert "plots/dice_box.png" in report and (out / "plots" / "dice_box.png").stat().st_size > 1000
    assert "mambaseg compare --config demo --models unet,vmunet" in report and "mambaseg fit --config" in report


def test_every_model_of_a_seed_trains_on_the_same_saved_split(compared):
    out = compared["out"]
    splits = {s: json.loads((out / "splits" / f"seed{s}.json").read_text()) for s in (0, 1)}
    assert splits[0]["val"] != splits[1]["val"]  # the split follows the seed ...
    for s, sp in splits.items():
        assert len(sp["train"]) == 7 and len(sp["val"]) == 3 and not set(sp["train"]) & set(sp["val"])
        for label in ("unet", "vmunet"):  # ... and is the same for every model of that seed
            run = out / "runs" / label / f"seed{s}"
            data = json.loads((run / "run.json").read_text())["data"]
            assert data["split_file"] == str(out / "splits" / f"seed{s}.json")
            assert (data["n_train"], data["n_val"]) == (7, 3)


def test_fold_split_keeps_each_volumes_slices_on_one_side(tmp_path):
    from mambaseg.data import build_dataset
    from mambaseg.engine.datamodule import SegDataModule, _group_ids
    ds = build_dataset("synthetic-cardiac", split="train", num_samples=5, size=32, depth=3)
    ids, groups = [str(c) for c in ds.case_ids()], _group_ids(ds)
    vals = []
    for fold in range(3):
        sp = cmp.fold_split(ids, groups, 3, fold, seed=1)
        vol = lambda c: c.rpartition("_slice")[0]
        assert not {vol(c) for c in sp["train"]} & {vol(c) for c in sp["val"]}
        assert sorted(sp["train"] + sp["val"]) == sorted(ids)
        vals += sp["val"]
    assert sorted(vals) == sorted(ids)  # every slice validates in exactly one fold
    with pytest.raises(ValueError, match="at most 5 folds"):
        cmp.fold_split(ids, groups, 6, 0, seed=1)
    # the data module trains / validates on exactly the cases of the split file
    sp = cmp.fold_split(ids, groups, 3, 0, seed=1)
    (tmp_path / "s.json").write_text(json.dumps(sp))
    dm = SegDataModule("synthetic-cardiac", dataset_kwargs={"size": 32, "depth": 3},
                       split_kwargs={"train": {"num_samples": 5}}, image_size=32, split_file=str(tmp_path / "s.json"))
    dm.setup("fit")
    got = {k: [ids[i] for i in dm._datasets[k].indices] for k in ("train", "val")}
    assert sorted(got["train"]) == sorted(sp["train"]) and sorted(got["val"]) == sorted(sp["val"])


def test_a_fold_plan_gives_every_model_the_same_fold_splits(tmp_path):
    """--folds 2 x 2 seeds, planned only (nothing trained or written): 8 runs, one split per (seed, fold)."""
    tiny = TINY[:TINY.index("--data.val_split")] + ["--data.dataset", "synthetic-cardiac",
                                                     "--data.dataset_kwargs", '{"size": 32, "depth": 2}',
                                                     "--data.split_kwargs", '{"train": {"num_samples": 5}, '
                                                                            '"test": {"num_samples": 2}}']
    plan = cmp.plan_compare("demo", "unet,vmunet", "2", folds=2, out=str(tmp_path / "out"), overrides=tiny,
                            model_kwargs=MODEL_KWARGS)
    assert not (tmp_path / "out").exists()
    assert sorted(plan.splits) == ["seed0_fold0", "seed0_fold1", "seed1_fold0", "seed1_fold1"]
    assert len(plan.runs) == 8 and {r.key for r in plan.runs} >= {"unet/seed1_fold0", "vmunet/seed1_fold1"}
    for seed in (0, 1):
        f0, f1 = plan.splits[f"seed{seed}_fold0"], plan.splits[f"seed{seed}_fold1"]
        assert sorted(f0["val"] + f1["val"]) == sorted(f0["train"] + f0["val"]) and not set(f0["val"]) & set(f1["val"])
        vols = lambda ids: {c.rpartition("_slice")[0] for c in ids}
        assert not vols(f0["train"]) & vols(f0["val"])
    for r in plan.runs:  # both models of a (seed, fold) point at the same split file
        assert r.argv[r.argv.index("--data.split_file") + 1].endswith(f"splits/{r.key.split('/')[1]}.json")
    assert "whole volumes per fold" in plan.protocol["validation"]


def test_holm_and_rank_biserial_match_hand_computed_cases():
    # p sorted 0.01, 0.03, 0.04 -> 3*0.01, max(.03, 2*0.03), max(.06, 1*0.04)
    assert cmp.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert cmp.holm([0.5, float("nan"), 0.9]) == pytest.approx([1.0, float("nan"), 1.0], nan_ok=True)
    # differences 1, -2, 3 (and a zero, dropped): ranks 1, 2, 3 -> W+ = 4, W- = 2 -> r = 2/6
    assert cmp.rank_biserial([1, 0, 3, 5], [0, 2, 0, 5]) == pytest.approx(1 / 3)
    t = cmp.paired_test([0.5, 0.6], [0.5, 0.6])
    assert t["pvalue"] == 1.0 and t["rank_biserial"] == 0.0


@pytest.mark.parametrize("argv, message", [
    (["--models", "unet"], "at least two models"),
    (["--models", "unet,vmnet"], "unknown model 'vmnet'"),
    (["--models", "unet,vmunet", "--seed_everything", "3"], "set by `mambaseg compare`"),
    (["--models", "unet,vmunet", "--reference", "att_unet"], "--reference 'att_unet'"),
    (["--models", "unet,vmunet", "--folds", "1"], "--folds must be >= 2"),
])
def test_bad_input_fails_with_one_line_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main(["compare", "--config", "demo", "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_run_killed_during_its_test_is_tested_again_without_training(compared, monkeypatch):
    """Runs last (it changes the shared compare): a run whose test summary is missing is resumed from its final
    checkpoint, trains no step, and is tested again with the same best checkpoint (same numbers)."""
    out = compared["out"]
    run = out / "runs" / "vmunet" / "seed1"
    before = json.loads((run / "test" / "summary.json").read_text())["metrics"]
    (run / "test" / "summary.json").unlink()
    states = []
    orig = cmp.run_one
    monkeypatch.setattr(cmp, "run_one", lambda spec, callbacks=(): states.append(orig(spec, callbacks)) or states[-1])
    assert main(compare_argv(out)) == 0
    assert [s["key"] for s in states] == ["vmunet/seed1"] and states[0]["state"] == "resumed"
    after = json.loads((run / "test" / "summary.json").read_text())["metrics"]
    assert after["dice"] == pytest.approx(before["dice"], abs=1e-12)
    logs = [d / "metrics.csv" for d in run.iterdir() if d.name.startswith("resume-")]
    with open(logs[0]) as f:
        assert not [r for r in csv.DictReader(f) if r.get("train/loss_epoch")]  # no training after the resume


@pytest.mark.slow
def test_ray_launcher_runs_each_run_as_a_ray_task(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (optional extra: pip install mambaseg[compare])")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # one worker: torch imported once
    try:
        out = tmp_path / "out"
        argv = compare_argv(out, "a=unet,b=unet", "1", "--launcher", "ray") + ["--trainer.max_epochs", "1"]
        i = argv.index("--model_kwargs") + 1  # the launcher is under test, not the models: two tiny U-Nets
        argv[i] = json.dumps({"a": {"base_channels": 4}, "b": {"base_channels": 2}})
        assert main(argv) == 0
    finally:
        ray.shutdown()
    res = json.loads((out / "results.json").read_text())
    assert res["plan"]["launcher"] == "ray" and len(res["runs"]) == 2
    for r in res["runs"]:
        summ = json.loads((out / "runs" / r["label"] / "seed0" / "test" / "summary.json").read_text())
        assert res["per_model"][r["label"]]["metrics"]["dice"]["mean"] == pytest.approx(summ["metrics"]["dice"])
        assert json.loads((out / "runs" / r["label"] / "seed0" / "run.json").read_text())["epochs"] == 1


@pytest.mark.parametrize("trainer, expected", [
    ({"devices": 1}, False), ({"devices": "1"}, False), ({"devices": [0]}, False), ({"devices": 2}, True),
    ({"devices": "0,1"}, True), ({"devices": 1, "strategy": "ddp"}, True), ({"devices": 1, "num_nodes": 2}, True),
    ({"devices": 2, "strategy": "ddp_spawn"}, True), ({"devices": 1, "strategy": "ddp_spawn"}, False),
])
def test_multi_process_runs_are_detected(trainer, expected):
    assert cmp._multi_process(trainer) is expected


@pytest.mark.slow
def test_a_subprocess_run_is_a_plain_mambaseg_fit_process(tmp_path):
    """--subprocess (automatic for DDP runs): the run is `python -m mambaseg fit ...` in its own process."""
    from dataclasses import asdict
    plan = cmp.plan_compare("demo", "a=unet,b=unet", "1", out=str(tmp_path / "out"),
                            overrides=TINY + ["--trainer.max_epochs", "1"], subprocess=True,
                            model_kwargs={"a": {"base_channels": 2}, "b": {"base_channels": 2}})
    assert all(r.subprocess for r in plan.runs)
    cmp.write_plan(plan)
    res = cmp.run_one(asdict(plan.runs[0]))
    assert res["state"] == "trained" and cmp.run_state(plan.runs[0].run_dir) == "done"
    assert cmp.run_one(asdict(plan.runs[0]))["state"] == "done"  # finished: not started again
