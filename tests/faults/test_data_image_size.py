"""Fault tests (issue 14): an image size the model cannot take is refused before the run directory is made, with
the nearest valid sizes in the flag syntax."""

from __future__ import annotations

import pytest

from _data_fault_helpers import split_folders, tiny_fit_args
from mambaseg.cli.main import main


@pytest.mark.parametrize("size, near", [(40, "--data.image_size 32 or --data.image_size 48"),
                                        (250, "--data.image_size 256 or --data.image_size 240")])
def test_image_size_not_divisible_is_refused_with_nearest_sizes(tmp_path, capsys, size, near):
    root = split_folders(tmp_path / "data")
    run = tmp_path / "run"
    args = tiny_fit_args(root, size=size, extra=("--data.val_split", "val"))
    assert main(["fit", *args, "--run_dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"image size {size} does not fit unet" in err and "multiples of 16" in err and near in err
    assert not run.exists()


@pytest.mark.parametrize("size", [0, -32])
def test_image_size_zero_or_negative_is_refused(tmp_path, capsys, size):
    root = split_folders(tmp_path / "data")
    run = tmp_path / "run"
    args = tiny_fit_args(root, size=size, extra=("--data.val_split", "val"))
    assert main(["fit", *args, "--run_dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"image size {size} is not a positive integer" in err and "--data.image_size 256" in err
    assert not run.exists()


def test_image_size_not_divisible_by_32_is_refused_for_mamba_models():
    from mambaseg.engine.errors import MambasegUserError
    from mambaseg.engine.module import check_image_size
    from mambaseg.models.networks.vmunet import VMUNet

    with pytest.raises(MambasegUserError, match=r"multiples of 32.*nearest valid sizes: image_size=256 or "
                                                r"image_size=224"):
        check_image_size(250, VMUNet.downsample_factor, "vmunet")
    check_image_size(224, VMUNet.downsample_factor, "vmunet")
    for name in ("vmunet_v2", "mamba_unet", "hmt_unet"):
        from mambaseg.models.registry import model_info
        import torch
        with torch.device("meta"):
            net = model_info(name).factory(in_channels=3, num_classes=1)
        assert net.downsample_factor == 32, name
