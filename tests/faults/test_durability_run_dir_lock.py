"""Fault: two ``fit`` processes on one run directory both ran, both crashed, and left the second's config beside
the first's checkpoints. Now the run directory is locked (an advisory lock that dies with its process): the
second gets one line naming the holder's pid, exit 2, and writes nothing; a killed holder leaves no stale lock.
Same for two ``compare`` on one ``--out``."""

import os
import signal
import subprocess
import sys

import mambaseg.engine.run  # noqa: F401  (Lightning's log handlers bind to the session's stderr, not capsys')
from mambaseg.cli.main import main
from mambaseg.engine.module import SegmentationModule

from _ckpt_helpers import TINY, error_lines, fit

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def _without(argv, *keys):
    out, i = [], 0
    while i < len(argv):
        if argv[i] in keys:
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_second_fit_on_a_busy_run_dir_is_refused_and_writes_nothing(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    seen = {}

    def second_fit_meanwhile(self):  # the first fit is training: a second one starts on the same --run_dir
        before = _snapshot(run)
        seen["rc"] = main(["fit", *TINY, "--run_dir", str(run), "--trainer.max_epochs", "1",
                           "--test_after_fit", "false"])
        seen["err"] = capsys.readouterr().err
        seen["same"] = _snapshot(run) == before

    monkeypatch.setattr(SegmentationModule, "on_train_start", second_fit_meanwhile)
    assert fit(run, "--trainer.max_epochs", "1", "--test_after_fit", "false") == 0
    assert seen["rc"] == 2, seen["err"]
    lines = error_lines(seen["err"])
    assert len(lines) == 1 and "in use by another mambaseg process" in lines[0], seen["err"]
    assert f"pid {os.getpid()}" in lines[0] and str(run) in lines[0]
    assert seen["same"]  # the second wrote nothing
    assert (run / "checkpoints" / "last.ckpt").is_file()  # the first finished its run
    assert not (run / ".mambaseg.lock").exists()  # released at the end


def test_lock_of_a_killed_process_does_not_block(tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mambaseg.engine.runlock import acquire; acquire(sys.argv[1]);"
         " print('ready', flush=True); time.sleep(300)", str(run)],
        stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=os.path.abspath(SRC)))
    try:
        assert holder.stdout.readline().strip() == b"ready"
        assert fit(run, "--trainer.max_epochs", "1", "--test_after_fit", "false") == 2
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and f"pid {holder.pid}" in lines[0]
        assert sorted(p.name for p in run.iterdir()) == [".mambaseg.lock"]  # nothing of the refused fit
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # kill -9 left the lock file behind, but no lock: the next fit runs
    assert fit(run, "--trainer.max_epochs", "1", "--test_after_fit", "false") == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_second_compare_on_a_busy_out_is_refused(tmp_path, capsys):
    out = tmp_path / "cmp"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mambaseg.engine.runlock import acquire; acquire(sys.argv[1]);"
         " print('ready', flush=True); time.sleep(300)", str(out)],
        stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=os.path.abspath(SRC)))
    try:
        assert holder.stdout.readline().strip() == b"ready"
        rc = main(["compare", "--config", "demo", "--models", "unet,att_unet", "--seeds", "1", "--out", str(out),
                   *_without(TINY, "--model.model", "--model.model_kwargs", "--seed_everything"), "--trainer.max_epochs", "1"])
        lines = error_lines(capsys.readouterr().err)
        assert rc == 2 and len(lines) == 1 and f"pid {holder.pid}" in lines[0] and "--out" in lines[0]
        assert sorted(p.name for p in out.iterdir()) == [".mambaseg.lock"]  # no plan, no split, no run
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_lock_of_a_refused_fit_leaves_no_folder_behind(tmp_path, capsys):
    # the lock makes the run directory (and missing parents) first; a fit refused for bad input removes them again
    run = tmp_path / "a" / "b" / "run"
    assert main(["fit", *TINY, "--model.model_kwargs", '{"base_chanels": 4}', "--run_dir", str(run)]) == 2
    assert len(error_lines(capsys.readouterr().err)) == 1
    assert not (tmp_path / "a").exists()


def test_second_predict_into_a_busy_out_is_refused(tmp_path, capsys):
    from PIL import Image
    import numpy as np
    from _ckpt_helpers import train_one_epoch
    run = tmp_path / "run"
    train_one_epoch(run)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src / "a.png")
    out = tmp_path / "preds"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mambaseg.engine.runlock import acquire; acquire(sys.argv[1]);"
         " print('ready', flush=True); time.sleep(300)", str(out)],
        stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=os.path.abspath(SRC)))
    try:
        assert holder.stdout.readline().strip() == b"ready"
        capsys.readouterr()
        rc = main(["predict", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--input", str(src), "--out",
                   str(out), "--no-progress"])
        lines = error_lines(capsys.readouterr().err)
        assert rc == 2 and len(lines) == 1 and f"pid {holder.pid}" in lines[0] and "--out" in lines[0]
        assert sorted(p.name for p in out.iterdir()) == [".mambaseg.lock"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_two_evaluations_started_at_once_do_not_share_a_folder(tmp_path, monkeypatch, capsys):
    # `test` writes into a fresh RUN/test, RUN/test-2, ...; two started at once both found RUN/test free. Here the
    # other process holds RUN/test and this one is made to see it free (the race), as the real race would.
    import mambaseg.engine.run as lcli
    from _ckpt_helpers import train_one_epoch
    run = tmp_path / "run"
    train_one_epoch(run)
    busy = run / "test"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mambaseg.engine.runlock import acquire; acquire(sys.argv[1]);"
         " print('ready', flush=True); time.sleep(300)", str(busy)],
        stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=os.path.abspath(SRC)))
    real, calls = lcli.next_free_dir, []

    def raced(base):
        calls.append(base)
        return base if len(calls) <= 2 else real(base)

    monkeypatch.setattr(lcli, "next_free_dir", raced)
    try:
        assert holder.stdout.readline().strip() == b"ready"
        capsys.readouterr()
        assert main(["test", *TINY, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]) == 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert sorted(p.name for p in busy.iterdir()) == [".mambaseg.lock"]  # the other's folder untouched
    assert (run / "test-2" / "summary.json").is_file()
