"""Writers shared by the data fault tests (tests/faults/test_data_*.py): tiny data sets laid out as the real ones
ship, built on the writers of the data tests (tests/data/_data_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from _data_helpers import case_image, case_mask, vol_label, write_h5, write_png  # noqa: E402

__all__ = ["split_folders", "kvasir_seg", "acdc_flat", "tiny_fit_args", "case_image", "case_mask", "write_png",
           "write_h5", "vol_label"]


def split_folders(root: Path, n=(4, 2, 2), size=(32, 32)) -> Path:
    """VM-UNet / ISIC layout: root/{train,val,test}/{images,masks}/<case>.png, 0/255 masks."""
    h, w = size
    for split, count in zip(("train", "val", "test"), n):
        for k in range(count):
            write_png(root / split / "images" / f"{split}{k}.png", case_image(k, h, w))
            write_png(root / split / "masks" / f"{split}{k}.png", case_mask(k, h, w) * 255)
    return root


def kvasir_seg(root: Path, n=10, size=(32, 40)) -> Path:
    """Kvasir-SEG as downloaded: Kvasir-SEG/{images,masks}/<id>.jpg (JPEG masks), kavsir_bboxes.json, no splits."""
    from PIL import Image

    h, w = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for k in range(n):
        name = f"cju{k:04d}kvasir"
        Image.fromarray(case_image(k, h, w)).save(root / "images" / f"{name}.jpg", quality=90)
        Image.fromarray(case_mask(k, h, w) * 255).save(root / "masks" / f"{name}.jpg", quality=90)
    (root / "kavsir_bboxes.json").write_text("{}")
    return root


def acdc_flat(root: Path, flat: bool = True) -> Path:
    """SSL4MIS ACDC with the training slices directly in data/ (no data/slices/), beside the volumes; with
    ``flat=False`` as SSL4MIS ships it (data/slices/)."""
    slices = []
    for p in (1, 2, 3, 4):
        case = f"patient{p:03d}_frame01"
        vol = np.random.default_rng(p).random((3, 8, 8)).astype(np.float32)
        write_h5(root / "data" / f"{case}.h5", vol, vol_label(p))
        if p <= 2:
            for z in range(3):
                write_h5(root / "data" / ("" if flat else "slices") / f"{case}_slice_{z}.h5", vol[z], vol_label(p)[z])
                slices.append(f"{case}_slice_{z}")
    (root / "train_slices.list").write_text("\n".join(slices) + "\n")
    (root / "val.list").write_text("patient003_frame01\n")
    (root / "test.list").write_text("patient004_frame01\n")
    return root


def tiny_fit_args(root, dataset="folder", size=32, model="unet", extra=()):
    """A one-epoch CPU fit of a 4-channel U-Net on ``root`` (fails fast when the data check refuses)."""
    return ["--data.dataset", dataset, "--data.root", str(root), "--data.image_size", str(size),
            "--data.batch_size", "2", "--data.eval_batch_size", "2", "--data.transforms", "default",
            "--model.model", model, "--model.model_kwargs", '{"base_channels": 4}',
            "--model.compute_distances", "false",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "1", *extra]
