"""Fault: NaN / inf in a float image (32-bit TIFF) passed ``check full``; training then died with a 90-line
traceback whose hint was "lower the learning rate", validation logged ``val/loss = nan`` and ``predict`` wrote an
all-zero mask. Now ``check`` (header and full) names each such file, ``fit`` refuses the data before training,
``predict`` skips the file into ``errors.txt`` with exit 3. A non-finite loss during training stops with one line
naming the step, the batch's files and whether the input, the output or the loss was non-finite."""

import numpy as np
import pytest
import torch
from PIL import Image

import mambaseg.engine.run  # noqa: F401  (Lightning's log handlers bind to the session's stderr, not capsys')
from mambaseg.cli.main import main
from mambaseg.engine.module import SegmentationModule

from _ckpt_helpers import TINY, error_lines, train_one_epoch
from _data_fault_helpers import case_image, case_mask, tiny_fit_args, write_png


def _float_tiff(path, k, poison=None):
    img = case_image(k, 32, 32)[..., 0].astype(np.float32) / 255.0
    if poison is not None:
        img[3, 4] = poison
        img[10, 10] = poison
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img, mode="F").save(path)


def _tiff_folders(root, poisoned):
    """{train,val,test}/{images,masks}: float32 TIFF images, PNG masks; ``poisoned``: {name: value}."""
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for k in range(n):
            name = f"{split}{k}"
            _float_tiff(root / split / "images" / f"{name}.tif", k, poisoned.get(name))
            write_png(root / split / "masks" / f"{name}.png", case_mask(k, 32, 32) * 255)
    return root


def test_nonfinite_summary_counts_each_kind():
    from mambaseg.data.base import nonfinite_summary
    a = np.zeros((4, 4), np.float32)
    assert nonfinite_summary(a) is None and nonfinite_summary(np.arange(4)) is None
    a[0, 0], a[1, 1], a[2, 2] = np.nan, np.inf, -np.inf
    a[3, 3] = np.nan
    assert nonfinite_summary(a) == "2 NaN, 1 +inf, 1 -inf of 16 values"
    assert nonfinite_summary(torch.from_numpy(a)) == "2 NaN, 1 +inf, 1 -inf of 16 values"


@pytest.mark.parametrize("mode", ["header", "full"])
def test_check_names_every_file_with_nonfinite_values(mode, tmp_path, capsys):
    root = _tiff_folders(tmp_path / "d", {"train1": np.nan, "test0": np.inf})
    rc = main(["check", *tiny_fit_args(root, extra=["--data.check", mode])])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    bad = [ln for ln in err.splitlines() if "non-finite" in ln]
    assert len(bad) == 2, err
    assert any("train1.tif" in ln and "2 NaN" in ln for ln in bad)
    assert any("test0.tif" in ln and "2 +inf" in ln for ln in bad)


def test_fit_refuses_nonfinite_images_before_training(tmp_path, capsys):
    root = _tiff_folders(tmp_path / "d", {"train2": -np.inf})
    run = tmp_path / "run"
    rc = main(["fit", *tiny_fit_args(root), "--run_dir", str(run)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and "train2.tif" in err and "non-finite" in err
    assert not run.exists()


def test_predict_skips_nonfinite_images_into_errors_txt(tmp_path, capsys):
    run = tmp_path / "run"
    train_one_epoch(run)
    src = tmp_path / "in"
    _float_tiff(src / "bad.tif", 0, np.nan)
    Image.fromarray(case_image(1, 32, 32)).save(src / "good.png")
    capsys.readouterr()
    out = tmp_path / "preds"
    rc = main(["predict", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--input", str(src), "--out", str(out),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "Traceback" not in err
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["good.png"]  # no all-zero mask for bad.tif
    errors = (out / "errors.txt").read_text()
    assert "bad.tif" in errors and "non-finite" in errors and "good" not in errors


def _poison_input(self, batch, dataloader_idx):
    if self.training:
        batch["image"][1, 0, 2, 3] = float("nan")
    return batch


def _nan_loss(self, logits, mask):
    return logits.sum() * float("nan")


def _patch_output(monkeypatch):
    from mambaseg.models.networks.unet import UNet
    orig = UNet.forward
    monkeypatch.setattr(UNet, "forward", lambda self, x: orig(self, x) * float("inf"))


@pytest.mark.parametrize("what,patch", [("INPUT", ("on_before_batch_transfer", _poison_input)),
                                        ("OUTPUT", None), ("LOSS", ("_loss", _nan_loss))])
def test_nonfinite_loss_stops_with_one_line(what, patch, tmp_path, monkeypatch, capsys):
    if patch is None:
        _patch_output(monkeypatch)
    else:
        monkeypatch.setattr(SegmentationModule, *patch)
    run = tmp_path / "run"
    rc = main(["fit", *TINY, "--run_dir", str(run), "--trainer.max_epochs", "1", "--test_after_fit", "false",
               "--data.check", "none"])
    err = capsys.readouterr().err
    assert rc == 1, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    line = lines[0]
    assert "step 0" in line and f"{what} is non-finite" in line
    assert "synthetic" in line or "train" in line  # the batch's case ids (synthetic data have no files)
    if what == "INPUT":
        assert "1 NaN" in line and "learning rate" not in line


def test_check_names_nonfinite_h5_slices_and_volumes(tmp_path, capsys):
    # the other float formats: ACDC h5 training slices (checked as read) and h5 volumes (full mode)
    from _data_fault_helpers import acdc_flat, write_h5
    import h5py
    root = acdc_flat(tmp_path / "acdc")
    for name in ("patient001_frame01_slice_1", "patient004_frame01"):
        path = root / "data" / f"{name}.h5"
        with h5py.File(path) as f:
            image, label = np.array(f["image"]), np.array(f["label"])
        image[..., 0, 0] = np.nan
        write_h5(path, image, label)
    rc = main(["check", *tiny_fit_args(root, dataset="acdc", size=16, extra=["--data.check", "full"])])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    bad = [ln for ln in err.splitlines() if "non-finite" in ln]
    assert any("patient001_frame01_slice_1" in ln for ln in bad), err
    assert any("patient004_frame01" in ln and "3 NaN" in ln for ln in bad), err  # 3 slices, one NaN each
