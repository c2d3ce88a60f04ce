"""Fault: a config line ``trainer.callbacks: LambdaCallback(on_fit_start: os.system)`` made the config loader
import ``os.system`` and call it. Now ``class_path`` and callables in a config resolve only inside lightning,
torch, torchmetrics, mambaseg and what ``--allow_import`` adds; anything else is one line, exit 2, nothing
imported or written. The same through ``check`` and ``compare --config``."""

import sys

import pytest

import mambaseg.engine.run  # noqa: F401  (Lightning's log handlers bind to the session's stderr, not capsys')
from mambaseg.cli.main import main

from _ckpt_helpers import TINY, error_lines


def _config(tmp_path, target):
    cfg = tmp_path / "shared.yaml"
    cfg.write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.LambdaCallback\n"
                   f"      init_args:\n        on_fit_start: {target}\n")
    return cfg


@pytest.fixture
def marker(tmp_path, monkeypatch):
    path = tmp_path / "marker.txt"
    monkeypatch.setenv("MAMBASEG_TEST_MARKER", str(path))
    sys.modules.pop("_config_payload", None)  # each test sees its (first) import
    yield path
    sys.modules.pop("_config_payload", None)


def _without(argv, *keys):
    out, i = [], 0
    while i < len(argv):
        if argv[i] in keys:
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


@pytest.mark.parametrize("command", ["fit", "check", "compare"])
def test_callable_outside_the_allow_list_is_refused_before_import(command, tmp_path, marker, capsys):
    cfg = _config(tmp_path, "_config_payload.hook")
    run = tmp_path / "run"
    argv = {"fit": ["fit", *TINY, "--config", str(cfg), "--run_dir", str(run), "--trainer.max_epochs", "1",
                    "--test_after_fit", "false"],
            "check": ["check", *TINY, "--config", str(cfg)],
            "compare": ["compare", "--config", str(cfg), "--models", "unet,att_unet", "--seeds", "1", "--out", str(run),
                        *_without(TINY, "--model.model", "--model.model_kwargs", "--seed_everything"),
                        "--trainer.max_epochs", "1"]}[command]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and "'_config_payload.hook'" in lines[0] and "--allow_import _config_payload" in lines[0]
    assert "mambaseg" in lines[0] and "torch" in lines[0]  # the allow-list is named
    assert not marker.exists()  # never imported, never called
    assert "_config_payload" not in sys.modules
    assert not run.exists()


def test_os_system_is_refused(tmp_path, capsys):
    cfg = _config(tmp_path, "os.system")
    run = tmp_path / "run"
    assert main(["fit", *TINY, "--config", str(cfg), "--run_dir", str(run), "--trainer.max_epochs", "1"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "'os.system'" in lines[0]
    assert not run.exists()


def test_allow_import_flag_lets_a_trusted_config_name_its_code(tmp_path, marker, capsys):
    cfg = _config(tmp_path, "_config_payload.hook")
    run = tmp_path / "run"
    rc = main(["fit", *TINY, "--config", str(cfg), "--run_dir", str(run), "--trainer.max_epochs", "1",
               "--test_after_fit", "false", "--allow_import", "_config_payload"])
    assert rc == 0, capsys.readouterr().err
    assert marker.read_text().split() == ["imported", "called"]


def test_allowed_packages_still_resolve(tmp_path, capsys):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.EarlyStopping\n"
                   "      init_args:\n        monitor: val/loss\n")
    run = tmp_path / "run"
    rc = main(["fit", *TINY, "--config", str(cfg), "--run_dir", str(run), "--trainer.max_epochs", "1",
               "--test_after_fit", "false"])
    assert rc == 0, capsys.readouterr().err
