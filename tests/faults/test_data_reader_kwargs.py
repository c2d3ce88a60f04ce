"""Fault: a typo in ``--data.dataset_kwargs`` / ``--data.split_kwargs``, or a config key that reaches a reader
that does not take it (the demo config's ``size`` reaching the folder reader), ended in a TypeError traceback.
Now: one line naming the keyword, the reader's valid keywords (oracle: the reader's signature) and near
matches; exit 2; nothing written."""

import inspect

import numpy as np
import pytest
from PIL import Image

import mambaseg.engine.run  # noqa: F401  (Lightning's log handlers bind to the session's stderr, not capsys')
from mambaseg.cli.main import main
from mambaseg.data.synthetic import _Synthetic2D

from _ckpt_helpers import TINY, error_lines


def _valid_synthetic():
    return sorted(p for p in inspect.signature(_Synthetic2D.__init__).parameters
                  if p not in ("self", "split", "transform"))


def _set(argv, key, value):
    argv = list(argv)
    argv[argv.index(key) + 1] = value
    return argv


@pytest.mark.parametrize("key,value,where", [
    ("--data.dataset_kwargs", '{"size": 32, "num_sample": 4}', "data.dataset_kwargs"),
    ("--data.split_kwargs", '{"train": {"num_sample": 4}, "val": {"num_samples": 1}, "test": {"num_samples": 1}}',
     "data.split_kwargs.train")])
@pytest.mark.parametrize("command", ["fit", "check"])
def test_reader_keyword_typo_is_one_line(command, key, value, where, tmp_path, capsys):
    run = tmp_path / "run"
    argv = [command, *_set(TINY, key, value)] + (["--run_dir", str(run)] if command == "fit" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1, err
    line = lines[0]
    assert where in line and "'num_sample'" in line and "did you mean 'num_samples'" in line
    assert f"Valid keywords: {', '.join(_valid_synthetic())}" in line
    assert not run.exists()


def test_config_key_meant_for_another_reader_is_one_line(tmp_path, capsys):
    root = tmp_path / "flat"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "masks" / f"c{i}.png")
    run = tmp_path / "run"
    # the demo config's dataset_kwargs (size, num_samples) are the synthetic reader's, not the folder reader's
    rc = main(["fit", "--config", "demo", "--data.dataset", "folder", "--data.root", str(root),
               "--data.split", "[0.5, 0.25, 0.25]", "--run_dir", str(run)])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and "'folder' reader" in lines[0] and "'size'" in lines[0] and "Valid keywords" in lines[0]
    assert not run.exists()


def test_build_dataset_names_the_keyword():
    from mambaseg.data import build_dataset
    with pytest.raises(ValueError, match="takes no keyword 'num_sample'.*did you mean 'num_samples'"):
        build_dataset("synthetic-skin", split="train", num_sample=2)
