"""Fault: a fit with ``--data.split`` ratios that died before its first checkpoint could not be restarted: the
rerun said the folder "already holds files (..., split.json) but no mambaseg run". Now ``split.json`` counts as
a file a fit writes before its first checkpoint: the same command starts the run over in that folder."""

import numpy as np
import pytest
from PIL import Image

from mambaseg.engine.module import SegmentationModule

from _ckpt_helpers import TINY, error_lines
import mambaseg.engine.run  # noqa: F401  (Lightning's log handlers bind to the session's stderr, not capsys')
from mambaseg.cli.main import main


def _folder(root, n=6):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"c{i}.png")
        m = np.zeros((32, 32), np.uint8)
        m[8:20, 8:20] = 255
        Image.fromarray(m).save(root / "masks" / f"c{i}.png")


def _argv(root, run):
    tiny = list(TINY)
    i = tiny.index("--data.dataset")
    del tiny[i:i + 2]
    i = tiny.index("--data.dataset_kwargs")
    del tiny[i:i + 2]
    i = tiny.index("--data.split_kwargs")
    del tiny[i:i + 2]
    i = tiny.index("--data.val_split")
    del tiny[i:i + 2]
    return ["fit", *tiny, "--data.dataset", "folder", "--data.root", str(root), "--data.split", "[0.5, 0.25, 0.25]",
            "--run_dir", str(run), "--trainer.max_epochs", "1", "--test_after_fit", "false"]


def test_fit_with_split_that_died_before_first_checkpoint_restarts(tmp_path, monkeypatch, capsys):
    root, run = tmp_path / "data", tmp_path / "run"
    _folder(root)

    def broken(self, batch, batch_idx):
        raise RuntimeError("simulated failure before the first checkpoint")

    with monkeypatch.context() as m:
        m.setattr(SegmentationModule, "training_step", broken)
        with pytest.raises(RuntimeError, match="simulated"):
            main(_argv(root, run))
    assert (run / "split.json").is_file() and not list(run.glob("checkpoints/*.ckpt"))
    capsys.readouterr()
    rc = main(_argv(root, run))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert not error_lines(err) and "reusing it" in err
    assert (run / "checkpoints" / "last.ckpt").is_file()
