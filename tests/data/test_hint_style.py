"""Fix hints follow the caller: Python keywords from the library, flags from the ``mambaseg`` command."""

import numpy as np
import pytest

from _data_helpers import case_image, write_png
from mambaseg.data.hints import hint_style, option, reader_arg


def test_reader_and_option_hints_in_both_styles():
    assert reader_arg("mask_threshold", 128) == "mask_threshold=128"
    assert option("data.image_size", 256) == "image_size=256"
    with hint_style("cli"):
        assert reader_arg("mask_threshold", 128) == "--data.dataset_kwargs '{\"mask_threshold\": 128}'"
        assert reader_arg("strict", False) == "--data.dataset_kwargs '{\"strict\": false}'"
        assert option("data.image_size", 256) == "--data.image_size 256"
        assert option("data.split", [0.8, 0.1, 0.1]) == "--data.split '[0.8, 0.1, 0.1]'"
    assert reader_arg("num_classes", 3) == "num_classes=3"  # restored after the block


def test_python_callers_keep_keyword_hints(tmp_path):
    from mambaseg.data import DataError, build_dataset

    for k in range(2):
        write_png(tmp_path / "images" / f"c{k}.png", case_image(k, 32, 32))
        write_png(tmp_path / "masks" / f"c{k}.png", np.tile(np.arange(3, dtype=np.uint8), (32, 11))[:, :32])
    with pytest.raises(DataError, match=r"pass num_classes=3 or a label_map"):
        build_dataset("folder", str(tmp_path), "all")[1]
