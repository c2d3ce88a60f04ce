"""mambaseg.engine.io: plain checkpoints, the trusted-conversion command, atomic writers."""

import argparse
import os
import pathlib

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import AttributeDict

from mambaseg.engine import io as mio


def test_to_plain_makes_lightning_values_loadable_with_weights_only(tmp_path):
    obj = {"hyper_parameters": AttributeDict(model="unet", lr=np.float32(0.5), root=pathlib.Path("/d"),
                                             ns=argparse.Namespace(a=1), tags={"b", "a"}),
           "w": torch.ones(2), "arr": np.arange(3)}
    p = tmp_path / "x.ckpt"
    mio.save_checkpoint(obj, str(p))
    back = torch.load(p, weights_only=True)
    hp = back["hyper_parameters"]
    assert type(hp) is dict and hp["lr"] == 0.5 and hp["root"] == "/d" and hp["ns"] == {"a": 1}
    assert hp["tags"] == ["a", "b"] and torch.equal(back["arr"], torch.arange(3))


def test_convert_trusted_command_makes_a_refused_checkpoint_loadable(tmp_path):
    p, out = tmp_path / "np.ckpt", tmp_path / "np.plain.ckpt"
    torch.save({"state_dict": {"net.w": torch.zeros(1)}, "score": np.float64(0.25),  # neither reads with
                "hyper_parameters": AttributeDict(model="unet")}, p)                  # weights_only=True
    with pytest.raises(mio.UnsafeCheckpointError, match="--convert-trusted"):
        mio.load_checkpoint(str(p))
    assert mio._main(["--convert-trusted", str(p), str(out)]) == 0  # `python -m mambaseg.engine.io ...`
    assert mio._main(["--convert-trusted", str(p), str(out)]) == 2  # never replaces an existing file
    back = mio.load_checkpoint(str(out))
    assert back["score"] == 0.25 and back["hyper_parameters"] == {"model": "unet"}


def test_atomic_path_and_open_leave_nothing_on_error(tmp_path):
    dest = tmp_path / "case.nii.gz"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with mio.atomic_path(str(dest)) as tmp:
            assert tmp.endswith(".nii.gz") and os.path.dirname(tmp) == str(tmp_path)
            pathlib.Path(tmp).write_bytes(b"half")
            raise RuntimeError("writer crashed")
    with pytest.raises(RuntimeError):
        with mio.atomic_open(str(dest), "wb") as f:
            f.write(b"half")
            raise RuntimeError("writer crashed")
    assert dest.read_bytes() == b"old" and os.listdir(tmp_path) == ["case.nii.gz"]
    with mio.atomic_open(str(dest), "wb") as f:
        f.write(b"new")
    assert dest.read_bytes() == b"new" and os.listdir(tmp_path) == ["case.nii.gz"]
