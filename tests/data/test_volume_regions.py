"""Reader keyword ``regions``: per-case folders (BraTS read with ``channels=`` in another order) declare the regions
WT / TC / ET as raw label values; they become class indices, names and nnU-Net's regions_class_order."""

from __future__ import annotations

import pytest

from _volume_fixtures import brats2020, brats2023
from mambaseg.data.base import DataError
from mambaseg.data.volumes import read_volume_set


def test_case_folders_declare_regions_in_raw_values(tmp_path):
    root = brats2023(tmp_path / "b23", n=2)
    plain = read_volume_set(root, channels=["t2w", "t2f", "t1n", "t1c"], label="seg")
    assert plain.layout == "folders" and plain.regions is None  # case folders declare none of their own
    vs = read_volume_set(root, channels=["t2w", "t2f", "t1n", "t1c"], label="seg",
                         labels={"background": 0, "NCR": 1, "SNFH": 2, "ET": 3},
                         regions={"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]})
    assert vs.regions == [[1, 2, 3], [1, 3], [3]] and vs.region_names == ["WT", "TC", "ET"]
    # regions_class_order by hand: WT's own class (not in TC, ET) is 2 (oedema), TC's is 1, ET's is 3
    assert vs.regions_class_order == [2, 1, 3]


def test_raw_values_map_to_class_indices_and_bad_values_are_refused(tmp_path):
    root = brats2020(tmp_path / "b20", n=2)  # labels 0/1/2/4 -> class indices 0/1/2/3
    vs = read_volume_set(root, channels=["flair", "t1", "t1ce", "t2"], label="seg",
                         regions={"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]})
    assert vs.label_values == [0, 1, 2, 4] and vs.regions == [[1, 2, 3], [1, 3], [3]]
    with pytest.raises(DataError, match="region 'ET' lists \\[3\\]"):  # 3 is no label value of BraTS 2020
        read_volume_set(root, channels=["flair", "t1", "t1ce", "t2"], label="seg", regions={"WT": [1, 2, 4],
                                                                                           "ET": [3]})
    with pytest.raises(DataError, match="map a name to raw label values"):
        read_volume_set(root, channels=["flair", "t1", "t1ce", "t2"], label="seg", regions=[[1, 2, 4]])
    overlap = read_volume_set(root, channels=["flair"], label="seg", regions={"A": [1, 2], "B": [1, 2]})
    assert overlap.regions == [[1, 2], [1, 2]] and overlap.regions_class_order is None  # no one class of its own
