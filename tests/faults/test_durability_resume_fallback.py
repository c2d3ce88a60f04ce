"""Fault: --resume with a truncated last.ckpt failed although best.ckpt was intact. Now resume takes the newest
checkpoint that reads and says which one it took instead."""

import os

from _ckpt_helpers import fit, train_one_epoch, weights


def test_durability_truncated_last_ckpt_resumes_from_best(tmp_path, capsys):
    run = tmp_path / "run"
    train_one_epoch(run)
    last = run / "checkpoints" / "last.ckpt"
    os.truncate(last, os.path.getsize(last) // 3)  # what a crash mid-write left before writes were atomic
    capsys.readouterr()
    assert fit(run, "--trainer.max_epochs", "2", "--test_after_fit", "false", "--resume", "true") == 0
    err = capsys.readouterr().err
    assert "last.ckpt does not read" in err and "resuming from best.ckpt" in err, err
    assert weights(last)  # a whole last.ckpt again (epoch 2)
