"""Fault injection, CLI part (issue 14, "one clear line, never a traceback"): each bad input below ends with ONE
line naming the problem and the fix, exit code 2, and nothing written. In-process ``main()`` calls."""

import inspect

import pytest
import torch

import mambaseg.engine.run  # noqa: F401  (Lightning's log handlers bind to the session's stderr, not capsys')
from mambaseg.cli.main import main

TINY = ["--data.dataset", "synthetic-skin", "--data.dataset_kwargs", '{"size": 32}',
        "--data.split_kwargs", '{"train": {"num_samples": 2}, "val": {"num_samples": 1}, "test": {"num_samples": 1}}',
        "--data.val_split", "val", "--data.image_size", "32", "--data.batch_size", "2", "--data.transforms", "default",
        "--model.model", "unet", "--model.model_kwargs", '{"base_channels": 4}',
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "1"]


def _error_lines(err: str):
    return [ln for ln in err.splitlines() if "error:" in ln]


def _assert_one_clear_line(err: str):
    assert "Traceback" not in err and "usage:" not in err, err[-2000:]
    lines = _error_lines(err)
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def test_model_kwargs_typo_names_the_keyword_the_valid_ones_and_near_matches(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(["fit", *TINY, "--model.model_kwargs", '{"base_chanels": 4}', "--run_dir", str(run)]) == 2
    line = _assert_one_clear_line(capsys.readouterr().err)
    assert "model.model_kwargs" in line and "'base_chanels'" in line and "did you mean 'base_channels'" in line
    # the valid keywords are those of the network's constructor (independent oracle: its signature)
    from mambaseg.models.networks.unet import UNet
    valid = [p for p in inspect.signature(UNet.__init__).parameters if p not in ("self", "in_channels", "num_classes")]
    assert f"Valid keywords: {', '.join(sorted(valid))}" in line
    assert not run.exists()


def test_yaml_key_typo_prints_did_you_mean_alone_without_usage(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batch_sise: 4\n")
    run = tmp_path / "run"
    assert main(["fit", *TINY, "--config", str(bad), "--run_dir", str(run)]) == 2
    err = capsys.readouterr().err
    line = _assert_one_clear_line(err)
    assert err.strip().splitlines()[0] == line  # first, and alone
    assert "'data.batch_sise'" in line and "did you mean 'data.batch_size'" in line
    assert not run.exists()


def test_flag_typo_prints_did_you_mean_alone_in_flag_syntax(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(["fit", *TINY, "--model.lrr", "0.1", "--run_dir", str(run)]) == 2
    err = capsys.readouterr().err
    line = _assert_one_clear_line(err)
    assert err.strip().splitlines() == [line]
    assert "'--model.lrr'" in line and "did you mean '--model.lr'" in line
    assert not run.exists()


def test_trainer_accelerator_gpu_without_a_gpu_suggests_cpu(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    run = tmp_path / "run"
    try:
        code = main(["fit", *TINY, "--trainer.accelerator", "gpu", "--run_dir", str(run)])
    except Exception as e:  # the unfixed code let Lightning's exception escape main()
        pytest.fail(f"main() raised {type(e).__name__}: {e}")
    assert code == 2
    line = _assert_one_clear_line(capsys.readouterr().err)
    assert "--trainer.accelerator gpu" in line and "--trainer.accelerator cpu" in line
    assert not run.exists()
