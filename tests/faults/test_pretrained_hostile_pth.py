"""Fault: the error for a hostile pretrained ``.pth`` (a pickle that calls ``os.system``) suggested
``torch.load(p, weights_only=False)`` for that very file. Now one line points to the trusted-conversion tool
(``python -m mambaseg.engine.io --convert-trusted``); nothing runs."""

import os

import torch

import mambaseg.engine.run  # noqa: F401  (Lightning's log handlers bind to the session's stderr, not capsys')
from mambaseg.cli.main import main

from _ckpt_helpers import TINY, Hostile, error_lines


def test_hostile_pretrained_pth_points_to_the_conversion_tool(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "weights.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": Hostile(marker)}, evil)
    run = tmp_path / "run"
    argv = ["fit", *TINY, "--model.pretrained", str(evil), "--run_dir", str(run), "--trainer.max_epochs", "1",
            "--model.model", "vmunet", "--model.model_kwargs", '{"embed_dim": 8, "depths": [1, 1, 1, 1]}']
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert "weights_only=False" not in lines[0]
    assert f"python -m mambaseg.engine.io --convert-trusted {evil}" in lines[0]
    assert "posix.system" in lines[0] or "os.system" in lines[0]
    assert not marker.exists() and not os.path.exists(run)
