"""Fault tests (issue 14): fix hints are in the syntax the user typed. On the command line they are flags that
work when pasted back (each test reruns the command with the hinted flag); from Python they stay keywords."""

from __future__ import annotations

import re

import numpy as np

from _data_fault_helpers import split_folders, tiny_fit_args, write_png
from mambaseg.cli.main import main


def _hinted_kwargs(err: str, key: str = "") -> str:
    found = [h for h in re.findall(r"--data\.dataset_kwargs '([^']+)'", err) if key in h]
    assert found, err
    return found[0]


def _check(root, *extra):
    return main(["check", *tiny_fit_args(root, extra=("--data.val_split", "val", *extra))])


def test_lossy_mask_hint_is_a_working_cli_flag(tmp_path, capsys):
    root = split_folders(tmp_path / "data")
    blurred = np.where(np.arange(32 * 32).reshape(32, 32) % 7 == 0, 250, 3).astype(np.uint8)
    blurred[0, :8] = np.arange(8) * 30  # values a JPEG-like mask holds
    write_png(root / "train" / "masks" / "train1.png", blurred)
    assert _check(root) == 2
    err = capsys.readouterr().err
    assert "mask_threshold=128" not in err
    assert _hinted_kwargs(err, "mask_threshold") == '{"mask_threshold": 128}'
    assert _check(root, "--data.dataset_kwargs", _hinted_kwargs(err, "mask_threshold")) == 0


def test_multiclass_mask_hint_is_a_working_cli_flag(tmp_path, capsys):
    root = split_folders(tmp_path / "data")
    for m in root.glob("*/masks/*.png"):  # class-index masks 0, 1, 2
        write_png(m, np.tile(np.arange(3, dtype=np.uint8), (32, 11))[:, :32])
    assert _check(root) == 2
    err = capsys.readouterr().err
    assert "num_classes=3" not in err and _hinted_kwargs(err) == '{"num_classes": 3}'
    assert _check(root, "--data.dataset_kwargs", _hinted_kwargs(err)) == 0


def test_colour_mask_hint_is_a_working_cli_flag(tmp_path, capsys):
    root = split_folders(tmp_path / "data", n=(2, 1, 1))
    for split, name in (("train", "train0"), ("train", "train1"), ("val", "val0"), ("test", "test0")):
        rgb = np.zeros((32, 32, 3), np.uint8)
        rgb[4:9, 4:9] = (255, 0, 0)
        write_png(root / split / "masks" / f"{name}.png", rgb)
    assert _check(root) == 2
    err = capsys.readouterr().err
    assert "label_map={" not in err
    hinted = _hinted_kwargs(err)
    assert hinted == '{"label_map": {"0,0,0": 0, "255,0,0": 1}}'
    assert _check(root, "--data.dataset_kwargs", hinted) == 0


def test_engine_hints_name_cli_flags(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["fit", *tiny_fit_args(missing), "--run_dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "set --data.root FOLDER" in err and "data.root to" not in err
