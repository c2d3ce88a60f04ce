"""Run a fit, a test or a prediction: the engine's run API, and the run policy behind ``mambaseg fit|validate|test``.

Python use (what ``mambaseg fit`` / ``test`` / ``predict``, ``mambaseg demo`` and ``mambaseg compare`` call)::

    from mambaseg.engine.run import fit, test, predict

    cli = fit("demo", {"run_dir": "runs/a", "trainer.max_epochs": 5, "model.model_kwargs": {"embed_dim": 32}})
    cli.model.test_results["summary"]["dice"]           # the test after fit (unless test_after_fit is false)
    test("demo", "runs/a/checkpoints/best.ckpt")        # writes runs/a/test-2/...
    predict("runs/a/checkpoints/best.ckpt", ["images/"], "preds/")

``config`` is a YAML path or the name of a shipped config (:mod:`mambaseg.engine.configs`); ``overrides`` a
mapping of dotted keys to values (non-strings are passed as JSON) or the flags ``mambaseg fit`` takes.

:class:`MambaSegCLI` is LightningCLI over ``SegmentationModule`` + ``SegDataModule``; on top of LightningCLI (YAML configs, ``--print_config``, ``--trainer.*`` overrides) this adds:

* ``--run_dir``: where a run lives (see ``mambaseg.engine.runs``); ``fit`` refuses a directory that already holds
  a run unless ``--resume true`` (continues from ``checkpoints/last.ckpt``); ``validate``/``test`` write into a
  fresh ``<run>/test``, ``<run>/test-2``, ... next to the checkpoint's run.
* CSV logging, ``last.ckpt`` + ``best.ckpt`` (selected as ``model.select_on`` says), ``run.json``.
* ``fit`` ends with a test of the best checkpoint on the held-out split (``--test_after_fit``), writing
  ``per_case.csv``, ``summary.json`` and ``report.md``.
* A checkpoint of another model / class count is refused before anything runs.
* ``fit`` checks every split it reads before the trainer writes anything (``--data.check header|full|none``,
  ``mambaseg.data.check``), listing every bad file at once.
* Checkpoints are data: read with ``weights_only=True`` (``mambaseg.engine.io``) before anything is built, and
  written atomically (``AtomicCheckpointIO``); ``--resume`` takes the newest checkpoint that reads; a run
  directory holding no checkpoint (a fit that failed early) is reused; a read-only run / output folder is
  refused before any work; Ctrl-C prints the command that resumes the run.
* Every training batch seeds its random generators from ``(seed, epoch, batch)`` (``RandomStateCallback``): a
  resumed run equals an uninterrupted one, drop path and dropout included.
* Unknown config keys are named with their near matches.
* ``fit`` locks its run directory (``mambaseg.engine.runlock``): a second process on it is refused in one line.
* A ``class_path`` or callable in a config resolves only inside lightning, torch, torchmetrics, mambaseg and
  what ``--allow_import PKG[,PKG]`` adds (``mambaseg.engine.allowlist``).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any, List, Mapping, Optional, Sequence, Union

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from mambaseg.data.hints import hint_style

from .allowlist import config_import_policy, denied_import_message, denied_path, pop_allow_flags
from .progress import progress_bar_callbacks
from .runlock import acquire as acquire_run_lock, acquire_free_dir

from .configs import resolve_config_path
from .datamodule import SegDataModule
from .devices import check_accelerator, check_device
from .errors import MambasegUserError, close_matches
from .io import AtomicCheckpointIO, check_mambaseg_checkpoint, check_writable, load_checkpoint
from .module import SegmentationModule, check_checkpoint_compatible
from .precision import with_precision
from .predict import PredictResult, load_module, predict_paths
from .runs import (RandomStateCallback, ResumeHintCallback, RunInfoCallback, check_run_dir, is_child_process,
                   make_checkpoint_callbacks, next_free_dir, write_test_outputs)

__all__ = ["fit", "test", "validate", "predict", "build", "config_args", "MambaSegCLI", "MambaSegArgumentParser",
           "run_cli"]

_KEY_PATTERNS = (
    re.compile(r"Key ['\"]([\w.\-]+)['\"] is not expected"),
    re.compile(r"No action for key ['\"]([\w.\-]+)['\"]"),
    re.compile(r"[Uu]nrecognized arguments:\s*(--[\w.\-]+)"),
    re.compile(r"['\"]([\w.\-]+)['\"] is not a valid"),
    re.compile(r"does not accept option ['\"]([\w.\-]+)['\"]"),
)


def _all_keys(parser, _depth: int = 0) -> List[str]:
    keys = []
    try:
        sub = getattr(parser, "_subcommands_action", None)
        if sub is not None and _depth < 2:
            for p in getattr(sub, "_name_parser_map", {}).values():
                keys += _all_keys(p, _depth + 1)
        for action in parser._actions:
            for opt in action.option_strings:
                if opt.startswith("--"):
                    keys.append(opt[2:])
            dest = getattr(action, "dest", None)
            if dest and dest not in ("help",):
                keys.append(dest)
    except Exception:  # pragma: no cover - best effort
        pass
    return sorted(set(keys))


def _one_line(message: str) -> str:
    """jsonargparse's (multi-line) message on one line; a bad value as ``invalid value 'x' for --key (expected
    int or null)``."""
    flat = " ".join(message.split())
    key = re.search(r'Parser key "([^"]+)":', flat)
    given = re.search(r"(?:Given|Got) value: (.*?)\.?$", flat)
    if key and given:
        types = re.findall(r"Expected an? <class '(\w+)'>", flat)
        types = list(dict.fromkeys("null" if t == "NoneType" else t for t in types))
        expected = f" (expected {' or '.join(types)})" if types else ""
        return f"invalid value {given.group(1)!r} for --{key.group(1)}{expected}"
    return flat


class MambaSegArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one line: the unknown key with its near matches (no usage dump)."""

    def error(self, message: str, ex: Optional[Exception] = None):
        try:
            from jsonargparse._common import debug_mode_active
        except ImportError:  # pragma: no cover - another jsonargparse layout
            debug_mode_active = lambda: False  # noqa: E731
        if not getattr(self, "exit_on_error", True) or debug_mode_active():
            return super().error(message, ex)  # an inner parse that raises; the outer parser reports it
        parser = getattr(ex, "subcommand_parser", None) or self
        lines = []
        if denied_path(message) or denied_path(ex):  # a config naming code outside the allow-list
            lines.append(denied_import_message(denied_path(message) or denied_path(ex)))
        for pat in _KEY_PATTERNS if not lines else ():
            for m in pat.finditer(str(message)):
                key = m.group(1).lstrip("-")
                choices = _all_keys(parser) or _all_keys(self)
                prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
                pool = [c for c in choices if c.startswith(prefix)] or choices
                near = close_matches(key, pool, n=3, cutoff=0.6)
                dash = "" if key in str(message) and "--" + key not in str(message) else "--"
                what = "option" if dash else "config key"
                if near:
                    lines.append(f"unknown {what} '{dash}{key}'; did you mean "
                                 f"{', '.join(repr(dash + n) for n in near)}?")
                else:
                    lines.append(f"unknown {what} '{dash}{key}'; `mambaseg fit --help` lists the valid options")
        if not lines:
            lines = [_one_line(str(message))]
        self._logger.error(message)
        sys.stderr.write("".join(f"mambaseg: error: {ln}\n" for ln in dict.fromkeys(lines)))
        self.exit(2)


class MambaSegCLI(LightningCLI):
    """The ``fit``/``validate``/``test`` subcommands (``predict`` is ``mambaseg.cli.predict_cmd``)."""

    def __init__(self, args=None, run: bool = True, **kwargs):
        self._out_dir: Optional[str] = None
        self._resume_from: Optional[str] = None
        self._ckpt_data = None  # (path, {"hyper_parameters": ...}) of the checkpoint read up front
        if isinstance(args, (list, tuple)):  # --allow_import PKG: packages a config may name code from
            args, allow = pop_allow_flags(args)
        else:
            allow = []
        self._args = [str(a) for a in args] if isinstance(args, (list, tuple)) else []
        self._run_lock = None  # fit: this process's lock on the run directory (mambaseg.engine.runlock)
        self._import_policy = config_import_policy(allow)
        self._import_policy.__enter__()
        try:
            super().__init__(SegmentationModule, SegDataModule, args=args, run=run, seed_everything_default=42,
                             parser_class=MambaSegArgumentParser, load_from_checkpoint_support=False,
                             auto_configure_optimizers=False, save_config_kwargs={"overwrite": True},
                             parser_kwargs={"default_env": False, "prog": "mambaseg"}, **kwargs)
        finally:
            self._import_policy.__exit__(None, None, None)
            if self._run_lock is not None:
                self._run_lock.release()

    def parse_arguments(self, parser, args) -> None:
        # as LightningCLI's, without its warning about sys.argv (our main() always passes args explicitly)
        from jsonargparse import Namespace
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would silently replace the configured model with the checkpoint's hyper-parameters; we
        # keep the config and refuse a checkpoint of another network instead (``_check_ckpt``).
        return

    def subcommands(self):  # predict is our own command (folders / NIfTI -> PNG / NIfTI)
        s = dict(LightningCLI.subcommands())
        s.pop("predict", None)
        return s

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_dir", type=Optional[str], default=None,
                            help="run directory (fit: default runs/<model>-<time>; test/validate: next to the "
                                 "checkpoint's run)")
        parser.add_argument("--resume", type=bool, default=False,
                            help="fit: continue the run in --run_dir from its checkpoints/last.ckpt")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="fit: evaluate the best checkpoint on the test split and write the report")
        parser.link_arguments("data.image_size", "model.image_size")
        parser.link_arguments("data.transforms", "model.preprocess")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_channels", "model.in_channels", apply_on="instantiate")
        # region-based training (BraTS WT/TC/ET): the data set declares its regions (data.region_based picks it)
        parser.link_arguments("data.regions", "model.regions", apply_on="instantiate")
        parser.link_arguments("data.region_names", "model.region_names", apply_on="instantiate")

    # ----------------------------------------------------------------------------------------------------------
    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        cfg = self.config[sub] if sub else self.config
        child = is_child_process()
        trainer_cfg = cfg.get("trainer") or {}
        check_accelerator(trainer_cfg.get("accelerator"), trainer_cfg.get("devices"))
        if sub is None:  # run=False (Python use): no run-directory policy, nothing is written here
            self._out_dir = cfg.get("run_dir") or os.path.join("runs", "interactive")
        elif sub == "fit":
            run_dir = cfg.get("run_dir") or (os.environ.get("MAMBASEG_RUN_DIR") if child else None) or \
                os.path.join("runs", f"{cfg.model.model}-{time.strftime('%Y%m%d-%H%M%S')}")
            os.environ["MAMBASEG_RUN_DIR"] = run_dir  # DDP children (started later) inherit the same directory
            if not child:
                # a read-only run folder is refused before anything is read, built or written
                check_writable(run_dir, "run directory", "--run_dir")
                check_writable(os.path.join(run_dir, "checkpoints"), "checkpoint folder", "--run_dir")
                self._run_lock = acquire_run_lock(run_dir, command="mambaseg " + " ".join(self._args))
                resume_ckpt = check_run_dir(run_dir, bool(cfg.get("resume")))
                if resume_ckpt and not cfg.get("ckpt_path"):
                    cfg.ckpt_path = resume_ckpt
                self._resume_from = resume_ckpt
                if resume_ckpt:
                    os.environ["MAMBASEG_RESUME_CKPT"] = resume_ckpt
            elif cfg.get("resume"):
                self._resume_from = os.environ.get("MAMBASEG_RESUME_CKPT") or \
                    os.path.join(run_dir, "checkpoints", "last.ckpt")
                cfg.ckpt_path = cfg.get("ckpt_path") or self._resume_from
            self._out_dir = run_dir
        else:
            ckpt = cfg.get("ckpt_path")
            base = cfg.get("run_dir")
            if base is None and ckpt and os.path.basename(os.path.dirname(os.path.abspath(ckpt))) == "checkpoints":
                base = os.path.dirname(os.path.dirname(os.path.abspath(ckpt)))
            base = base or os.path.join("runs", "eval")
            self._out_dir = os.path.join(base, sub) if child else next_free_dir(os.path.join(base, sub))
            if not child:
                check_writable(self._out_dir, f"{sub} output folder", "--run_dir")
                # locked, so that two evaluations started at once never share a folder
                self._out_dir, self._run_lock = acquire_free_dir(os.path.join(base, sub), next_free_dir,
                                                                 f"{sub} output folder", "--run_dir")
        cfg.trainer.default_root_dir = self._out_dir
        ckpt = cfg.get("ckpt_path") if sub else None
        if ckpt and ckpt not in ("best", "last"):
            # read (weights_only=True) and recognised before any model, data or file is made
            if self._ckpt_data is None or self._ckpt_data[0] != ckpt:
                data = load_checkpoint(ckpt)
                check_mambaseg_checkpoint(data, ckpt)
                self._ckpt_data = (ckpt, {"hyper_parameters": data.get("hyper_parameters")})

    def instantiate_trainer(self, **kwargs: Any):
        sub = self.subcommand
        trainer_cfg = self._get(self.config_init, "trainer", default={}) or {}
        callbacks = list(trainer_cfg.get("callbacks") or [])
        if sub == "fit":
            seed = self._get(self.config, "seed_everything")
            seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
            callbacks += make_checkpoint_callbacks(self._out_dir, self.model.hparams.select_on)
            callbacks += [RandomStateCallback(seed), RunInfoCallback(self._out_dir),
                          ResumeHintCallback(self._out_dir, self._args)]
        callbacks += progress_bar_callbacks(trainer_cfg, callbacks)  # without the meaningless v_num
        kwargs.setdefault("callbacks", callbacks)
        # every checkpoint is written atomically and read with weights_only=True (mambaseg.engine.io)
        plugins = trainer_cfg.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(hasattr(p, "save_checkpoint") and hasattr(p, "load_checkpoint") for p in plugins):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins
        if sub in ("validate", "test"):
            kwargs["enable_checkpointing"] = False  # evaluation writes no checkpoints
        if trainer_cfg.get("logger") in (None, True):
            # a resumed run logs into its own sub-folder (CSVLogger would otherwise replace metrics.csv)
            version = f"resume-{time.strftime('%Y%m%d-%H%M%S')}" if self._resume_from else ""
            kwargs["logger"] = CSVLogger(self._out_dir, name="", version=version)
        kwargs["default_root_dir"] = self._out_dir
        strategy = trainer_cfg.get("strategy")
        if strategy == "ddp" and self.model.hparams.model in ("vmunet_v2",):
            kwargs["strategy"] = "ddp_find_unused_parameters_true"  # V2's last encoder stage gets no gradient
        try:
            return super().instantiate_trainer(**kwargs)
        except MisconfigurationException as e:  # e.g. an accelerator / devices / strategy this machine lacks
            raise MambasegUserError(f"trainer: {' '.join(str(e).split())}") from None

    # ----------------------------------------------------------------------------------------------------------
    def _check_ckpt(self) -> None:
        ckpt = self.config_init[self.subcommand].get("ckpt_path")
        if not ckpt or ckpt in ("best", "last"):
            return
        if self._ckpt_data is not None and self._ckpt_data[0] == ckpt:
            data = self._ckpt_data[1]
        else:
            data = load_checkpoint(ckpt)  # weights_only=True: a checkpoint is data, never code
            check_mambaseg_checkpoint(data, ckpt)
        check_checkpoint_compatible(data, self.model.hparams, where=f"checkpoint {ckpt!r}")

    def before_fit(self) -> None:
        self._check_data()
        self._check_ckpt()

    def _check_data(self) -> None:
        # every split fit will read, before the trainer writes anything into the run directory
        if is_child_process() or not hasattr(self.datamodule, "raise_if_bad"):
            return
        cfg = self.config_init["fit"]
        self.datamodule.raise_if_bad(include_test=bool(cfg.get("test_after_fit")),
                                     where=f" (nothing was written to {self._out_dir})")

    def before_validate(self) -> None:
        self._check_ckpt()

    def before_test(self) -> None:
        self._check_ckpt()

    def after_fit(self) -> None:
        cfg = self.config_init["fit"]
        trainer = self.trainer
        if trainer.interrupted or not cfg.get("test_after_fit") or not self.datamodule.hparams.test_split:
            return
        ckpt_cb = trainer.checkpoint_callback
        ckpt = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
        trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt, weights_only=True)
        if trainer.global_rank == 0:
            sel = self.model.hparams.select_on
            notes = [f"model selection: {sel} ({'best' if ckpt else 'last'} checkpoint)",
                     f"data: {self.datamodule.describe()}"]
            write_test_outputs(self.model, os.path.join(self._out_dir, "test"), run_dir=self._out_dir, notes=notes)

    def after_test(self) -> None:
        if self.trainer.global_rank == 0:
            ckpt = self.config_init["test"].get("ckpt_path")
            write_test_outputs(self.model, self._out_dir, notes=[f"checkpoint: {ckpt}"], log_dir=_training_run(ckpt))


def _training_run(ckpt: Optional[str]) -> Optional[str]:
    """The run directory of ``RUN/checkpoints/x.ckpt`` when it holds the training log (for the report's curves)."""
    if not ckpt or ckpt in ("best", "last"):
        return None
    d = os.path.dirname(os.path.abspath(ckpt))
    run = os.path.dirname(d)
    return run if os.path.basename(d) == "checkpoints" and os.path.isfile(os.path.join(run, "metrics.csv")) else None


def run_cli(args: List[str]) -> MambaSegCLI:
    """``mambaseg fit|validate|test ARGS`` (``args[0]`` is the subcommand), with fix hints in flag syntax."""
    with hint_style("cli"):  # fix hints in flag syntax (--data.dataset_kwargs '{...}'), not Python keywords
        return MambaSegCLI(args=args)


# ----------------------------------------------------------------------------------------------------------------
# the run API
Overrides = Union[Mapping[str, Any], Sequence[str], None]


def config_args(config: Optional[str] = None, overrides: Overrides = None) -> List[str]:
    """The parser arguments of ``config`` (a YAML path or a shipped config's name) plus ``overrides``: a mapping
    ``{"trainer.max_epochs": 5, "model.model_kwargs": {...}}`` (values that are not strings go as JSON) or a list
    of flags as ``mambaseg fit`` takes them."""
    args: List[str] = []
    if config is not None:
        args += ["--config", resolve_config_path(str(config))]
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            key = str(key)
            args += [key if key.startswith("-") else "--" + key,
                     value if isinstance(value, str) else json.dumps(value)]
    elif overrides is not None:
        if isinstance(overrides, str):
            raise TypeError("overrides is a mapping or a list of flags, not one string")
        args += [str(a) for a in overrides]
    return args


def _extra(callbacks: Sequence[Any]) -> dict:
    return {"trainer_defaults": {"callbacks": list(callbacks)}} if callbacks else {}


def fit(config: Optional[str] = None, overrides: Overrides = None, *, callbacks: Sequence[Any] = ()) -> MambaSegCLI:
    """Train as ``mambaseg fit`` does (run directory, ``resume``, checkpoints, the data check first, then the test
    of the best checkpoint and its report unless ``test_after_fit`` is false). ``callbacks``: extra Lightning
    callbacks. Returns the finished :class:`MambaSegCLI` (``.model``, ``.datamodule``, ``.trainer``;
    ``.model.test_results`` holds the test after fit)."""
    return MambaSegCLI(args=["fit", *config_args(config, overrides)], **_extra(callbacks))


def test(config: Optional[str] = None, ckpt_path: Optional[str] = None, overrides: Overrides = None, *,
         callbacks: Sequence[Any] = ()) -> MambaSegCLI:
    """Evaluate ``ckpt_path`` on the test split as ``mambaseg test`` does (a fresh ``<run>/test-N`` folder with
    ``per_case.csv``, ``summary.json``, ``report.md``)."""
    args = ["test", *config_args(config, overrides)]
    if ckpt_path is not None:
        args += ["--ckpt_path", str(ckpt_path)]
    return MambaSegCLI(args=args, **_extra(callbacks))


def validate(config: Optional[str] = None, ckpt_path: Optional[str] = None,
             overrides: Overrides = None) -> MambaSegCLI:
    """As :func:`test`, on the validation split (``mambaseg validate``)."""
    args = ["validate", *config_args(config, overrides)]
    if ckpt_path is not None:
        args += ["--ckpt_path", str(ckpt_path)]
    return MambaSegCLI(args=args)


def build(config: Optional[str] = None, overrides: Overrides = None, trainer: bool = True,
          cli_class: Optional[type] = None) -> MambaSegCLI:
    """Parse ``config`` + ``overrides`` and build the model and data module exactly as ``fit`` would, without
    running anything or writing any file (no run directory). ``trainer=False`` skips building the trainer too;
    ``cli_class``: a :class:`MambaSegCLI` subclass to use instead."""
    cls = cli_class or MambaSegCLI
    if not trainer:
        class _NoTrainer(cls):
            def instantiate_trainer(self, **kwargs):
                return None
        cls = _NoTrainer
    return cls(args=config_args(config, overrides), run=False)


def predict(ckpt: str, inputs: Sequence[str], out_dir: str, *, overlays: bool = True,
            threshold: Optional[float] = None, device: str = "cpu", precision: str = "fp32", progress: bool = True,
            overwrite: bool = False) -> PredictResult:
    """Predict masks for ``inputs`` (image / NIfTI files or folders) with a checkpoint or pretrained folder, as
    ``mambaseg predict`` does: the device and the output folder are checked before the checkpoint is read, an
    output folder holding predictions is refused unless ``overwrite``; unreadable inputs are skipped and listed in
    the result (and ``OUT/errors.txt``)."""
    check_device(device)
    check_writable(out_dir, "output folder", "--out")  # before the checkpoint is read or anything is written
    if not overwrite:
        for sub in ("masks", "overlays"):
            d = os.path.join(out_dir, sub)
            if os.path.isdir(d) and any(True for _ in os.scandir(d)):
                raise FileExistsError(f"{d} already holds predictions; choose another --out, or pass --overwrite "
                                      "to replace files of the same name (nothing was written)")
    lock = acquire_run_lock(out_dir, "output folder", "--out", command="mambaseg predict")  # one predict per --out
    try:
        module = load_module(ckpt, device=device)
        if precision != "fp32":
            module.net = with_precision(module.net, precision)
        return predict_paths(module, inputs, out_dir, overlays=overlays, threshold=threshold, progress=progress,
                             device=device, overwrite=overwrite)
    finally:
        if lock is not None:
            lock.release()
