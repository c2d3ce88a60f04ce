"""Fault injection, predict and test part (issue 14): same-stem inputs, skipped inputs (exit code 3),
``--overwrite``, a GPU device on a machine without one, a model that predicts nothing, the report of a standalone
``mambaseg test``, grayscale and 16-bit inputs for an RGB model. One tiny trained U-Net (1 epoch, 32 px) shared
by the module; everything through the CLI's ``main()`` in-process."""

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import mambaseg.engine.run  # noqa: F401  (Lightning's log handlers bind to the session's stderr, not capsys')
from mambaseg.cli.main import main

TINY = ["--data.dataset", "synthetic-skin", "--data.dataset_kwargs", '{"size": 32}',
        "--data.split_kwargs", '{"train": {"num_samples": 4}, "val": {"num_samples": 2}, "test": {"num_samples": 3}}',
        "--data.val_split", "val", "--data.image_size", "32", "--data.batch_size", "4", "--data.transforms", "default",
        "--model.model", "unet", "--model.model_kwargs", '{"base_channels": 4}',
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("faults") / "run"
    assert main(["fit", *TINY, "--run_dir", str(run), "--test_after_fit", "false"]) == 0
    return run


@pytest.fixture(scope="module")
def ckpt(run):
    return str(run / "checkpoints" / "best.ckpt")


def _rgb(seed: int, size: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    img[10:30, 8:28] = rng.integers(150, 255, (20, 20, 3), dtype=np.uint8)  # a bright "lesion"
    return img


def _predict(ckpt, inputs, out, *more):
    return main(["predict", "--ckpt", ckpt, "--input", *map(str, inputs), "--out", str(out), "--no-progress", *more])


def _edited_ckpt(ckpt, dest, head_bias=None, **hparams):
    data = torch.load(ckpt, map_location="cpu", weights_only=False)  # our own trusted file
    if head_bias is not None:
        data["state_dict"]["net.head.bias"].fill_(head_bias)
    data["hyper_parameters"].update(hparams)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    torch.save(data, dest)
    return str(dest)


def test_predict_same_stem_inputs_get_distinct_outputs(ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_rgb(0)).save(src / "a.png")
    Image.fromarray(_rgb(1)).save(src / "a.jpg")
    Image.fromarray(_rgb(2)).save(src / "b.png")
    out = tmp_path / "out"
    assert _predict(ckpt, [src], out) == 0
    assert sorted(os.listdir(out / "masks")) == ["a.jpg.png", "a.png.png", "b.png"]
    assert sorted(os.listdir(out / "overlays")) == ["a.jpg.png", "a.png.png", "b.png"]
    assert "wrote 3 prediction(s)" in capsys.readouterr().out


def test_predict_skipped_inputs_are_listed_and_exit_3(ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_rgb(0)).save(src / "good.png")
    (src / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    assert _predict(ckpt, [src], out) == 3
    err = capsys.readouterr().err
    assert "broken.png" in err and "exit code 3" in err
    listed = (out / "errors.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith(str(src / "broken.png"))
    assert os.listdir(out / "masks") == ["good.png"]


def test_predict_overwrite_flag_replaces_an_occupied_output_folder(ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_rgb(0)).save(src / "x.png")
    out = tmp_path / "out"
    assert _predict(ckpt, [src], out) == 0
    mask = out / "masks" / "x.png"
    fresh = mask.read_bytes()
    mask.write_bytes(b"stale")
    assert _predict(ckpt, [src], out) == 2  # refused without --overwrite, nothing touched
    assert "--overwrite" in capsys.readouterr().err and mask.read_bytes() == b"stale"
    assert _predict(ckpt, [src], out, "--overwrite") == 0
    assert mask.read_bytes() == fresh


def test_predict_device_cuda_without_a_gpu_suggests_cpu(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_rgb(0)).save(src / "x.png")
    out = tmp_path / "out"
    try:
        code = _predict(ckpt, [src], out, "--device", "cuda")
    except Exception as e:  # the unfixed code let torch's exception escape main()
        pytest.fail(f"main() raised {type(e).__name__}: {e}")
    assert code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert "Traceback" not in err and len(lines) == 1 and "--device cpu" in lines[0]
    assert not out.exists()


def test_empty_predictions_are_counted_in_table_and_report_with_a_warning(ckpt, tmp_path, capsys):
    dead = _edited_ckpt(ckpt, tmp_path / "dead" / "checkpoints" / "best.ckpt", head_bias=-1e4)  # predicts nothing
    assert main(["test", *TINY, "--ckpt_path", dead]) == 0
    cap = capsys.readouterr()
    header = next(ln for ln in cap.out.splitlines() if ln.startswith("model"))
    row = next(ln for ln in cap.out.splitlines() if ln.startswith("unet"))
    assert header.split()[-2:] == ["EmptyPred", "EmptyGT"]
    assert row.split()[-2:] == ["3/3", "0/3"]  # 3 test images, all with a lesion (synthetic-skin)
    # the warning once (on stderr), not again in the table on stdout
    assert "predictions are empty" not in cap.out and cap.err.count("3 of 3 predictions are empty") == 1
    report = (tmp_path / "dead" / "test" / "report.md").read_text()
    assert "EmptyPred" in report and "| 3/3 | 0/3 |" in report and "**warning: unet: 3 of 3 predictions" in report


def test_standalone_test_report_has_no_empty_training_curves(run, ckpt, tmp_path):
    lone = tmp_path / "lone.ckpt"  # a checkpoint without its run: no training log anywhere
    shutil.copy(ckpt, lone)
    assert main(["test", *TINY, "--ckpt_path", str(lone), "--run_dir", str(tmp_path / "eval")]) == 0
    out = tmp_path / "eval" / "test"
    report = (out / "report.md").read_text()
    assert "Training curves" not in report and not (out / "plots" / "training_curves.png").exists()
    assert (out / "plots" / "dice_histogram.png").exists()  # the rest of the report is there
    # a checkpoint inside its run: the curves come from the run's own metrics.csv
    from mambaseg.engine.report import run_metrics
    assert run_metrics(str(run)).get("train/loss_epoch")
    assert main(["test", *TINY, "--ckpt_path", ckpt]) == 0
    tests = sorted(d for d in os.listdir(run) if d.startswith("test"))
    report = (run / tests[-1] / "report.md").read_text()
    assert "## Training curves" in report and (run / tests[-1] / "plots" / "training_curves.png").exists()


def test_predict_grayscale_input_for_rgb_model_warns_once(ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(_rgb(i)[..., 0]).save(src / f"grey{i}.png")  # mode L
    Image.fromarray(_rgb(5)).save(src / "colour.png")
    assert _predict(ckpt, [src], tmp_path / "out") == 0
    warns = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warns) == 1, warns
    assert "2 input(s)" in warns[0] and "grayscale" in warns[0] and "copied to R, G and B" in warns[0]


def _logits(ckpt, image):
    """The network's logits for an (H, W, C) float image after the checkpoint's evaluation preprocessing."""
    from mambaseg.engine.inference import predict_logits_2d
    from mambaseg.engine.predict import _eval_transform, load_module
    m = load_module(ckpt)
    x, _ = _eval_transform(m)(image.astype(np.float32), np.zeros(image.shape[:2], np.int64))
    return predict_logits_2d(m.net, torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None],
                             input_size=m.input_size)


def test_predict_16bit_input_is_scaled_with_a_warning(ckpt, tmp_path, capsys):
    grey8 = _rgb(3)[..., 0]
    rgb = np.repeat(grey8[..., None], 3, axis=2).astype(np.float32)
    # a preprocessing without intensity normalisation (as the ACDC preset), so the input units matter, and a head
    # bias that puts the median logit of this picture at 0: about half its pixels are foreground
    raw = _edited_ckpt(ckpt, tmp_path / "raw.ckpt", preprocess="mamba_unet_acdc")
    data = torch.load(raw, map_location="cpu", weights_only=False)
    bias = float(data["state_dict"]["net.head.bias"]) - float(_logits(raw, rgb).median())
    raw = _edited_ckpt(raw, tmp_path / "raw.ckpt", head_bias=bias)
    assert not torch.equal(_logits(raw, rgb) >= 0, _logits(raw, rgb * 257) >= 0)  # 16-bit units change the mask
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(grey8).save(src / "eight.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(src / "sixteen.png")  # same picture, 16-bit
    assert Image.open(src / "sixteen.png").mode.startswith("I")
    assert _predict(raw, [src], tmp_path / "out") == 0
    warns = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert any("16-bit" in w and "divided by 257" in w and "sixteen.png" in w for w in warns), warns
    m8 = np.asarray(Image.open(tmp_path / "out" / "masks" / "eight.png"))
    m16 = np.asarray(Image.open(tmp_path / "out" / "masks" / "sixteen.png"))
    assert 0.1 < (m8 > 0).mean() < 0.9
    assert np.array_equal(m8, m16)  # the oracle: a 16-bit copy of an 8-bit image predicts the same mask


def test_predict_with_no_existing_input_is_refused_before_writing(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(ckpt, [tmp_path / "no_such_folder"], out) == 2
    err = capsys.readouterr().err
    assert "nothing to predict" in err and "no_such_folder" in err
    assert not out.exists()
