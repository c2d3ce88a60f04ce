"""Fault: a Lightning checkpoint from another program, a text file or an empty file named .ckpt gave a traceback
or an unclear line. Now: one line naming what the file is, exit 2, nothing written (predict and test)."""

import numpy as np
import pytest
import torch
from PIL import Image

from mambaseg.cli.main import main

from _ckpt_helpers import TINY, error_lines


def _make(kind, path):
    if kind == "other_program":  # a LightningModule of someone else's project: plain data, but not ours
        torch.save({"epoch": 3, "global_step": 30, "pytorch-lightning_version": "2.6.6",
                    "state_dict": {"encoder.conv.weight": torch.zeros(4, 3, 3, 3)},
                    "hyper_parameters": {"lr": 0.1, "hidden": 64}, "hparams_name": "kwargs"}, path)
    elif kind == "text":
        path.write_text("model: unet\nthis is not a checkpoint\n")
    else:
        path.write_bytes(b"")


EXPECT = {"other_program": "another program", "text": "text file", "empty": "empty file"}


@pytest.mark.parametrize("kind", ["other_program", "text", "empty"])
def test_ckpt_foreign_file_gives_one_line(kind, tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    _make(kind, ckpt)
    src = tmp_path / "images"
    src.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src / "a.png")
    for argv in (["predict", "--ckpt", str(ckpt), "--input", str(src), "--out", str(tmp_path / "preds"),
                  "--no-progress"],
                 ["test", *TINY, "--ckpt_path", str(ckpt), "--run_dir", str(tmp_path / "eval")]):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, (argv[0], err)
        lines = error_lines(err)
        assert len(lines) == 1 and EXPECT[kind] in lines[0], (argv[0], err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "model.ckpt"]  # nothing written
