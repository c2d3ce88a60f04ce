"""Run directories: layout, the "never overwrite silently" rule, callbacks and the end-of-run writer.

Layout of a run directory::

    RUN/
      config.yaml            resolved config (LightningCLI)
      metrics.csv            CSV log (Lightning CSVLogger), hparams.yaml
      checkpoints/last.ckpt  checkpoints/best.ckpt (selected as ``model.select_on`` says)
      test/per_case.csv      test/summary.json (aggregation + HD95 mode named in it), test/qualitative.npz
      report.md              plots/*.png
      run.json               environment: versions, scan backend, device, wall times
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from .errors import RunDirExistsError

__all__ = ["check_run_dir", "is_child_process", "make_checkpoint_callbacks", "EpochSeedCallback", "RunInfoCallback",
           "write_test_outputs", "next_free_dir", "environment_info"]


def is_child_process() -> bool:
    """True in the extra processes Lightning's DDP launcher starts (rank > 0)."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK")) or \
        os.environ.get("RANK", "0") not in ("", "0")


def _has_content(path: str) -> bool:
    return os.path.isdir(path) and any(True for _ in os.scandir(path))


def check_run_dir(run_dir: str, resume: bool) -> Optional[str]:
    """Enforce the run-directory rule for ``fit``; returns the checkpoint to resume from (or None).

    * empty / missing directory: fine;
    * holds a run and ``resume``: continue from ``checkpoints/last.ckpt``;
    * holds a run and not ``resume``: ``RunDirExistsError`` (never overwrite silently).
    """
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirExistsError(f"run directory {run_dir!r} exists and is not a directory")
    last = os.path.join(run_dir, "checkpoints", "last.ckpt")
    if resume:
        if not os.path.isfile(last):
            raise FileNotFoundError(f"--resume: no checkpoint to resume from at {last!r}; start a new run without "
                                    "--resume, or pass --ckpt_path")
        return last
    if _has_content(run_dir):
        raise RunDirExistsError(f"run directory {run_dir!r} already holds files (a previous run?). Pass --resume "
                                "true to continue it, or choose another --run_dir; nothing was overwritten")
    return None


def next_free_dir(base: str) -> str:
    """``base`` if free, else ``base-2``, ``base-3``, ..."""
    if not _has_content(base):
        return base
    i = 2
    while _has_content(f"{base}-{i}"):
        i += 1
    return f"{base}-{i}"


def make_checkpoint_callbacks(run_dir: str, select_on: str) -> List[ModelCheckpoint]:
    """``best.ckpt`` (selected as ``select_on`` says) and ``last.ckpt`` (every epoch / validation).

    Two callbacks, because Lightning >= 2.5 only refreshes ``save_last`` when a top-k file was written."""
    from .module import SELECT_ON
    monitor, mode = SELECT_ON[select_on]
    d = os.path.join(run_dir, "checkpoints")
    best = ModelCheckpoint(dirpath=d, filename="best", monitor=monitor, mode=mode, save_top_k=1, save_last=False,
                           auto_insert_metric_name=False, enable_version_counter=False,
                           save_on_train_epoch_end=True if monitor.startswith("train/") else None)
    last = ModelCheckpoint(dirpath=d, filename="last", monitor=None, save_top_k=1, save_last=False,
                           auto_insert_metric_name=False, enable_version_counter=False)
    return [best, last]


class EpochSeedCallback(Callback):
    """Reseed Python / NumPy / torch RNGs from ``(seed, epoch)`` at every training epoch start, so that a run
    resumed from an epoch-end checkpoint draws the same random numbers (dropout, drop-path) as an uninterrupted
    one."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer, pl_module):
        s = (self.seed * 1_000_003 + 104_729 * trainer.current_epoch + trainer.global_rank) % (2 ** 31)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


def environment_info() -> Dict[str, Any]:
    import lightning
    info = {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
            "platform": platform.platform(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available()}
    try:
        from mambaseg import __version__
        from mambaseg.ops import available_backends, get_default_backend, resolve_backend
        name = get_default_backend()
        info.update(mambaseg=__version__, scan_backend=f"{name} -> {resolve_backend(name)}" if name == "auto" else name,
                    scan_backends_available=list(available_backends()))
    except Exception as e:  # pragma: no cover - informative only
        info["scan_backend"] = f"unknown ({e})"
    return info


class RunInfoCallback(Callback):
    """Write ``run.json`` (environment, scan backend, wall times, data sizes) into the run directory."""

    def __init__(self, run_dir: str, extra: Optional[Dict[str, Any]] = None):
        self.run_dir, self.extra = run_dir, dict(extra or {})
        self._t0: Optional[float] = None

    def _write(self, trainer, pl_module, **more):
        if trainer.global_rank != 0:
            return
        os.makedirs(self.run_dir, exist_ok=True)
        path = os.path.join(self.run_dir, "run.json")
        data: Dict[str, Any] = {}
        if os.path.isfile(path):
            with open(path) as f:
                data = json.load(f)
        n_params = sum(p.numel() for p in pl_module.parameters())
        data.update(environment=environment_info(), model=pl_module.hparams.get("model"), params=n_params,
                    strategy=type(trainer.strategy).__name__, world_size=trainer.world_size,
                    precision=str(trainer.precision), **self.extra, **more)
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "describe"):
            data["data"] = dm.describe()
        with open(path, "w") as f:
            json.dump(data, f, indent=2, default=str)

    def on_fit_start(self, trainer, pl_module):
        self._t0 = time.time()
        self._write(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module):
        self._write(trainer, pl_module, fit_seconds=round(time.time() - (self._t0 or time.time()), 2),
                    epochs=trainer.current_epoch, steps=trainer.global_step)


def write_test_outputs(module, out_dir: str, run_dir: Optional[str] = None, name: Optional[str] = None,
                       title: Optional[str] = None, notes: List[str] = (),
                       log_dir: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """After ``trainer.test``: per_case.csv + summary.json into ``out_dir``, report.md into ``run_dir`` (or
    ``out_dir``), the metrics table on stdout. ``log_dir``: the training run whose ``metrics.csv`` gives the
    report's training curves (default ``run_dir``; none found = no curves plot). Returns the RunRecord data, or
    None off rank 0."""
    from .report import RunRecord, format_metrics_table, write_evaluation, write_report
    res = getattr(module, "test_results", None)
    if not res:
        return None
    write_evaluation(out_dir, res)
    rec = RunRecord(name=name or str(module.hparams.get("model")), run_dir=run_dir or out_dir,
                    summary=res["summary"], rows=res["rows"], qualitative=res["qualitative"],
                    settings={k: res["settings"].get(k) for k in ("aggregation", "hd95_mode", "include_background",
                                                                  "threshold", "image_size", "scan_backend")},
                    extra={"params": sum(p.numel() for p in module.parameters())}, log_dir=log_dir)
    policy = res["settings"].get("empty_policy")
    rec.settings["empty_policy"] = policy.get("name") if isinstance(policy, dict) else policy
    report = write_report(run_dir or out_dir, [rec], title=title or f"mambaseg report: {rec.name}", notes=notes)
    print("\n" + format_metrics_table([rec]))
    from .report import empty_warnings
    for w in empty_warnings([rec]):  # also on stderr, where a script watching for problems looks
        print(f"mambaseg: {w}", file=sys.stderr)
    subsets = res.get("subsets") or {}
    if subsets:  # e.g. the five polyp test sets: each evaluated on its own, as the papers report them
        recs = []
        for sub_name, sub in subsets.items():
            write_evaluation(os.path.join(out_dir, "subsets", sub_name), sub)
            recs.append(RunRecord(name=f"{rec.name} [{sub_name}]", run_dir=run_dir or out_dir, summary=sub["summary"],
                                  rows=sub["rows"], qualitative=[], settings=rec.settings, extra=rec.extra))
        print("\nper test set (each on its own; the table above pools all of them):\n" + format_metrics_table(recs))
        print(f"per-set outputs: {os.path.join(out_dir, 'subsets')}/<set>/{{per_case.csv,summary.json}}")
    print(f"\nper-case metrics: {os.path.join(out_dir, 'per_case.csv')}\nsummary: "
          f"{os.path.join(out_dir, 'summary.json')}\nreport: {report}")
    return {"record": rec, "report": report}
