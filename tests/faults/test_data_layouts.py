"""Fault tests (issue 14): data laid out as seen in the wild. SSL4MIS ACDC copies with the slice files directly
in data/, and Kvasir-SEG as downloaded (images/, masks/, JPEG masks, no split files)."""

from __future__ import annotations

import json

import numpy as np

from _data_fault_helpers import acdc_flat, kvasir_seg, tiny_fit_args, vol_label
from mambaseg.cli.main import main


def test_acdc_slices_directly_in_data_folder_load(tmp_path, capsys):
    from mambaseg.data import build_dataset

    root = acdc_flat(tmp_path / "ACDC")
    ds = build_dataset("acdc", str(root), "train")
    assert len(ds) == 6 and ds.case_ids()[4] == "patient002_frame01_slice_1"
    assert np.array_equal(ds[4]["mask"].numpy(), vol_label(2)[1])
    args = tiny_fit_args(root, dataset="acdc", extra=("--data.val_split", "val", "--data.transforms",
                                                      "mamba_unet_acdc"))
    assert main(["check", *args]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "6 samples" in out and "classes present {0, 1, 2, 3}" in out


def test_acdc_missing_slices_names_both_places(tmp_path):
    import pytest

    from mambaseg.data import MissingDataError, build_dataset

    root = acdc_flat(tmp_path / "ACDC")
    (root / "data" / "patient001_frame01_slice_0.h5").unlink()
    with pytest.raises(MissingDataError, match=r"1 of the 6 slice file\(s\).*data/slices/ or directly in data/"):
        build_dataset("acdc", str(root), "train")


def test_kvasir_seg_missing_test_split_names_the_split_flag(tmp_path, capsys):
    root = kvasir_seg(tmp_path / "Kvasir-SEG")
    run = tmp_path / "run"
    assert main(["fit", *tiny_fit_args(root), "--run_dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "flat images/ + masks/ folder" in err and "--data.split '[0.8, 0.1, 0.1]'" in err
    assert not run.exists()


def test_kvasir_seg_split_flag_trains_and_saves_the_split(tmp_path, capsys):
    from mambaseg.data.splits import ratio_split

    root = kvasir_seg(tmp_path / "Kvasir-SEG")
    run = tmp_path / "run"
    flags = ("--data.split", "[0.6, 0.2, 0.2]", "--data.seed", "7")
    assert main(["check", *tiny_fit_args(root, extra=flags)]) == 0
    out = capsys.readouterr().out
    assert [ln.split()[:2] for ln in out.splitlines()[1:4]] == [["train", "6"], ["val", "2"], ["test", "2"]]
    assert main(["fit", *tiny_fit_args(root, extra=flags), "--run_dir", str(run)]) == 0
    saved = json.loads((run / "split.json").read_text())
    ids = sorted(p.stem for p in (root / "images").glob("*.jpg"))
    expect = ratio_split(ids, (0.6, 0.2, 0.2), seed=7)  # the seeded split, computed independently
    assert {k: sorted(saved[k]) for k in ("train", "val", "test")} == {k: sorted(v) for k, v in expect.items()}
    assert (run / "test" / "summary.json").is_file()  # the test split was evaluated after training


def test_bad_test_volume_is_found_before_training(tmp_path, capsys):
    from _data_fault_helpers import write_h5

    root = acdc_flat(tmp_path / "ACDC", flat=False)
    write_h5(root / "data" / "patient004_frame01.h5", np.zeros((3, 8, 8), np.float32), vol_label(4, num_classes=6))
    write_h5(root / "data" / "patient003_frame01.h5", np.zeros((3, 8, 9), np.float32), vol_label(3))
    run = tmp_path / "run"
    args = tiny_fit_args(root, dataset="acdc", extra=("--data.val_split", "val", "--data.transforms",
                                                      "mamba_unet_acdc"))
    assert main(["fit", *args, "--run_dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "test: volume 'patient004_frame01': label values [4, 5] are outside the label set 0..3" in err
    assert "val:" in err and "patient003_frame01.h5: image shape (3, 8, 9) differs from label shape (3, 8, 8)" in err
    assert not run.exists()
