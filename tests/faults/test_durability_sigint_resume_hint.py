"""Fault: Ctrl-C stopped fit gracefully but did not say how to continue. Now it prints the exact command that
resumes the run, and that command works."""

import shlex
import signal

from mambaseg.cli.main import main
from mambaseg.engine.module import SegmentationModule

from _ckpt_helpers import TINY


def test_durability_sigint_prints_the_exact_resume_command(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real = SegmentationModule.training_step

    def ctrl_c_in_second_epoch(self, batch, batch_idx):
        if self.global_step == 3:
            raise KeyboardInterrupt  # what SIGINT raises in the main thread
        return real(self, batch, batch_idx)

    handler = signal.getsignal(signal.SIGINT)
    try:
        with monkeypatch.context() as m:
            m.setattr(SegmentationModule, "training_step", ctrl_c_in_second_epoch)
            rc = main(["fit", *TINY, "--run_dir", str(run), "--trainer.max_epochs", "3", "--test_after_fit", "false"])
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a graceful stop
    err = capsys.readouterr().err
    assert rc != 0
    assert "Resume with:" in err, err
    command = err.split("Resume with:", 1)[1].strip().splitlines()[0]
    argv = shlex.split(command)
    assert argv[:2] == ["mambaseg", "fit"] and argv[-4:] == ["--run_dir", str(run), "--resume", "true"]
    assert main(argv[1:]) == 0  # the printed command resumes the run
    assert "resume-" in " ".join(p.name for p in run.iterdir())
