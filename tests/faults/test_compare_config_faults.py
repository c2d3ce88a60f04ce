"""Faults of ``compare``: a ``!!python`` YAML tag through ``compare --config`` gave a traceback (``fit`` and
``check`` refuse it in one line), and ``compare --out`` on a read-only file system failed after work started.
Now both are one line, exit 2, nothing run or written."""

import os
import stat

import pytest

import mambaseg.engine.run  # noqa: F401  (Lightning's log handlers bind to the session's stderr, not capsys')
from mambaseg.cli.main import main

from _ckpt_helpers import TINY, error_lines, remount, tmpfs

ARGS = ["--models", "unet,att_unet", "--seeds", "1"]


def _tiny():
    out, i = [], 0
    while i < len(TINY):
        if TINY[i] in ("--model.model", "--model.model_kwargs", "--seed_everything"):
            i += 2
            continue
        out.append(TINY[i])
        i += 1
    return out


def test_python_tag_through_compare_config_is_one_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "tagged.yaml"
    cfg.write_text(f'model:\n  lr: !!python/object/apply:os.system ["touch {marker}"]\n')
    out = tmp_path / "cmp"
    rc = main(["compare", "--config", str(cfg), *ARGS, "--out", str(out), *_tiny()])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and "!!python" in lines[0] and str(cfg) in lines[0]
    assert not marker.exists() and not out.exists()


def test_compare_out_on_read_only_file_system_is_refused_before_work(tmp_path, capsys):
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
            rc = main(["compare", "--config", "demo", *ARGS, "--out", str(ro / "cmp"), *_tiny()])
            err = capsys.readouterr().err
            listing = os.listdir(ro)
        finally:
            if mounted:
                remount(ro, read_only=False)
            else:
                ro.chmod(stat.S_IRWXU)
    assert rc == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and ("read-only" in lines[0] or "not writable" in lines[0]) and "--out" in lines[0]
    assert listing == []
