"""Fault: after ``--resume`` the progress bar showed ``v_num=5302`` (the last four characters of the CSV
logger's ``resume-<date>-<time>`` folder), a number that means nothing. Now the bar shows no v_num."""

import re

import mambaseg.engine.run  # noqa: F401  (Lightning's log handlers bind to the session's stderr, not capsys')

from _ckpt_helpers import fit, train_one_epoch


def test_resumed_fit_progress_bar_has_no_v_num(tmp_path, capsys):
    run = tmp_path / "run"
    train_one_epoch(run)
    capsys.readouterr()
    assert fit(run, "--trainer.max_epochs", "2", "--test_after_fit", "false", "--resume", "true",
               "--trainer.enable_progress_bar", "true") == 0
    out, err = capsys.readouterr()
    assert re.search(r"Epoch 1\b", out + err), (out + err)[-2000:]  # the bar (rich or TQDM) was drawn
    assert "v_num" not in out + err
    assert list(run.glob("resume-*/metrics.csv"))  # the resumed run still logs into its own folder
