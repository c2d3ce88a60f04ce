"""Fixtures of the data tests (writers live in _data_helpers.py)."""

import pytest

from _data_helpers import case_image, case_mask, write_png


@pytest.fixture
def pair_folder():
    """Write ``images/<name>.png`` + ``masks/<mask name>`` for the given (image name, mask name, k) triples."""

    def make(root, triples, mask_scale=255, image_ext=".png"):
        for img_name, mask_name, k in triples:
            write_png(root / "images" / (img_name + image_ext), case_image(k))
            if mask_name is not None:
                write_png(root / "masks" / mask_name, case_mask(k) * mask_scale)
        return root

    return make
