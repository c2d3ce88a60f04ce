"""Shared pieces of the checkpoint / durability fault tests: a tiny U-Net run, a hostile pickle, mounts."""

import contextlib
import os
import shutil
import subprocess

import torch

from mambaseg.cli.main import main

TINY = ["--data.dataset", "synthetic-skin", "--data.dataset_kwargs", '{"size": 32}',
        "--data.split_kwargs", '{"train": {"num_samples": 4}, "val": {"num_samples": 2}, "test": {"num_samples": 2}}',
        "--data.val_split", "val", "--data.image_size", "32", "--data.batch_size", "2", "--data.eval_batch_size", "2",
        "--data.transforms", "default",
        "--model.model", "unet", "--model.model_kwargs", '{"base_channels": 4}', "--model.lr", "0.01",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.deterministic", "true",
        "--trainer.log_every_n_steps", "1", "--seed_everything", "7"]


def fit(run_dir, *extra) -> int:
    return main(["fit", *TINY, "--run_dir", str(run_dir), *extra])


def train_one_epoch(run_dir) -> None:
    assert fit(run_dir, "--trainer.max_epochs", "1", "--test_after_fit", "false") == 0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


class Hostile:
    """Unpickling this runs ``touch MARKER`` (what an attacker's .ckpt would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_hostile_checkpoint(good_ckpt, dest, marker) -> None:
    """A real mambaseg checkpoint with a code-running object hidden in it."""
    data = torch.load(good_ckpt, map_location="cpu", weights_only=True)
    data["callbacks"]["payload"] = Hostile(marker)
    torch.save(data, dest)


def error_lines(err: str):
    """The ``mambaseg: error:`` lines; asserts there is no traceback."""
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if ln.startswith("mambaseg: error:")]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@contextlib.contextmanager
def tmpfs(path, size: str, read_only: bool = False):
    """Mount a small tmpfs at ``path`` (root only); yields False when the mount is impossible here."""
    os.makedirs(path, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        yield False
        return
    if r.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def remount(path, read_only: bool) -> bool:
    r = subprocess.run(["mount", "-o", "remount," + ("ro" if read_only else "rw"), str(path)], capture_output=True,
                       timeout=30)
    return r.returncode == 0


def copy_run(src, dst) -> None:
    shutil.copytree(src, dst)
