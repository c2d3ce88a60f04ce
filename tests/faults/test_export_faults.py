"""Faults of ``export`` / ``profile`` / ``predict --ckpt``: each gave a traceback (or silently meant something
else, or left files behind). Now each is one line, exit 2, and nothing is left behind:

* ``export --size 0 / -64 / 100000`` (and ``profile``/``models --profile --size 100000``): not positive, or
  larger than this machine's memory for the input and output alone, refused before allocating, with the number;
* ``--chunk -3`` and ``--chunk 0`` (which silently meant the default);
* ``export`` to a read-only place; a full disk during ``export`` (``--format folder`` left an empty folder);
* a model folder whose ``config.json`` asks for ``base_channels: 1000000``: refused with the parameter count;
* ``--ckpt DIR`` without ``config.json`` or with one that is not a regular file: says what the folder lacks.
"""

import errno
import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

import mambaseg.engine.run  # noqa: F401  (Lightning's log handlers bind to the session's stderr, not capsys')
from mambaseg.cli.main import main
from mambaseg.models.limits import machine_memory_bytes

from _ckpt_helpers import error_lines, remount, tmpfs, train_one_epoch


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "run"
    train_one_epoch(run)
    return str(run / "checkpoints" / "last.ckpt")


def _one_line(capsys):
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("size", ["0", "-64", "100000"])
def test_export_size_not_positive_or_absurd(size, ckpt, tmp_path, capsys):
    out = tmp_path / "sub" / "m.onnx"
    assert main(["export", "--ckpt", ckpt, "--out", str(out), f"--size={size}"]) == 2
    line = _one_line(capsys)
    assert "--size" in line
    if size == "100000":  # the lower bound: float32 input (3 channels) and output (1 channel) maps
        need = 4 * 100000 * 100000 * (3 + 1)
        assert need > machine_memory_bytes()
        assert "GB" in line and "memory" in line.lower() or "machine" in line
    else:
        assert "positive" in line
    assert not (tmp_path / "sub").exists()


@pytest.mark.parametrize("argv", [["profile", "unet", "--size", "100000", "--no-latency", "--no-used"],
                                  ["models", "unet", "--profile", "--size", "100000"]])
def test_profile_absurd_size_is_refused_before_allocating(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "100000x100000" in err and "machine" in err, err


@pytest.mark.parametrize("chunk", ["-3", "0"])
def test_export_chunk_not_positive(chunk, ckpt, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--ckpt", ckpt, "--out", str(out), f"--chunk={chunk}"]) == 2
    line = _one_line(capsys)
    assert "--chunk" in line and "positive" in line and chunk in line
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["onnx", "folder"])
def test_export_to_read_only_place(fmt, ckpt, tmp_path, capsys):
    ro = tmp_path / "ro"
    with tmpfs(ro, "4m") as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("cannot mount a read-only tmpfs here, and chmod does not block root")
            ro.mkdir(exist_ok=True)
            ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        else:
            assert remount(ro, read_only=True)
        try:
            out = ro / ("m.onnx" if fmt == "onnx" else "folder")
            rc = main(["export", "--ckpt", ckpt, "--format", fmt, "--out", str(out)])
            line = _one_line(capsys)
            listing = os.listdir(ro)
        finally:
            if mounted:
                remount(ro, read_only=False)
            else:
                ro.chmod(stat.S_IRWXU)
    assert rc == 2
    assert ("read-only" in line or "not writable" in line) and str(ro) in line
    assert listing == []


def _fill(mnt, leave: int):
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    with open(mnt / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


@pytest.mark.parametrize("fmt", ["onnx", "folder"])
def test_export_disk_full_leaves_nothing(fmt, ckpt, tmp_path, capsys):
    mnt = tmp_path / "small"
    with tmpfs(mnt, "2m") as ok:
        if not ok:
            pytest.skip("cannot mount a tmpfs here (needs root and mount(8)); the injected test covers it")
        _fill(mnt, 16 * 1024)  # the tiny U-Net's ONNX / safetensors are ~100 KB
        out = mnt / "deep" / ("m.onnx" if fmt == "onnx" else "folder")
        rc = main(["export", "--ckpt", ckpt, "--format", fmt, "--out", str(out)])
        line = _one_line(capsys)
        listing = sorted(os.listdir(mnt))
    assert rc == 2 and "disk full" in line and "--out" in line
    assert listing == ["filler"]  # no file, no temporary, no empty folder


@pytest.mark.parametrize("fmt", ["onnx", "folder"])
def test_export_disk_full_injected_leaves_nothing(fmt, ckpt, tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if fmt == "onnx":
        import onnx
        monkeypatch.setattr(onnx, "save", full)
    else:
        import safetensors.torch
        monkeypatch.setattr(safetensors.torch, "save_model", full)
    out = tmp_path / "deep" / ("m.onnx" if fmt == "onnx" else "folder")
    assert main(["export", "--ckpt", ckpt, "--format", fmt, "--out", str(out)]) == 2
    assert "disk full" in _one_line(capsys)
    assert os.listdir(tmp_path) == []


def _folder(ckpt, tmp_path):
    d = tmp_path / "model"
    assert main(["export", "--ckpt", ckpt, "--format", "folder", "--out", str(d)]) == 0
    return d


def _image_dir(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src / "a.png")
    return src


@pytest.mark.parametrize("command", ["predict", "export"])
def test_model_folder_with_absurd_size_is_refused_before_allocating(command, ckpt, tmp_path, capsys):
    d = _folder(ckpt, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_args"]["base_channels"] = 1000000
    (d / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    argv = {"predict": ["predict", "--ckpt", str(d), "--input", str(_image_dir(tmp_path)), "--out",
                        str(tmp_path / "preds"), "--no-progress"],
            "export": ["export", "--ckpt", str(d), "--out", str(tmp_path / "m.onnx")]}[command]
    assert main(argv) == 2
    line = _one_line(capsys)
    # oracle: U-Net's deepest 3x3 convolution alone, (16 * base) -> (16 * base) channels
    assert "parameters" in line and "base_channels=1000000" in line and "machine" in line
    n = int(line.split(" has ")[1].split(" parameters")[0].replace(",", ""))
    assert n > 9 * (16 * 1000000) ** 2
    assert not (tmp_path / "preds").exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("kind", ["missing", "fifo", "folder"])
@pytest.mark.parametrize("command", ["predict", "export"])
def test_ckpt_dir_says_what_the_folder_lacks(kind, command, tmp_path, capsys):
    d = tmp_path / "notamodel"
    d.mkdir()
    if kind == "fifo":
        os.mkfifo(d / "config.json")
    elif kind == "folder":
        (d / "config.json").mkdir()
    argv = {"predict": ["predict", "--ckpt", str(d), "--input", str(_image_dir(tmp_path)), "--out",
                        str(tmp_path / "preds"), "--no-progress"],
            "export": ["export", "--ckpt", str(d), "--out", str(tmp_path / "m.onnx")]}[command]
    assert main(argv) == 2
    line = _one_line(capsys)
    assert "does not exist" not in line and "config.json" in line and str(d) in line
    assert ("without config.json" in line) == (kind == "missing")
    if kind != "missing":
        assert "not a regular file" in line or "is a folder" in line
    assert not (tmp_path / "preds").exists() and not (tmp_path / "m.onnx").exists()


def test_fit_with_absurd_model_kwargs_is_refused_before_allocating(tmp_path, capsys):
    from _ckpt_helpers import fit
    run = tmp_path / "run"
    assert fit(run, "--model.model_kwargs", '{"base_channels": 1000000}', "--trainer.max_epochs", "1") == 2
    line = _one_line(capsys)
    assert "parameters" in line and "base_channels=1000000" in line
    assert not run.exists()
