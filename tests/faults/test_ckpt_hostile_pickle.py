"""Fault: a .ckpt whose pickle calls os.system ran it in predict, test, fit --ckpt_path and fit --resume.
Now every checkpoint is read with weights_only=True: refused in one line (exit 2), the marker never appears."""

import shutil

import numpy as np
import pytest
from PIL import Image

from mambaseg.cli.main import main

from _ckpt_helpers import TINY, error_lines, train_one_epoch, write_hostile_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("hostile") / "run"
    train_one_epoch(run)
    return run


def _command(path, tmp_path, evil, trained):
    if path == "predict":
        src = tmp_path / "images"
        src.mkdir()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src / "a.png")
        return ["predict", "--ckpt", str(evil), "--input", str(src), "--out", str(tmp_path / "preds"),
                "--no-progress"]
    if path == "test":
        return ["test", *TINY, "--ckpt_path", str(evil), "--run_dir", str(tmp_path / "eval")]
    if path == "fit_ckpt_path":
        return ["fit", *TINY, "--ckpt_path", str(evil), "--run_dir", str(tmp_path / "fit"),
                "--trainer.max_epochs", "2", "--test_after_fit", "false"]
    run = tmp_path / "resumed"
    shutil.copytree(trained, run)
    shutil.copy(evil, run / "checkpoints" / "last.ckpt")
    return ["fit", *TINY, "--run_dir", str(run), "--resume", "true", "--trainer.max_epochs", "2",
            "--test_after_fit", "false"]


@pytest.mark.parametrize("path", ["predict", "test", "fit_ckpt_path", "fit_resume"])
def test_ckpt_hostile_pickle_is_refused_and_never_runs(path, trained, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.ckpt"
    write_hostile_checkpoint(trained / "checkpoints" / "last.ckpt", evil, marker)
    rc = main(_command(path, tmp_path, evil, trained))
    err = capsys.readouterr().err
    assert not marker.exists(), f"{path}: the checkpoint's pickle ran code"
    assert rc == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and "refused" in lines[0] and "--convert-trusted" in lines[0], err
    assert "posix.system" in lines[0] or "os.system" in lines[0]  # says why
