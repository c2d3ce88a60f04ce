"""``mambaseg compare``: train and test several models over seeds (and folds) under one config's protocol, then
report mean ± std over runs and per-case paired tests against a reference model.

What it does, in order:

1. **Plan** (nothing is trained or written before every check passed): each ``(model, seed, fold)`` becomes one
   run, ``OUT/runs/<model>/seed<s>[_fold<f>]``, which is an ordinary ``mambaseg fit`` run (the same LightningCLI
   path: checkpoints, ``metrics.csv``, ``best.ckpt`` selected on validation data, test of the best checkpoint
   on the config's held-out test split, ``test/per_case.csv`` + ``test/summary.json``).
2. **Splits**: one train / validation split per ``(seed, fold)``, shared by every model, written to
   ``OUT/splits/seed<s>[_fold<f>].json`` and handed to each run as ``data.split_file`` (the test split is the
   config's, unchanged). Without ``--folds`` the validation cases are carved as ``fit`` carves them
   (``data.val_fraction``, seeded by the run's seed), or the config's named ``data.val_split`` is used as it is;
   with ``--folds K`` the training cases are split K-fold (seeded by the run's seed: repeated K-fold) and fold
   ``f`` validates. Both keep each volume's slices on one side (slice case ids ``<volume>_slice_<k>``).
3. **Runs**, by a launcher: ``local`` (default) runs them one after another in this process; ``ray`` submits
   each run as a Ray task (``ray.init(address=...)``: a local cluster, or one started with ``ray start``;
   ``--gpus_per_run`` / ``--cpus_per_run`` reserve its resources), so a run may use its own GPU(s) and stays a
   plain Lightning run. A run whose trainer starts several processes (DDP: ``trainer.devices`` > 1, a ``ddp``
   strategy, several nodes) is started as its own ``python -m mambaseg fit ...`` process (``--subprocess``
   forces this for every run), because Lightning's DDP launcher re-runs the command line of its process: so
   multi-GPU DDP inside one run works as it does with ``fit``.
   Run again, the same command **resumes**: a run with its ``test/summary.json`` is never retrained; a run with
   ``checkpoints/last.ckpt`` continues from it (``fit --resume true``); a run directory with neither (killed
   before its first checkpoint) is moved aside to ``<run>.incomplete-<n>`` and started afresh.
4. **Results** (``OUT/results.csv``, ``OUT/results.json``, ``OUT/runs.csv``, ``OUT/table.md``, ``OUT/table.tex``,
   ``OUT/report.md`` with ``OUT/plots/dice_box.png``, ``OUT/commands.sh``): per model the mean and the sample
   standard deviation (ddof=1) over its runs of every metric in the runs' ``summary.json`` (which are aggregated
   as the config says, e.g. pooled over the test pixels; the aggregation and HD95 mode are stated); per-case
   paired tests of each model against the reference (first of ``--models`` or ``--reference``): Wilcoxon
   signed-rank (``scipy.stats.wilcoxon``, two-sided) on per-case Dice and HD95, where a case's value is its mean
   over the model's runs (seeds x folds; every model is tested on the same test cases), cases with a
   non-finite value for either model left out (counted); the p-values are Holm-corrected over all the tests of
   the report; effect size: matched-pairs rank-biserial correlation ``(W+ - W-) / (W+ + W-)`` of
   ``model - reference`` (positive: the model's values are higher; for HD95 lower is better).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mambaseg.data.splits import kfold_split, save_split
from mambaseg.models import list_models
from mambaseg.utils.convert import to_jsonable
from mambaseg.utils.fileio import atomic_open, atomic_path, atomic_write_text

from .configs import resolve_config_path
from .datamodule import _group_ids, carve_indices
from .errors import MambasegUserError, near_matches
from .run import build, fit

__all__ = ["RunSpec", "ComparePlan", "plan_compare", "run_compare", "run_one", "run_state", "aggregate",
           "paired_test", "holm", "rank_biserial", "fold_split", "parse_models", "parse_seeds", "COMPARE_OWNED_KEYS"]

#: config keys that ``compare`` sets itself for every run (refused among the pass-through overrides)
COMPARE_OWNED_KEYS = ("--model.model", "--model.model_kwargs", "--seed_everything", "--data.seed",
                      "--data.split_file", "--run_dir", "--resume", "--ckpt_path", "--test_after_fit",
                      "--config", "-c")
PAIRED_METRICS = ("dice", "hd95")
TABLE_METRICS = ("dice", "iou", "accuracy", "precision", "sensitivity", "specificity", "hd95", "asd")
_LABEL = {"dice": "DSC", "iou": "IoU", "accuracy": "Acc", "precision": "Pre", "sensitivity": "Sen",
          "specificity": "Spe", "hd95": "HD95", "asd": "ASD"}
_DISTANCES = ("hd", "hd95", "hd95_medpy", "hd95_monai", "asd", "assd")


# --------------------------------------------------------------------------------------------------------------
# plan
@dataclass
class RunSpec:
    """One (model, seed, fold) run: an ordinary ``mambaseg fit`` with these arguments."""
    label: str
    model: str
    seed: int
    fold: Optional[int]
    run_dir: str
    split_file: str
    argv: List[str]                        # `mambaseg fit` arguments (without --resume)
    subprocess: bool = False               # run as `python -m mambaseg fit ...` (multi-process DDP runs)

    @property
    def key(self) -> str:
        return f"{self.label}/{_run_name(self.seed, self.fold)}"


@dataclass
class ComparePlan:
    out: str
    config: str
    config_sha256: str
    labels: List[str]
    models: Dict[str, str]                 # label -> registry model
    model_kwargs: Dict[str, Dict[str, Any]]
    seeds: List[int]
    folds: Optional[int]
    reference: str
    overrides: List[str]
    launcher: str
    command: str
    protocol: Dict[str, Any] = field(default_factory=dict)
    runs: List[RunSpec] = field(default_factory=list)
    splits: Dict[str, Dict[str, List[str]]] = field(default_factory=dict)


def _run_name(seed: int, fold: Optional[int]) -> str:
    return f"seed{seed}" + ("" if fold is None else f"_fold{fold}")


def parse_models(text: str) -> List[Tuple[str, str]]:
    """``"vmunet,unet"`` or ``"small=unet,big=unet"`` -> [(label, registry model)]; labels must be unique."""
    out = []
    for item in [t.strip() for t in str(text).split(",") if t.strip()]:
        label, _, model = item.partition("=") if "=" in item else (item, "", item)
        label, model = label.strip(), model.strip()
        if not label or not model or "/" in label or label.startswith("."):
            raise MambasegUserError(f"--models: cannot read {item!r}; use registry names (vmunet,unet) or "
                                    "label=model pairs (small=unet)")
        out.append((label, model))
    if len(out) < 2:
        raise MambasegUserError(f"--models needs at least two models to compare, got {text!r}")
    labels = [lb for lb, _ in out]
    dup = sorted({lb for lb in labels if labels.count(lb) > 1})
    if dup:
        raise MambasegUserError(f"--models: label {dup[0]!r} appears twice; give each entry its own label "
                                "(small=unet,big=unet)")
    return out


def parse_seeds(text) -> List[int]:
    """``3`` -> [0, 1, 2]; ``"0,5,7"`` -> [0, 5, 7]."""
    s = str(text).strip()
    try:
        if "," in s:
            seeds = [int(t) for t in s.split(",") if t.strip()]
        else:
            n = int(s)
            if n < 1:
                raise ValueError
            seeds = list(range(n))
    except ValueError:
        raise MambasegUserError(f"--seeds must be a count N >= 1 (seeds 0..N-1) or a comma list (0,5,7), got "
                                f"{text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise MambasegUserError(f"--seeds must name distinct non-negative seeds, got {text!r}")
    return seeds


def fold_split(case_ids: Sequence[str], groups: Optional[Sequence[str]], k: int, fold: int,
               seed: int) -> Dict[str, List[str]]:
    """Fold ``fold`` of a seeded ``k``-fold split of the cases, whole groups (volumes) at a time:
    ``{"train": [case ids], "val": [case ids]}``. The groups are split with
    :func:`mambaseg.data.splits.kfold_split` (sklearn's shuffled KFold on the sorted group keys)."""
    keys = list(groups) if groups is not None else list(case_ids)
    uniq = sorted(set(keys))
    if len(uniq) < k:
        raise MambasegUserError(f"--folds {k}: the training split has only {len(uniq)} case(s)/volume(s); use "
                                f"at most {len(uniq)} folds")
    val_groups = set(kfold_split(uniq, k, fold, seed)["val"])
    return {"train": [c for c, g in zip(case_ids, keys) if g not in val_groups],
            "val": [c for c, g in zip(case_ids, keys) if g in val_groups]}


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _check_overrides(overrides: Sequence[str]) -> None:
    for a in overrides:
        key = a.split("=", 1)[0]
        if key in COMPARE_OWNED_KEYS:
            raise MambasegUserError(f"{key} is set by `mambaseg compare` for every run; use --models, "
                                    "--model_kwargs, --seeds or --out instead")


def _read_config_yaml(path: str) -> Dict[str, Any]:
    """The config as plain data; a YAML error (a ``!!python`` tag, bad syntax) is one line, never code run."""
    import yaml
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise MambasegUserError(f"--config {path!r} is not a plain YAML config ({' '.join(str(e).split())}); a "
                                "config holds data only (no !!python tags); nothing was run") from None
    if not isinstance(raw, dict):
        raise MambasegUserError(f"--config {path!r} holds a {type(raw).__name__}, not a mapping of config keys")
    return raw


def plan_compare(config: str, models: str, seeds="3", folds: Optional[int] = None, out: str = "runs/compare",
                 overrides: Sequence[str] = (), model_kwargs: Optional[Dict[str, Dict[str, Any]]] = None,
                 reference: Optional[str] = None, launcher: str = "local", command: str = "",
                 subprocess: Optional[bool] = None) -> ComparePlan:
    """Validate everything and build the plan (splits computed in memory); writes nothing.

    ``subprocess``: run each run as its own ``python -m mambaseg fit`` process; default: only when the trainer
    would start several processes (DDP: ``trainer.devices`` > 1 or ``auto``/-1 on a GPU machine, a ``ddp``
    strategy, several nodes), because Lightning's DDP launcher re-runs the command line of the process."""

    cfg_path = os.path.abspath(resolve_config_path(config))
    pairs = parse_models(models)
    seed_list = parse_seeds(seeds)
    known = list_models()
    for label, m in pairs:
        if m not in known:
            raise MambasegUserError(f"--models: unknown model {m!r}{near_matches(m, known)} (`mambaseg models` "
                                    "lists them)")
    labels = [lb for lb, _ in pairs]
    ref = reference or labels[0]
    if ref not in labels:
        raise MambasegUserError(f"--reference {ref!r} is not one of --models ({', '.join(labels)})")
    if folds is not None and int(folds) < 2:
        raise MambasegUserError(f"--folds must be >= 2 (or left out for one split per seed), got {folds}")
    if launcher not in ("local", "ray"):
        raise MambasegUserError(f"--launcher must be 'local' or 'ray', got {launcher!r}")
    if launcher == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise MambasegUserError("--launcher ray needs Ray: pip install 'mambaseg[compare]' (or pip install ray)"
                                    ) from None
    mk = dict(model_kwargs or {})
    bad = [k for k in mk if k not in labels]
    if bad:
        raise MambasegUserError(f"--model_kwargs names {bad[0]!r}, which is not one of --models ({', '.join(labels)})")
    if any(not isinstance(v, dict) for v in mk.values()):
        raise MambasegUserError("--model_kwargs must map each model label to a dict of keyword arguments, e.g. "
                                '\'{"unet": {"base_channels": 16}}\'')
    overrides = list(overrides)
    _check_overrides(overrides)
    out = os.path.abspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise MambasegUserError(f"--out {out!r} exists and is not a directory")

    raw = _read_config_yaml(cfg_path)
    cfg_model = (raw.get("model") or {}).get("model")
    cfg_kwargs = (raw.get("model") or {}).get("model_kwargs") or {}
    kwargs = {lb: dict(mk.get(lb, cfg_kwargs if m == cfg_model else {})) for lb, m in pairs}

    # parse + build every model once (bad keys / kwargs fail here, before any work)
    dms = {}
    for lb, m in pairs:
        cli = build(cfg_path, [*overrides, "--model.model", m, "--model.model_kwargs", json.dumps(kwargs[lb])],
                    trainer=False)  # parse + build model and data module as fit would; no trainer, no file
        dms[lb] = cli
    cli0 = dms[labels[0]]
    cfg = cli0.config
    data, model_cfg = cfg.data, cfg.model
    if data.upstream_select_on_test_split:
        raise MambasegUserError("compare selects models on validation data only; the config sets "
                                "data.upstream_select_on_test_split=true: pass --data.upstream_select_on_test_split "
                                "false")
    if str(model_cfg.select_on).startswith("upstream_"):
        raise MambasegUserError(f"compare selects models on validation data only; the config selects on "
                                f"{model_cfg.select_on!r}: pass --model.select_on val_dice (or val_loss)")
    if not data.test_split:
        raise MambasegUserError("compare tests on the config's held-out test split; the config has none: set "
                                "--data.test_split")
    dm = cli0.datamodule
    train_ds = dm.build(data.train_split, train=False)
    train_ids = [str(c) for c in train_ds.case_ids()]
    if len(set(train_ids)) != len(train_ids):
        raise MambasegUserError(f"the {data.train_split!r} split has repeated case ids; compare needs unique ids "
                                "to save the splits")
    groups = _group_ids(train_ds)
    volumes = groups is not None and len(set(groups)) < len(groups)   # slices of volumes: keep them together
    test_ids = [str(c) for c in dm.build(data.test_split, train=False).case_ids()]
    use_named_val = folds is None and data.val_split is not None
    val_ids_named = [str(c) for c in dm.build(data.val_split, train=False).case_ids()] if use_named_val else None

    splits: Dict[str, Dict[str, List[str]]] = {}
    for s in seed_list:
        for f in (range(int(folds)) if folds is not None else [None]):
            name = _run_name(s, f)
            if f is not None:
                sp = fold_split(train_ids, groups, int(folds), f, seed=s)
            elif use_named_val:
                sp = {"train": list(train_ids), "val": list(val_ids_named)}
            else:
                tr, va = carve_indices(len(train_ids), float(data.val_fraction), s, groups)
                sp = {"train": [train_ids[i] for i in tr], "val": [train_ids[i] for i in va]}
            if not sp["val"]:
                raise MambasegUserError("compare selects models on validation data, but the split has no "
                                        "validation cases: set --data.val_fraction > 0, data.val_split or --folds")
            sp["test"] = list(test_ids)
            splits[name] = sp

    if use_named_val:
        how_val = f"the config's {data.val_split!r} split (the same for every seed)"
    elif folds is not None:
        how_val = (f"fold f of a {folds}-fold split of the {data.train_split!r} cases, shuffled with the run's seed "
                   "(repeated K-fold)" + ("; whole volumes per fold" if volumes else ""))
    else:
        how_val = (f"{data.val_fraction:g} of the {data.train_split!r} cases carved with the run's seed"
                   + ("; whole volumes" if volumes else ""))
    protocol = {"dataset": data.dataset, "root": data.root, "train_split": data.train_split,
                "validation": how_val, "test_split": data.test_split, "n_test_cases": len(test_ids),
                "select_on": model_cfg.select_on, "aggregation": model_cfg.aggregation,
                "hd95_mode": model_cfg.hd95_mode, "max_epochs": cfg.trainer.max_epochs,
                "max_steps": cfg.trainer.max_steps, "image_size": data.image_size}

    plan = ComparePlan(out=out, config=cfg_path, config_sha256=_sha256(cfg_path), labels=labels,
                       models=dict(pairs), model_kwargs=kwargs, seeds=seed_list,
                       folds=None if folds is None else int(folds), reference=ref, overrides=overrides,
                       launcher=launcher, command=command, protocol=protocol, splits=splits)
    for lb, m in pairs:
        for name in splits:
            s = int(name.split("_")[0][4:])
            f = int(name.split("_fold")[1]) if "_fold" in name else None
            run_dir = os.path.join(out, "runs", lb, name)
            split_file = os.path.join(out, "splits", f"{name}.json")
            argv = ["fit", "--config", cfg_path, *overrides, "--model.model", m,
                    "--model.model_kwargs", json.dumps(kwargs[lb], sort_keys=True), "--seed_everything", str(s),
                    "--data.seed", str(s)]
            if not use_named_val:
                argv += ["--data.val_split", "null", "--data.split_file", split_file]
            argv += ["--run_dir", run_dir]
            plan.runs.append(RunSpec(lb, m, s, f, run_dir, split_file, argv,
                                     _multi_process(cfg.trainer) if subprocess is None else bool(subprocess)))
    _check_against_previous(plan)
    return plan


def _multi_process(trainer) -> bool:
    """Would this trainer config start several processes (DDP)?"""
    devices, strategy = trainer.get("devices", "auto"), str(trainer.get("strategy") or "auto")
    if int(trainer.get("num_nodes") or 1) > 1 or "ddp" in strategy and "spawn" not in strategy:
        return True
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    if str(devices) in ("auto", "-1"):
        try:
            import torch
            return torch.cuda.device_count() > 1
        except Exception:  # pragma: no cover
            return False
    d = str(devices)
    if "," in d:
        return len([x for x in d.split(",") if x.strip()]) > 1
    try:
        return int(d) > 1
    except ValueError:
        return False


def _check_against_previous(plan: ComparePlan) -> None:
    """A rerun into the same --out must mean the same runs (it may add models or seeds)."""
    path = os.path.join(plan.out, "plan.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return
    if old.get("folds") != plan.folds:
        raise MambasegUserError(f"{plan.out} holds a compare with folds={old.get('folds')}, this one has "
                                f"folds={plan.folds}; use another --out (nothing was changed)")
    old_runs = {r["label"] + "/" + _run_name(r["seed"], r["fold"]): r for r in old.get("runs", [])}
    for r in plan.runs:
        o = old_runs.get(r.key)
        if o is None:
            continue
        same = o["argv"][3:] == r.argv[3:] and old.get("config_sha256") == plan.config_sha256
        if not same and os.path.isdir(r.run_dir):
            raise MambasegUserError(f"{plan.out} already holds run {r.key} made with other settings (config or "
                                    "arguments differ); rerun with the same arguments to resume it, or use another "
                                    "--out (nothing was changed)")
    for name, sp in plan.splits.items():
        p = os.path.join(plan.out, "splits", f"{name}.json")
        if os.path.isfile(p):
            with open(p) as f:
                if json.load(f) != sp:
                    raise MambasegUserError(f"{p} holds another split than this compare computes (other data or "
                                            "split settings?); use another --out (nothing was changed)")


def _write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def write_plan(plan: ComparePlan) -> None:
    for name, sp in plan.splits.items():
        save_split(os.path.join(plan.out, "splits", f"{name}.json"), sp)
    data = asdict(plan)
    data.pop("splits")
    _write_json(os.path.join(plan.out, "plan.json"), data)
    lines = ["#!/bin/sh", "# the compare itself (rerun it to resume; finished runs are not retrained):",
             f"# {plan.command}" if plan.command else "#", "# each run is this `mambaseg fit` (add --resume true to "
             "continue a killed one):"]
    lines += ["mambaseg " + shlex.join(r.argv) for r in plan.runs]
    atomic_write_text(os.path.join(plan.out, "commands.sh"), "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------------------------
# runs
def run_state(run_dir: str) -> str:
    """``"done"`` (valid test/summary.json), ``"resume"`` (checkpoints/last.ckpt), ``"stale"`` (other files
    only) or ``"new"``."""
    summ = os.path.join(run_dir, "test", "summary.json")
    if os.path.isfile(summ) and os.path.isfile(os.path.join(run_dir, "test", "per_case.csv")):
        try:
            with open(summ) as f:
                if isinstance(json.load(f).get("metrics"), dict):
                    return "done"
        except (OSError, ValueError):
            pass
    if os.path.isfile(os.path.join(run_dir, "checkpoints", "last.ckpt")):
        return "resume"
    if os.path.isdir(run_dir) and any(True for _ in os.scandir(run_dir)):
        return "stale"
    return "new"


def _move_aside(run_dir: str) -> str:
    i = 1
    while os.path.exists(f"{run_dir}.incomplete-{i}"):
        i += 1
    dst = f"{run_dir}.incomplete-{i}"
    os.replace(run_dir, dst)
    return dst


def run_one(spec: Dict[str, Any], callbacks: Sequence[Any] = ()) -> Dict[str, Any]:
    """Train + test one run (a ``mambaseg fit`` in this process), resuming it where it stopped.

    ``spec`` is ``asdict(RunSpec)``; ``callbacks`` are extra Lightning callbacks (tests inject faults this way).
    Returns ``{"key", "state", "seconds"}``; raises if the run ends without its test summary."""
    run_dir = spec["run_dir"]
    key = f"{spec['label']}/{_run_name(spec['seed'], spec['fold'])}"
    state = run_state(run_dir)
    if state == "done":
        return {"key": key, "state": "done", "seconds": 0.0}
    argv = list(spec["argv"])
    if state == "stale":
        moved = _move_aside(run_dir)
        print(f"[compare] {key}: {run_dir} held an unfinished run without a checkpoint; moved to {moved}")
    if state == "resume":
        argv += ["--resume", "true"]
    print(f"[compare] {key}: {'resuming from checkpoints/last.ckpt' if state == 'resume' else 'training'}",
          flush=True)
    t0 = time.time()
    if spec.get("subprocess"):
        import subprocess
        if callbacks:
            raise ValueError("extra callbacks need an in-process run (subprocess=False)")
        env = dict(os.environ, PYTHONPATH=_pythonpath())  # the child imports this same mambaseg
        rc = subprocess.call([sys.executable, "-m", "mambaseg", *argv], env=env)
        if rc != 0:
            raise RuntimeError(f"run {key}: `mambaseg fit` exited with code {rc}; rerun the compare to resume")
    else:
        fit(overrides=argv[1:], callbacks=callbacks)  # argv: the run's documented `mambaseg fit ...` line
    if run_state(run_dir) != "done":
        raise RuntimeError(f"run {key} ended without test/summary.json (interrupted?); rerun the compare to resume")
    return {"key": key, "state": "resumed" if state == "resume" else "trained", "seconds": round(time.time() - t0, 2)}


def _pythonpath() -> str:
    """PYTHONPATH with the folder holding this ``mambaseg`` package first (for child processes / Ray workers)."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.pathsep.join(p for p in (pkg_parent, os.environ.get("PYTHONPATH", "")) if p)


def _launch_local(specs: List[RunSpec], log: Callable[[str], None]) -> List[Dict[str, Any]]:
    done = []
    for i, r in enumerate(specs, 1):
        log(f"[compare] run {i}/{len(specs)}: {r.key}")
        try:
            done.append(run_one(asdict(r)))
        except BaseException as e:
            log(f"[compare] run {r.key} stopped ({type(e).__name__}: {str(e)[:200]}); run the same command again "
                "to resume (finished runs are kept, this one continues from its last checkpoint)")
            raise
    return done


def _ray_entry(spec: Dict[str, Any]) -> Dict[str, Any]:  # runs in a Ray worker
    import torch
    cpus = os.environ.get("OMP_NUM_THREADS")
    if cpus and cpus.isdigit():
        torch.set_num_threads(max(1, int(cpus)))
    return run_one(spec)


def _launch_ray(specs: List[RunSpec], log: Callable[[str], None], address: Optional[str] = None,
                cpus_per_run: float = 1.0, gpus_per_run: float = 0.0) -> List[Dict[str, Any]]:
    import ray
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": _pythonpath()}})
    task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=1)(_ray_entry)
    pending = {task.remote(asdict(r)): r for r in specs}
    log(f"[compare] submitted {len(pending)} run(s) to Ray ({ray.cluster_resources()})")
    results, failures = [], []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            r = pending.pop(ref)
            try:
                res = ray.get(ref)
                results.append(res)
                log(f"[compare] {r.key}: {res['state']} ({res['seconds']} s)")
            except Exception as e:  # one failed run does not stop the others
                failures.append(f"{r.key}: {type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}")
                log(f"[compare] {r.key}: FAILED")
    if failures:
        raise RuntimeError("some runs failed (rerun the compare to resume them):\n  " + "\n  ".join(failures))
    return results


def run_compare(plan: ComparePlan, ray_address: Optional[str] = None, cpus_per_run: float = 1.0,
                gpus_per_run: float = 0.0, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Write the plan and splits, run every unfinished run with the plan's launcher, aggregate."""
    t0 = time.time()
    write_plan(plan)
    todo = [r for r in plan.runs if run_state(r.run_dir) != "done"]
    log(f"[compare] {len(plan.runs)} runs ({len(plan.labels)} models x {len(plan.seeds)} seeds"
        + (f" x {plan.folds} folds" if plan.folds else "") + f"), {len(plan.runs) - len(todo)} already finished"
        f", launcher {plan.launcher}")
    if todo:
        if plan.launcher == "ray":
            _launch_ray(todo, log, ray_address, cpus_per_run, gpus_per_run)
        else:
            _launch_local(todo, log)
    res = aggregate(plan.out, wall_seconds=time.time() - t0)
    log(f"\n{res['table_text']}\n\nreport: {os.path.join(plan.out, 'report.md')}")
    return res


# --------------------------------------------------------------------------------------------------------------
# statistics
def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm-Bonferroni adjusted p-values (step-down; monotone; capped at 1); NaN stays NaN and is not counted."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def rank_biserial(x: Sequence[float], y: Sequence[float]) -> float:
    """Matched-pairs rank-biserial correlation of ``x - y``: ``(W+ - W-) / (W+ + W-)`` with average ranks of the
    non-zero ``|x - y|`` (zero differences dropped, as Wilcoxon's default). 0 when all differences are 0."""
    from scipy.stats import rankdata
    d = np.asarray(x, float) - np.asarray(y, float)
    d = d[d != 0]
    if d.size == 0:
        return 0.0
    r = rankdata(np.abs(d))
    wp, wm = r[d > 0].sum(), r[d < 0].sum()
    return float((wp - wm) / (wp + wm))


def paired_test(x: Sequence[float], y: Sequence[float]) -> Dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of ``x`` vs ``y`` (scipy defaults), with the effect size."""
    from scipy.stats import wilcoxon
    x, y = np.asarray(x, float), np.asarray(y, float)
    d = x - y
    out = {"n": int(d.size), "n_nonzero": int((d != 0).sum()),
           "mean_diff": float(d.mean()) if d.size else float("nan"),
           "median_diff": float(np.median(d)) if d.size else float("nan"), "rank_biserial": rank_biserial(x, y)}
    if d.size == 0:
        out.update(statistic=float("nan"), pvalue=float("nan"), note="no cases")
    elif not (d != 0).any():
        out.update(statistic=0.0, pvalue=1.0, note="identical on every case")
    else:
        res = wilcoxon(x, y)
        out.update(statistic=float(res.statistic), pvalue=float(res.pvalue), note="")
    return out


# --------------------------------------------------------------------------------------------------------------
# results
def _float(v) -> float:
    if v is None or v == "":
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def read_per_case(path: str, metrics: Sequence[str] = PAIRED_METRICS,
                  regions: bool = False) -> Dict[str, Dict[str, float]]:
    """``per_case.csv`` -> {case_id: {metric: value}} (the class-mean columns; with ``regions``, also each region's
    columns of those metrics, ``dice/WT``, ``hd95/WT``, ... as region-based 3-D runs write them)."""
    out: Dict[str, Dict[str, float]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = list(metrics)
        if regions:
            cols += [c for m in metrics for c in (reader.fieldnames or []) if c.startswith(m + "/")]
        for row in reader:
            out[str(row.get("case_id"))] = {m: _float(row.get(m)) for m in cols}
    return out


def _mean_std(vals: Sequence[float]) -> Tuple[float, float, int]:
    a = np.asarray([v for v in vals if v is not None and math.isfinite(v)], float)
    if a.size == 0:
        return float("nan"), float("nan"), 0
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else float("nan"), int(a.size)


def _fmt(m: str, mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    scale, nd = (1.0, 2) if m in _DISTANCES else (100.0, 2)
    s = f"{scale * mean:.{nd}f}"
    return s + (f" ± {scale * std:.{nd}f}" if math.isfinite(std) else "")


def aggregate(out: str, wall_seconds: Optional[float] = None) -> Dict[str, Any]:
    """Read every run of ``OUT/plan.json`` and write results.csv / results.json / runs.csv / table.md / table.tex /
    report.md / plots/dice_box.png. Returns the results dict (plus ``table_text``)."""
    with open(os.path.join(out, "plan.json")) as f:
        plan = json.load(f)
    labels, ref = plan["labels"], plan["reference"]
    runs, missing = [], []
    for r in plan["runs"]:
        d = r["run_dir"]
        if run_state(d) != "done":
            missing.append(f"{r['label']}/{_run_name(r['seed'], r['fold'])}")
            continue
        with open(os.path.join(d, "test", "summary.json")) as f:
            summ = json.load(f)
        info = {}
        if os.path.isfile(os.path.join(d, "run.json")):
            with open(os.path.join(d, "run.json")) as f:
                info = json.load(f)
        runs.append({"label": r["label"], "model": r["model"], "seed": r["seed"], "fold": r["fold"], "run_dir": d,
                     "metrics": {k: _float(v) for k, v in (summ.get("metrics") or {}).items()},
                     "settings": summ.get("settings") or {},
                     "per_case": read_per_case(os.path.join(d, "test", "per_case.csv"),
                                               regions=bool((summ.get("settings") or {}).get("regions"))),
                     "params": info.get("params"), "fit_seconds": info.get("fit_seconds"),
                     "epochs": info.get("epochs")})
    if missing:
        raise RuntimeError(f"{len(missing)} run(s) not finished ({', '.join(missing[:4])}...); rerun the compare")

    metric_names: List[str] = []
    for r in runs:
        for k in r["metrics"]:
            if k not in metric_names:
                metric_names.append(k)
    per_model: Dict[str, Dict[str, Any]] = {}
    for lb in labels:
        rs = [r for r in runs if r["label"] == lb]
        stats = {}
        for m in metric_names:
            vals = [r["metrics"].get(m, float("nan")) for r in rs]
            mean, std, n = _mean_std(vals)
            stats[m] = {"mean": mean, "std": std, "n": n, "values": vals}
        per_model[lb] = {"model": plan["models"][lb], "model_kwargs": plan["model_kwargs"][lb], "n_runs": len(rs),
                         "params": rs[0]["params"] if rs else None, "metrics": stats}

    # per-case values: mean over each model's runs, cases common to all
    case_vals: Dict[str, Dict[str, Dict[str, float]]] = {}
    for lb in labels:
        acc: Dict[str, Dict[str, List[float]]] = {}
        for r in (r for r in runs if r["label"] == lb):
            for cid, vals in r["per_case"].items():
                for m, v in vals.items():
                    acc.setdefault(cid, {}).setdefault(m, []).append(v)
        case_vals[lb] = {cid: {m: float(np.mean(v)) for m, v in ms.items()} for cid, ms in acc.items()}
    # the paired metrics: the class means, plus each region's (BraTS WT / TC / ET) where every run reports them
    paired = list(PAIRED_METRICS)
    region_cols = None
    for r in runs:
        cols = {m for vals in r["per_case"].values() for m in vals} - set(PAIRED_METRICS)
        region_cols = cols if region_cols is None else region_cols & cols
    if region_cols:
        first = next(iter(runs[0]["per_case"].values()))
        paired += [m for m in first if m in region_cols]
    tests = []
    for lb in labels:
        if lb == ref:
            continue
        for m in paired:
            common = sorted(set(case_vals[lb]) & set(case_vals[ref]))
            pairs = [(case_vals[lb][c][m], case_vals[ref][c][m]) for c in common]
            finite = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
            t = paired_test([a for a, _ in finite], [b for _, b in finite])
            t.update(model=lb, reference=ref, metric=m, n_dropped_nonfinite=len(pairs) - len(finite))
            tests.append(t)
    for t, adj in zip(tests, holm([t["pvalue"] for t in tests])):
        t["pvalue_holm"] = adj

    settings = sorted({(r["settings"].get("aggregation"), r["settings"].get("hd95_mode")) for r in runs},
                      key=str)
    agg_note = "; ".join(f"aggregation={a}, hd95_mode={h}" for a, h in settings)
    results = {"plan": {k: plan[k] for k in ("config", "config_sha256", "labels", "models", "model_kwargs", "seeds",
                                             "folds", "reference", "overrides", "launcher", "command", "protocol")},
               "metric_semantics": agg_note, "std": "sample standard deviation (ddof=1) over the runs of a model",
               "per_model": per_model, "paired_tests": tests,
               "paired_tests_note": ("per-case values averaged over each model's runs (seeds x folds); Wilcoxon "
                                     "signed-rank, two-sided (scipy.stats.wilcoxon defaults); p-values Holm-"
                                     f"corrected over the {len(tests)} tests; effect size = matched-pairs "
                                     "rank-biserial r of model - reference (for HD95 lower is better)"),
               "runs": [{k: v for k, v in r.items() if k != "per_case"} for r in runs],
               "wall_seconds": None if wall_seconds is None else round(wall_seconds, 1)}
    _write_json(os.path.join(out, "results.json"), _clean(results))
    with atomic_open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "metric", "mean", "std", "n_runs", "values"])
        for lb in labels:
            for m, s in per_model[lb]["metrics"].items():
                w.writerow([lb, m, _num(s["mean"]), _num(s["std"]), s["n"], " ".join(_num(v) for v in s["values"])])
    with atomic_open(os.path.join(out, "runs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "seed", "fold", "run_dir", "fit_seconds", "epochs"] + metric_names)
        for r in runs:
            w.writerow([r["label"], r["seed"], "" if r["fold"] is None else r["fold"], os.path.relpath(r["run_dir"], out),
                        r["fit_seconds"], r["epochs"]] + [_num(r["metrics"].get(m)) for m in metric_names])
    with atomic_open(os.path.join(out, "paired_tests.csv"), "w", newline="") as f:
        keys = ["model", "reference", "metric", "n", "n_nonzero", "n_dropped_nonfinite", "mean_diff", "median_diff",
                "statistic", "pvalue", "pvalue_holm", "rank_biserial", "note"]
        w = csv.writer(f)
        w.writerow(keys)
        for t in tests:
            w.writerow([_num(t[k]) if isinstance(t[k], float) else t[k] for k in keys])
    # per-case table (model means over runs) for the box plot and for re-analysis
    with atomic_open(os.path.join(out, "per_case_mean.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "case_id"] + paired)
        for lb in labels:
            for cid in sorted(case_vals[lb]):
                w.writerow([lb, cid] + [_num(case_vals[lb][cid][m]) for m in paired])

    md, tex, txt = _tables(labels, per_model, agg_note, len(plan["seeds"]), plan["folds"])
    atomic_write_text(os.path.join(out, "table.md"), md + "\n")
    atomic_write_text(os.path.join(out, "table.tex"), tex + "\n")
    box = _box_plot(out, labels, case_vals)
    _write_report(out, plan, results, md, box)
    results["table_text"] = txt
    return results


def _num(v) -> str:
    if v is None:
        return ""
    v = float(v)
    return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else str(v))


def _clean(v):
    return to_jsonable(v)


def _tables(labels, per_model, agg_note, n_seeds, folds) -> Tuple[str, str, str]:
    head = ["model", "runs"] + [_LABEL[m] for m in TABLE_METRICS]
    rows = [[lb, str(per_model[lb]["n_runs"])] + [_fmt(m, per_model[lb]["metrics"].get(m, {}).get("mean", float("nan")),
                                                       per_model[lb]["metrics"].get(m, {}).get("std", float("nan")))
                                                  for m in TABLE_METRICS] for lb in labels]
    over = f"{n_seeds} seeds" + (f" x {folds} folds" if folds else "")
    note = (f"mean ± sample std (ddof=1) over {over} per model; DSC..Spe in %, HD95/ASD in physical units (pixels "
            f"when no spacing is known); {agg_note}")
    md = "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                   ["| " + " | ".join(r) + " |" for r in rows] + ["", note])
    tex_rows = [" & ".join(c.replace("±", r"$\pm$").replace("_", r"\_") for c in r) + r" \\" for r in rows]
    tex = "\n".join([r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\hline",
                     " & ".join(head) + r" \\", r"\hline", *tex_rows, r"\hline", r"\end{tabular}", f"% {note}"])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    txt = "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows] + ["", note])
    return md, tex, txt


def _box_plot(out: str, labels, case_vals) -> Optional[str]:
    data = [[v["dice"] for v in case_vals[lb].values() if math.isfinite(v["dice"])] for lb in labels]
    if not any(data):
        return None
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(labels), 3.8))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    rng = np.random.default_rng(0)
    for i, vals in enumerate(data, 1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(vals)), vals, s=6, alpha=0.5, color="k")
    ax.set_ylabel("per-case Dice (mean over runs)"), ax.set_title("Per-case Dice on the test split")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = os.path.join(out, "plots", "dice_box.png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def _collapse_notes(results) -> List[str]:
    """Runs whose test Dice is 0 (nothing or only wrong pixels predicted): say so, since the config's empty-mask
    policy may score their HD95 as 0, which reads as perfect."""
    bad = [f"{r['label']}/{_run_name(r['seed'], r['fold'])}" for r in results["runs"]
           if math.isfinite(r["metrics"].get("dice", float("nan"))) and r["metrics"]["dice"] <= 1e-12]
    if not bad:
        return []
    return [f"- **warning**: test Dice 0 in {len(bad)} run(s) ({', '.join(bad)}): the model predicted no correct "
            "foreground (collapsed?); under the config's empty-mask policy an empty prediction may score HD95 = 0, "
            "which pulls the HD95 mean down. Look at those runs before reading the HD95 column."]


def _write_report(out, plan, results, table_md, box) -> None:
    p = plan["protocol"]
    labels, ref = plan["labels"], plan["reference"]
    lines = [f"# mambaseg compare: {' vs '.join(labels)}", "",
             f"- config: `{plan['config']}` (sha256 {plan['config_sha256'][:12]}), overrides: "
             f"`{' '.join(plan['overrides']) or 'none'}`",
             f"- models: " + ", ".join(f"{lb} = `{plan['models'][lb]}` {json.dumps(plan['model_kwargs'][lb])}"
                                       for lb in labels),
             f"- seeds: {plan['seeds']}" + (f"; folds: {plan['folds']}" if plan["folds"] else "; no folds") +
             f"; {len(plan['runs'])} runs; launcher: {plan['launcher']}"
             + (f"; wall time of this invocation {results['wall_seconds']} s" if results.get("wall_seconds")
                is not None else "")
             + f"; sum of the runs' fit times {sum(float(r['fit_seconds'] or 0) for r in results['runs']):.0f} s",
             f"- data: {p['dataset']} (root {p['root']}); training cases: the {p['train_split']!r} split minus the "
             f"validation cases; validation: {p['validation']}; test: the {p['test_split']!r} split "
             f"({p['n_test_cases']} cases, the same for every run)",
             f"- model selection: `{p['select_on']}` on the validation cases only (best.ckpt), tested once on the "
             "test split; the same split for every model of one seed/fold (`splits/`)",
             f"- metrics: {results['metric_semantics']}; {results['std']}",] + _collapse_notes(results) + ["",
             "## Test metrics (mean ± std over runs)", "", table_md, "",
             f"## Paired tests against `{ref}` (per case)", "", results["paired_tests_note"] + ".", "",
             "| model | metric | cases | mean diff | median diff | W | p | p (Holm) | rank-biserial r |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in results["paired_tests"]:
        def f(v, nd=4):
            return "n/a" if v is None or not math.isfinite(v) else f"{v:.{nd}g}"
        n = f"{t['n']}" + (f" (+{t['n_dropped_nonfinite']} non-finite left out)" if t["n_dropped_nonfinite"] else "")
        lines.append(f"| {t['model']} | {t['metric']} | {n} | {f(t['mean_diff'])} | {f(t['median_diff'])} | "
                     f"{f(t['statistic'], 6)} | {f(t['pvalue'])} | {f(t['pvalue_holm'])} | {f(t['rank_biserial'], 3)} |")
    lines.append("")
    if box:
        lines += ["## Per-case Dice", "", f"![per-case Dice]({os.path.relpath(box, out)})", ""]
    lines += ["## Runs", "", "| model | seed | fold | DSC | HD95 | epochs | fit s | run |", "|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        d, h = r["metrics"].get("dice", float("nan")), r["metrics"].get("hd95", float("nan"))
        lines.append(f"| {r['label']} | {r['seed']} | {'' if r['fold'] is None else r['fold']} | "
                     f"{100 * d:.2f} | {h:.2f} | {r['epochs']} | {r['fit_seconds']} | "
                     f"`{os.path.relpath(r['run_dir'], out)}` |")
    lines += ["", "## Commands", "", "The compare (rerun it to resume; finished runs are not retrained):", "",
              "```bash", plan["command"] or "(called from Python)", "```", "",
              "Each run is an ordinary `mambaseg fit` (all of them in `commands.sh`), e.g.:", "", "```bash",
              "mambaseg " + shlex.join(plan["runs"][0]["argv"]), "```", "",
              "Files: `results.csv` / `results.json` (mean, std, every run's value), `runs.csv`, `paired_tests.csv`, "
              "`per_case_mean.csv`, `table.md`, `table.tex`, `splits/`, `runs/<model>/<seed>/` (each a full run "
              "directory with its own report).", ""]
    atomic_write_text(os.path.join(out, "report.md"), "\n".join(lines))
