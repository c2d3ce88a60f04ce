"""Fault: a read-only run or output folder (fit, resume, test, predict) ended in a traceback after work had
started. Now: one line naming the folder, exit 2, before anything is read or written.

We run as root, for whom chmod does not block writes; a read-only tmpfs does (root included). Without root the
test makes the folder read-only with chmod instead (which then does block)."""

import os
import shutil
import stat

import numpy as np
import pytest
from PIL import Image

from mambaseg.cli.main import main

from _ckpt_helpers import TINY, error_lines, remount, tmpfs, train_one_epoch


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("ro") / "run"
    train_one_epoch(run)
    return run


def _snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


@pytest.mark.parametrize("command", ["fit", "resume", "test", "predict"])
def test_durability_read_only_folder_is_refused_before_any_work(command, trained, tmp_path, capsys):
    ro = tmp_path / "ro"
    src = tmp_path / "images"
    src.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src / "a.png")
    with tmpfs(ro, "16m") as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("cannot mount a read-only tmpfs here, and chmod does not block root")
            ro.mkdir(exist_ok=True)
        shutil.copytree(trained, ro / "run")
        if mounted:
            assert remount(ro, read_only=True), "remount read-only failed"
        else:
            for p in [ro, *ro.rglob("*")]:
                if p.is_dir():
                    p.chmod(stat.S_IRUSR | stat.S_IXUSR)
        before = _snapshot(ro)
        ckpt = str(ro / "run" / "checkpoints" / "best.ckpt")
        argv = {"fit": ["fit", *TINY, "--run_dir", str(ro / "new"), "--trainer.max_epochs", "1"],
                "resume": ["fit", *TINY, "--run_dir", str(ro / "run"), "--resume", "true", "--trainer.max_epochs", "2"],
                "test": ["test", *TINY, "--ckpt_path", ckpt],
                "predict": ["predict", "--ckpt", ckpt, "--input", str(src), "--out", str(ro / "preds"),
                            "--no-progress"]}[command]
        rc = main(argv)
        err = capsys.readouterr().err
        after = _snapshot(ro)
        if not mounted:
            for p in [ro, *ro.rglob("*")]:
                if p.is_dir():
                    p.chmod(stat.S_IRWXU)
        else:
            remount(ro, read_only=False)
    assert rc == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and ("read-only" in lines[0] or "not writable" in lines[0]) and str(ro) in lines[0], err
    assert after == before  # nothing written
