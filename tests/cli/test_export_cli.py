"""``mambaseg export`` (folder and ONNX) on a tiny trained checkpoint, and ``predict`` from a folder."""

import json
import os

import numpy as np
import pytest
import torch

from mambaseg.cli.main import main

from test_cli import TINY  # noqa: F401  (same tiny training recipe)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "run"
    assert main(["fit", *TINY, "--run_dir", str(run)]) == 0          # with the test pass: summary.json
    return run


def test_folder_export_card_and_predict_equal_the_checkpoint(trained, tmp_path, capsys):
    ckpt = str(trained / "checkpoints" / "best.ckpt")
    folder = tmp_path / "folder"
    assert main(["export", "--ckpt", ckpt, "--format", "folder", "--out", str(folder)]) == 0
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "unet" and cfg["class_names"] == ["background", "lesion"]
    assert cfg["preprocessing"] == {"preset": "default", "image_size": 32} and cfg["input_size"] == [32, 32]
    card = (folder / "README.md").read_text()
    for needle in ("synthetic-skin", "Aggregation `pooled`", "HD95 mode `medpy`", "dice/lesion", "mambaseg fit --config"):
        assert needle in card, needle
    # the folder reproduces the checkpoint's network exactly
    from mambaseg.export import network_from_checkpoint, read_training_checkpoint
    from mambaseg.models import from_pretrained
    net = network_from_checkpoint(read_training_checkpoint(ckpt))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(from_pretrained(folder)(x), net(x))
    # predict: same masks from the folder as from the checkpoint (same preprocessing)
    from PIL import Image
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(src / f"im{i}.png")
    assert main(["predict", "--ckpt", ckpt, "--input", str(src), "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert main(["predict", "--ckpt", str(folder), "--input", str(src), "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 0
    for i in range(2):
        a = np.asarray(Image.open(tmp_path / "a" / "masks" / f"im{i}.png"))
        b = np.asarray(Image.open(tmp_path / "b" / "masks" / f"im{i}.png"))
        assert a.shape == (40, 48) and np.array_equal(a, b)
    # nothing is overwritten
    assert main(["export", "--ckpt", ckpt, "--format", "folder", "--out", str(folder)]) == 2
    assert "exists" in capsys.readouterr().err


def test_onnx_export_from_checkpoint_and_bad_input(trained, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    ckpt = str(trained / "checkpoints" / "best.ckpt")
    out = tmp_path / "m.onnx"
    assert main(["export", "--ckpt", ckpt, "--out", str(out), "--size", "48", "--check"]) == 0
    text = capsys.readouterr().out
    assert "input (batch, 3, 48, 48)" in text and "difference" in text
    from mambaseg.export import onnx_session
    sess = onnx_session(out)
    assert sess.get_inputs()[0].shape[0] == "batch" and sess.get_inputs()[0].shape[1:] == [3, 48, 48]
    before = out.read_bytes()
    assert main(["export", "--ckpt", ckpt, "--out", str(out)]) == 2               # no overwrite
    assert out.read_bytes() == before
    assert main(["export", "--ckpt", ckpt, "--out", str(tmp_path / "x.onnx"), "--size", "30"]) == 2
    err = capsys.readouterr().err
    assert "cannot export at input 3x30x30" in err and not (tmp_path / "x.onnx").exists()
    assert main(["export", "--ckpt", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "y.onnx")]) == 2
