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

from mambaseg import __version__
from mambaseg.ops import available_backends, get_default_backend, resolve_backend

from .errors import RunDirExistsError
from .io import (CheckpointReadError, UnsafeCheckpointError, atomic_write_text, check_mambaseg_checkpoint,
                 load_checkpoint)
from .module import SELECT_ON
from .report import RunRecord, empty_warnings, format_metrics_table, write_evaluation, write_report

__all__ = ["check_run_dir", "is_child_process", "make_checkpoint_callbacks", "EpochSeedCallback", "RandomStateCallback",
           "ResumeHintCallback", "RunInfoCallback", "write_test_outputs", "next_free_dir", "environment_info",
           "checkpoint_files", "pick_resume_checkpoint", "resume_command", "seed_generators"]


def is_child_process() -> bool:
    """True in the extra processes Lightning's DDP launcher starts (rank > 0)."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK")) or \
        os.environ.get("RANK", "0") not in ("", "0")


def _has_content(path: str) -> bool:
    return os.path.isdir(path) and any(True for _ in os.scandir(path))


def checkpoint_files(run_dir: str) -> List[str]:
    """The ``.ckpt`` files in ``run_dir/checkpoints`` (hidden temporaries of an interrupted write left out)."""
    d = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".ckpt") and not f.startswith("."))


def _note(msg: str) -> None:
    import sys
    print(f"mambaseg: note: {msg}", file=sys.stderr)


def pick_resume_checkpoint(run_dir: str) -> str:
    """The newest checkpoint of ``run_dir`` that reads: the one with the most training steps (``last.ckpt`` on a
    tie). An unreadable one (truncated by a crash or a full disk, empty) is passed over, saying so; one that asks
    for code is refused (``UnsafeCheckpointError``), never skipped silently."""
    files = checkpoint_files(run_dir)
    last = os.path.join(run_dir, "checkpoints", "last.ckpt")
    files.sort(key=lambda f: (f != last, -os.path.getmtime(f)))
    good, bad = [], []
    for f in files:
        try:
            data = load_checkpoint(f)
            check_mambaseg_checkpoint(data, f)
        except UnsafeCheckpointError:
            raise
        except (CheckpointReadError, OSError) as e:
            bad.append((f, str(e)))
            continue
        good.append((int(data.get("global_step") or 0), f == last, f, int(data.get("epoch") or 0)))
        del data
    if not good:
        why = "; ".join(f"{os.path.basename(f)}: {m}" for f, m in bad)
        raise CheckpointReadError(f"--resume: no checkpoint in {os.path.join(run_dir, 'checkpoints')!r} reads ({why})"
                                  "; start a new run (another --run_dir) or pass --ckpt_path")
    step, _, best, epoch = max(good)
    if bad or best != last:
        skipped = ", ".join(f"{os.path.basename(f)} does not read ({m.split(' (')[0]})" for f, m in bad)
        _note(f"{skipped + '; ' if skipped else ''}resuming from {os.path.basename(best)} (saved in epoch {epoch}, "
              f"step {step}), the newest checkpoint that reads")
    return best


_FIT_FILES = ("config.yaml", "hparams.yaml", "metrics.csv", "run.json", "checkpoints", "plots", "lightning_logs",
              "split.json")


def _is_fit_leftover(name: str) -> bool:
    """A name ``mambaseg fit`` writes into a run directory before its first checkpoint."""
    return name in _FIT_FILES or name.startswith(("resume-", "version_", "."))


def check_run_dir(run_dir: str, resume: bool) -> Optional[str]:
    """Enforce the run-directory rule for ``fit``; returns the checkpoint to resume from (or None).

    * empty / missing directory: fine;
    * holds a run and ``resume``: continue from the newest checkpoint that reads (``pick_resume_checkpoint``);
    * holds no checkpoint, only what a fit writes before its first one (``config.yaml``, logs): reused, saying
      so (with ``resume``: the message says to drop ``--resume``);
    * holds checkpoints and not ``resume``: ``RunDirExistsError`` (never overwrite silently).
    """
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirExistsError(f"run directory {run_dir!r} exists and is not a directory")
    ckpts = checkpoint_files(run_dir)
    if resume:
        if not ckpts:
            raise FileNotFoundError(f"--resume: run directory {run_dir!r} holds no checkpoint (the fit stopped "
                                    "before its first one?); run the same command without --resume to start it "
                                    "over in that directory (accepted while it holds no checkpoint), or pass "
                                    "--ckpt_path")
        return pick_resume_checkpoint(run_dir)
    if ckpts:
        raise RunDirExistsError(f"run directory {run_dir!r} already holds a run (checkpoints/"
                                f"{os.path.basename(ckpts[0])}). Pass --resume true to continue it, or choose "
                                "another --run_dir; nothing was overwritten")
    from .runlock import LOCK_NAME
    names = sorted(e.name for e in os.scandir(run_dir) if e.name != LOCK_NAME) if os.path.isdir(run_dir) else []
    if names:  # (this process's own lock file does not count)
        if "config.yaml" not in names or not all(_is_fit_leftover(n) for n in names):
            raise RunDirExistsError(f"run directory {run_dir!r} already holds files ({', '.join(names[:5])}"
                                    f"{', ...' if len(names) > 5 else ''}) but no mambaseg run (no config.yaml, no "
                                    "checkpoint), so neither a new fit nor --resume can use it; choose another "
                                    "--run_dir; nothing was overwritten")
        _note(f"run directory {run_dir!r} holds no checkpoint, only what a fit that stopped before its first one "
              f"left ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}); reusing it, those files are "
              "replaced")
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
    monitor, mode = SELECT_ON[select_on]
    d = os.path.join(run_dir, "checkpoints")
    best = ModelCheckpoint(dirpath=d, filename="best", monitor=monitor, mode=mode, save_top_k=1, save_last=False,
                           auto_insert_metric_name=False, enable_version_counter=False,
                           save_on_train_epoch_end=True if monitor.startswith("train/") else None)
    last = ModelCheckpoint(dirpath=d, filename="last", monitor=None, save_top_k=1, save_last=False,
                           auto_insert_metric_name=False, enable_version_counter=False)
    return [best, last]


def seed_generators(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU, and every CUDA device once CUDA is up) from ``seed``. Cheaper than
    ``torch.manual_seed`` (about 1 ms here: it also probes every other backend), so it can run per batch."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


def _batch_seed(seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    return (int(seed) * 1_000_003 + 104_729 * int(epoch) + 7_919 * int(batch_idx) + 15_485_863 * int(rank)) % (2 ** 31)


class RandomStateCallback(Callback):
    """Bit-exact resume for stochastic models (drop path, dropout): before every training batch the Python,
    NumPy and torch (CPU and every CUDA device) generators are reseeded from ``(seed, epoch, batch, rank)`` (not
    the optimiser step: accumulated micro-batches must not share their drop-path masks), so
    the random numbers a step draws depend on nothing else: not on when the run was interrupted, nor on the
    draws Lightning makes between steps (a data-loader iterator takes one from the torch generator when it is
    made, which a resumed run makes at another moment: the cause of resumed VM-UNet runs drifting).

    The checkpoint keeps the seed and, as plain tensors / lists (readable with ``weights_only=True``), the state
    of every generator when it was written; a resumed run restores both (the seed of the checkpoint wins over a
    different ``--seed_everything``). Shuffling and augmentation are seeded from ``(seed, epoch[, sample])`` by
    the data module (``EpochSeededSampler``), workers included."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        seed_generators(_batch_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))

    def state_dict(self) -> Dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {"seed": self.seed, "scheme": "per-batch-v1",
                 "torch": torch.get_rng_state(),
                 "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                           "has_gauss": int(has_gauss), "gauss": float(gauss)},
                 "python": _py_state_to_plain(random.getstate())}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = list(torch.cuda.get_rng_state_all())
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if not state_dict:
            return
        self.seed = int(state_dict.get("seed", self.seed))
        if "torch" in state_dict:
            torch.set_rng_state(state_dict["torch"])
        npst = state_dict.get("numpy")
        if npst:
            np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                                 npst["has_gauss"], npst["gauss"]))
        if state_dict.get("python"):
            random.setstate(_py_state_from_plain(state_dict["python"]))
        if state_dict.get("cuda") and torch.cuda.is_available():
            cuda = state_dict["cuda"]
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)


def _py_state_to_plain(st) -> list:
    version, internal, gauss = st
    return [int(version), [int(v) for v in internal], gauss]


def _py_state_from_plain(st):
    version, internal, gauss = st
    return (int(version), tuple(int(v) for v in internal), gauss)


EpochSeedCallback = RandomStateCallback  # the old name (it reseeded per epoch only)


def resume_command(args: List[str], run_dir: str) -> str:
    """The ``mambaseg fit ...`` line that continues this run: the same arguments, ``--run_dir`` and
    ``--resume true``."""
    import shlex
    out, i = [], 0
    args = list(args)
    if args and args[0] == "fit":
        args = args[1:]
    while i < len(args):
        a = args[i]
        if a in ("--resume", "--run_dir", "--ckpt_path"):
            i += 2
            continue
        if a.startswith(("--resume=", "--run_dir=", "--ckpt_path=")):
            i += 1
            continue
        out.append(a)
        i += 1
    return "mambaseg " + shlex.join(["fit", *out, "--run_dir", run_dir, "--resume", "true"])


class ResumeHintCallback(Callback):
    """On Ctrl-C (Lightning's graceful stop) print the exact command that resumes the run."""

    def __init__(self, run_dir: str, args: List[str]):
        self.run_dir, self.args = run_dir, list(args)

    def on_exception(self, trainer, pl_module, exception):
        if not isinstance(exception, KeyboardInterrupt) or trainer.global_rank != 0:
            return
        import sys
        if checkpoint_files(self.run_dir):
            print(f"\nmambaseg: interrupted; the run keeps its checkpoints in "
                  f"{os.path.join(self.run_dir, 'checkpoints')} (training continues from the last completed "
                  f"epoch). Resume with:\n  {resume_command(self.args, self.run_dir)}", file=sys.stderr)
        else:
            print(f"\nmambaseg: interrupted before the first checkpoint; nothing to resume. Start again with the "
                  f"same command (the run directory is reused while it holds no checkpoint):\n  "
                  f"{resume_command(self.args, self.run_dir).replace(' --resume true', '')}", file=sys.stderr)


def environment_info() -> Dict[str, Any]:
    import lightning
    info = {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
            "platform": platform.platform(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available()}
    try:
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
            try:
                with open(path) as f:
                    data = json.load(f)
            except (OSError, ValueError):  # unreadable (e.g. cut short by a crash before writes were atomic)
                data = {}
        n_params = sum(p.numel() for p in pl_module.parameters())
        data.update(environment=environment_info(), model=pl_module.hparams.get("model"), params=n_params,
                    strategy=type(trainer.strategy).__name__, world_size=trainer.world_size,
                    precision=str(trainer.precision), **self.extra, **more)
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "describe"):
            data["data"] = dm.describe()
        atomic_write_text(path, json.dumps(data, indent=2, default=str))

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
    print("\n" + format_metrics_table([rec], warnings=False))  # the warnings once, on stderr (below)
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
