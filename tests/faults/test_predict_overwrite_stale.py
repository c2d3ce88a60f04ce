"""Fault: ``a.jpg`` and ``a.png`` in one folder predict to ``a.jpg.png`` and ``a.png.png``; after ``a.jpg`` is
removed, ``predict --overwrite`` wrote ``a.png`` and left the stale ``a.png.png`` beside it (an input's output
name depends on the other inputs). Now the overwrite removes what it replaced: the earlier outputs of each input
it predicts again (masks and overlays), and nothing else."""

import numpy as np
import pytest
from PIL import Image

import mambaseg.engine.run  # noqa: F401  (Lightning's log handlers bind to the session's stderr, not capsys')
from mambaseg.cli.main import main

from _ckpt_helpers import train_one_epoch


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    run = tmp_path_factory.mktemp("ow") / "run"
    train_one_epoch(run)
    return str(run / "checkpoints" / "last.ckpt")


def _listing(out):
    return {sub: sorted(p.name for p in (out / sub).iterdir()) for sub in ("masks", "overlays")}


def test_overwrite_removes_the_outputs_it_replaced(ckpt, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(src / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(src / "b.png")
    out = tmp_path / "preds"
    argv = ["predict", "--ckpt", ckpt, "--input", str(src), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    first = _listing(out)
    assert first["masks"] == ["a.jpg.png", "a.png.png", "b.png"]
    (src / "a.jpg").unlink()
    (out / "masks" / "mine.txt").write_text("a file of the user's")
    assert main(argv + ["--overwrite"]) == 0
    now = _listing(out)
    # a.png's earlier output (a.png.png) is replaced by a.png; a.jpg was not predicted again: its output stays
    assert now["masks"] == ["a.jpg.png", "a.png", "b.png", "mine.txt"]
    assert now["overlays"] == ["a.jpg.png", "a.png", "b.png"]
