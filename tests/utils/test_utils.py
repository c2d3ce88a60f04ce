"""mambaseg.utils (the bottom layer): JSON-able values, per-axis sizes, did-you-mean, durable writes."""

import json
import math
import os

import numpy as np
import pytest
import torch

from mambaseg.utils import DiskFullError, MambasegUserError, atomic_open, atomic_write_text, near_matches
from mambaseg.utils.convert import as_size, to_jsonable


def test_to_jsonable_hand_cases():
    v = {1: np.float32(0.5), "a": (np.int64(3), float("nan")), "t": torch.tensor([1.0, float("inf")]),
         "arr": np.array([[1, 2]]), "s": "x", "n": None}
    out = to_jsonable(v)
    assert out == {"1": 0.5, "a": [3, None], "t": [1.0, None], "arr": [[1, 2]], "s": "x", "n": None}
    json.dumps(out, allow_nan=False)  # writes as strict JSON
    assert to_jsonable([float("-inf"), float("inf"), math.nan], inf_as_str=True) == ["-inf", "inf", None]


def test_as_size():
    assert as_size(64) == (64, 64) and as_size(np.int64(8), 3) == (8, 8, 8)
    assert as_size([64, 128]) == (64, 128) and as_size(None) is None
    with pytest.raises(ValueError, match="2 entries; give one int or 3"):
        as_size((64, 128), 3)


def test_near_matches_wording():
    assert near_matches("vmunt", ["vmunet", "unet", "swin_unet"]) == "; did you mean 'vmunet', 'unet'?"
    assert near_matches("zzz", ["vmunet"]) == ""
    assert issubclass(DiskFullError, MambasegUserError) and issubclass(MambasegUserError, ValueError)


def test_atomic_open_writes_all_or_nothing(tmp_path):
    p = tmp_path / "a.csv"
    atomic_write_text(str(p), "old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(str(p), "w") as f:
            f.write("new\n")
            raise RuntimeError("crash mid-write")
    assert p.read_text() == "old\n" and os.listdir(tmp_path) == ["a.csv"]  # no temporary left
    with atomic_open(str(p), "w", newline="") as f:
        f.write("new\n")
    assert p.read_text() == "new\n"
