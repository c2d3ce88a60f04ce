"""Fault tests (issue 14, "every data problem before the first step"): the data check fit runs before training
and ``mambaseg check``. Each test is named after the fault it injects."""

from __future__ import annotations

import numpy as np
import pytest

from _data_fault_helpers import case_image, case_mask, split_folders, tiny_fit_args, write_png
from mambaseg.cli.main import main


def _fit(root, run, *extra):
    return main(["fit", *tiny_fit_args(root, extra=("--data.val_split", "val", *extra)), "--run_dir", str(run)])


def test_corrupt_image_in_test_split_is_found_before_training(tmp_path, capsys):
    root = split_folders(tmp_path / "data")
    (root / "test" / "images" / "test1.png").write_bytes(b"not a png")
    run = tmp_path / "run"
    assert _fit(root, run) == 2
    err = capsys.readouterr().err
    assert "test: cannot read image file" in err and "test1.png" in err
    assert not run.exists()  # nothing written: no config.yaml, hparams.yaml, run.json, checkpoints


def test_every_bad_file_is_listed_at_once(tmp_path, capsys):
    root = split_folders(tmp_path / "data", n=(5, 2, 2))
    (root / "train" / "images" / "train0.png").write_bytes(b"")                       # empty file
    (root / "train" / "images" / "train1.png").write_bytes(b"\x89PNG\r\n\x1a\nxx")     # broken PNG
    write_png(root / "train" / "masks" / "train2.png", case_mask(2, 16, 32) * 255)    # mask size differs
    write_png(root / "val" / "masks" / "val0.png", np.full((32, 32), 7, np.uint8))     # value 7 in a binary set
    (root / "test" / "images" / "test1.png").write_bytes(b"junk")                     # test split too
    run = tmp_path / "run"
    assert _fit(root, run) == 2
    err = capsys.readouterr().err
    assert "5 problem(s)" in err
    for needle in ("train0.png is empty", "train1.png (corrupt", "train2.png is 16x32", "values [7]",
                   "test1.png"):
        assert needle in err, needle
    assert not run.exists()


def test_truncated_image_files_fail_the_header_check(tmp_path):
    from PIL import Image

    from mambaseg.data.base import DataError
    from mambaseg.data.check import image_header

    jpg, png = tmp_path / "a.jpg", tmp_path / "b.png"
    Image.fromarray(case_image(1, 64, 64)).save(jpg, quality=90)
    write_png(png, case_image(2, 64, 64))
    assert image_header(jpg) == (64, 64) and image_header(png) == (64, 64)
    jpg.write_bytes(jpg.read_bytes()[:-200])  # a download cut short: PIL still opens it and reports its size
    png.write_bytes(png.read_bytes()[:-200])
    with Image.open(jpg) as im:
        assert im.size == (64, 64)
    for p in (jpg, png):
        with pytest.raises(DataError, match=p.name):
            image_header(p)
    with pytest.raises(DataError, match="a.jpg"):
        image_header(jpg, full=True)


def test_missing_test_split_is_found_before_training(tmp_path, capsys):
    root = split_folders(tmp_path / "data", n=(4, 2, 0))
    run = tmp_path / "run"
    assert _fit(root, run) == 2
    err = capsys.readouterr().err
    assert "test" in err and "no images folder" in err
    assert not run.exists()


def test_mask_values_outside_the_task_are_found_before_training(tmp_path, capsys):
    root = split_folders(tmp_path / "data")
    write_png(root / "test" / "masks" / "test0.png", (np.arange(32 * 32) % 200).astype(np.uint8).reshape(32, 32))
    run = tmp_path / "run"
    assert _fit(root, run) == 2
    err = capsys.readouterr().err
    assert "test: mask" in err and "test0.png" in err and "binary mask expected" in err
    assert not run.exists()


def test_image_without_mask_is_found_before_training(tmp_path, capsys):
    root = split_folders(tmp_path / "data")
    write_png(root / "val" / "images" / "orphan.png", case_image(9, 32, 32))
    run = tmp_path / "run"
    assert _fit(root, run) == 2
    err = capsys.readouterr().err
    assert "val:" in err and "orphan.png" in err and "have no mask" in err
    assert not run.exists()


def test_check_command_reports_each_split(tmp_path, capsys):
    root = split_folders(tmp_path / "data", n=(4, 2, 3))
    args = tiny_fit_args(root, extra=("--data.val_split", "val"))
    assert main(["check", *args]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines()[1:] if ln.startswith("  ")}
    assert set(lines) == {"train", "val", "test"}
    assert "4 samples" in lines["train"] and "2 samples" in lines["val"] and "3 samples" in lines["test"]
    assert all("sizes 32x32" in ln and "classes present {0, 1}" in ln and ln.endswith("ok") for ln in lines.values())
    assert not (tmp_path / "runs").exists()


def test_check_command_exits_2_with_every_problem(tmp_path, capsys):
    root = split_folders(tmp_path / "data")
    (root / "train" / "images" / "train3.png").write_bytes(b"")
    (root / "test" / "images" / "test0.png").write_bytes(b"")
    assert main(["check", *tiny_fit_args(root, extra=("--data.val_split", "val", "--data.check", "full"))]) == 2
    cap = capsys.readouterr()
    assert "data check (full)" in cap.out and "1 problem(s)" in cap.out
    assert "train: cannot read image file" in cap.err and "train3.png" in cap.err and "test0.png" in cap.err


def test_unknown_check_mode_is_refused(tmp_path, capsys):
    root = split_folders(tmp_path / "data")
    assert main(["check", *tiny_fit_args(root, extra=("--data.check", "fulll"))]) == 2
    assert "did you mean 'full'" in capsys.readouterr().err


def test_unpaired_files_do_not_hide_the_other_bad_files(tmp_path, capsys):
    root = split_folders(tmp_path / "data")
    for k in range(7):  # more orphans than the old five-name list showed
        write_png(root / "train" / "images" / f"orphan{k}.png", case_image(k, 32, 32))
    (root / "train" / "images" / "train2.png").write_bytes(b"")
    run = tmp_path / "run"
    assert _fit(root, run) == 2
    err = capsys.readouterr().err
    assert "7 image(s)" in err and all(f"orphan{k}.png" in err for k in range(7))
    assert "train2.png is empty" in err
    assert not run.exists()
