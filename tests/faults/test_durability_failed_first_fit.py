"""Fault: a fit that failed before its first checkpoint left a run directory that could neither be reused
("already holds files") nor resumed ("no checkpoint"). Now the same --run_dir is accepted again while it holds no
checkpoint (saying so), and --resume says to drop --resume."""

import pytest

from mambaseg.engine.module import SegmentationModule

from _ckpt_helpers import error_lines, fit


def test_durability_run_dir_of_fit_failed_before_first_checkpoint_is_reused(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"

    def broken(self, batch, batch_idx):
        raise RuntimeError("simulated failure before the first checkpoint")

    with monkeypatch.context() as m:
        m.setattr(SegmentationModule, "training_step", broken)
        with pytest.raises(RuntimeError, match="simulated"):
            fit(run, "--trainer.max_epochs", "1", "--test_after_fit", "false")
    assert (run / "config.yaml").is_file() and not list(run.glob("checkpoints/*.ckpt"))
    capsys.readouterr()
    assert fit(run, "--trainer.max_epochs", "1", "--test_after_fit", "false", "--resume", "true") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "holds no checkpoint" in lines[0] and "without --resume" in lines[0]
    assert fit(run, "--trainer.max_epochs", "1", "--test_after_fit", "false") == 0
    err = capsys.readouterr().err
    assert "holds no checkpoint" in err and "reusing it" in err, err
    assert (run / "checkpoints" / "last.ckpt").is_file()
