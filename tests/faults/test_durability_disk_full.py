"""Fault: a full disk during fit left last.ckpt truncated, and --resume then failed. Now every write is atomic:
ENOSPC is one line naming the folder and the space needed, the previous checkpoint stays whole, resume works."""

import errno
import os

import pytest
import torch

import mambaseg.utils.fileio as mio

from _ckpt_helpers import error_lines, fit, tmpfs, train_one_epoch, weights


def test_durability_disk_full_on_tmpfs_keeps_checkpoints_and_resume_works(tmp_path, capsys):
    mnt = tmp_path / "small"
    with tmpfs(mnt, "8m") as ok:
        if not ok:
            pytest.skip("cannot mount a tmpfs here (needs root and mount(8)); the injected-ENOSPC test covers it")
        run = mnt / "run"
        train_one_epoch(run)
        before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
        ckpt_size = max(len(b) for b in before.values())
        # fill the disk so that the next checkpoint cannot be written (leave half of one free)
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        with open(mnt / "filler", "wb") as f:
            f.write(b"\0" * max(0, free - ckpt_size // 2))
        capsys.readouterr()
        rc = fit(run, "--trainer.max_epochs", "2", "--test_after_fit", "false", "--resume", "true")
        err = capsys.readouterr().err
        assert rc == 2, err
        lines = error_lines(err)
        assert len(lines) == 1 and "disk full" in lines[0] and str(run / "checkpoints") in lines[0], err
        assert "needs" in lines[0] and "free" in lines[0]
        after = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
        assert after == before  # previous checkpoints whole, no temporary left behind
        os.unlink(mnt / "filler")
        assert fit(run, "--trainer.max_epochs", "2", "--test_after_fit", "false", "--resume", "true") == 0
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def test_durability_injected_enospc_leaves_previous_file_whole(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    train_one_epoch(run)
    last = run / "checkpoints" / "last.ckpt"
    old = last.read_bytes()
    real = mio._write_all

    def half_then_enospc(fd, data):  # what a disk that fills up mid-write does (checkpoints only)
        if len(data) < 100_000:
            return real(fd, data)
        real(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mio, "_write_all", half_then_enospc)
    capsys.readouterr()
    rc = fit(run, "--trainer.max_epochs", "2", "--test_after_fit", "false", "--resume", "true")
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and "disk full" in lines[0] and str(run / "checkpoints") in lines[0], err
    assert last.read_bytes() == old
    assert sorted(os.listdir(run / "checkpoints")) == ["best.ckpt", "last.ckpt"]  # no temporary left
    weights(last)  # reads
    # the same injection into a report / CSV / summary / prediction write: previous file whole, one line
    report = tmp_path / "report.md"
    report.write_text("previous report\n")
    with pytest.raises(mio.DiskFullError, match=str(tmp_path)):
        mio.atomic_write_text(str(report), "new report\n" * 10_000)
    assert report.read_text() == "previous report\n"
    assert sorted(os.listdir(tmp_path)) == ["report.md", "run"]
