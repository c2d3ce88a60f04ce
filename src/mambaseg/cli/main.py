"""The ``mambaseg`` command (also ``python -m mambaseg``).

Subcommands::

    mambaseg fit      --config CONFIG [--run_dir DIR] [--resume true] [--trainer.max_epochs N] ...   (LightningCLI)
    mambaseg validate --config CONFIG --ckpt_path RUN/checkpoints/best.ckpt
    mambaseg test     --config CONFIG --ckpt_path RUN/checkpoints/best.ckpt
    mambaseg predict  --ckpt RUN/checkpoints/best.ckpt --input IMAGES_OR_NIFTI... --out DIR
    mambaseg models   [--family mamba|baseline] [--profile]
    mambaseg datasets
    mambaseg check    --config CONFIG --data.root DIR [--data.check full]   (the data check of fit, alone)
    mambaseg demo     [--out DIR] [--fast]
    mambaseg profile  MODEL ...
    mambaseg compare  --config CONFIG --models a,b --seeds 3 [--folds 5] --out DIR [--launcher ray]

``CONFIG`` is a YAML path or the name of a shipped config (``mambaseg configs`` lists them; ``demo``,
``vmunet_isic17``, ...). Bad input (unknown model or key, missing path, mismatching checkpoint, a run directory that
already holds a run) ends with ``error: ...`` naming the problem and exit code 2; set ``MAMBASEG_DEBUG=1`` for the
traceback.

Exit codes: 0 done; 1 failure; 2 bad input, refused before any work (nothing written); 3 finished, but some inputs
were skipped (``predict``: unreadable files, listed in ``OUT/errors.txt``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import List, Optional

from mambaseg import __version__
from mambaseg.utils.errors import MambasegUserError

from . import compare_cmd, demo_cmd, export_cmd, predict_cmd, profile_cmd

# The CLI is the one layer that imports the engine, models and data inside the command that needs them: torch and
# Lightning take seconds to import, and `mambaseg --help` / `mambaseg configs` must not wait for them. The command
# modules (*_cmd.py) keep their top level light for the same reason (their add_parser runs for --help).

__all__ = ["main", "resolve_config_path", "list_configs", "config_dir"]


def __getattr__(name):  # config lookup lives in mambaseg.engine.configs; the old names here keep working
    if name in ("resolve_config_path", "list_configs", "config_dir"):
        from mambaseg.engine import configs
        return getattr(configs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

LIGHTNING_COMMANDS = ("fit", "validate", "test")
OWN_COMMANDS = ("predict", "models", "datasets", "configs", "demo", "profile")


def _rewrite_config_args(argv: List[str]) -> List[str]:
    from mambaseg.engine.configs import resolve_config_path
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in ("-c", "--config") and i + 1 < len(argv):
            out += [a, resolve_config_path(argv[i + 1])]
            i += 2
            continue
        if a == "--precision" or a.startswith("--precision="):  # fit/validate/test: --precision fp32|bf16
            v = argv[i + 1] if a == "--precision" and i + 1 < len(argv) else a.partition("=")[2]
            if v not in ("fp32", "bf16"):
                raise ValueError(f"--precision must be fp32 or bf16, got {v!r}")
            out.append("--trainer.precision=" + ("bf16-mixed" if v == "bf16" else "32-true"))
            i += 2 if a == "--precision" else 1
            continue
        if a.startswith("--config="):
            out.append("--config=" + resolve_config_path(a.split("=", 1)[1]))
        else:
            out.append(a)
        i += 1
    return out


# --------------------------------------------------------------------------------------------------------------
def _count_params(factory) -> int:
    """Parameter count without paying for weight init where possible (meta device), else on CPU."""
    import torch
    try:
        with torch.device("meta"):
            m = factory(in_channels=3, num_classes=1)
    except Exception:
        m = factory(in_channels=3, num_classes=1)
    return sum(p.numel() for p in m.parameters())


def _cmd_models(args) -> int:
    from mambaseg.models import list_models, model_info
    from mambaseg.profiling import profile_table
    from mambaseg.utils.errors import near_matches
    names = list_models(args.pattern, family=args.family)
    if not names:
        raise MambasegUserError(f"no registered model matches {args.pattern!r}"
                                f"{near_matches(args.pattern or '', list_models())}")
    if args.profile:
        if args.size is not None:
            from mambaseg.models.limits import check_input_size
            check_input_size([args.size, args.size], "--size")
        print(profile_table(names, size=args.size))
        return 0
    rows = [("model", "family", "size", "params", "paper")]
    for n in names:
        info = model_info(n)
        params = "-"
        if not args.no_params:
            try:
                params = f"{_count_params(info.factory) / 1e6:.2f} M"
            except Exception as e:  # a model that cannot be built: say why, keep listing
                params = f"? ({type(e).__name__}: {str(e)[:60]})"
        rows.append((n, info.family, str(info.default_size), params, info.paper))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))
    print("\n(params for 3 input channels and 1 output class; `mambaseg models --profile` adds FLOPs)")
    return 0


def _cmd_datasets(args) -> int:
    from mambaseg.data import list_datasets
    from mambaseg.data.transforms import PRESETS
    print("readers and synthetic data sets (use as data.dataset in a config):")
    for name, desc in list_datasets().items():
        print(f"  {name:<20} {str(desc).splitlines()[0] if desc else ''}")
    print("\ntransform presets (data.transforms):")
    for k, v in PRESETS.items():
        print(f"  {k:<20} {v}")
    return 0


def _cmd_configs(args) -> int:
    from mambaseg.engine.configs import config_dir, list_configs
    print(f"shipped configs ({config_dir()}):")
    for name in list_configs():
        with open(os.path.join(config_dir(), name + ".yaml")) as f:
            first = next((ln[1:].strip() for ln in f if ln.startswith("#")), "")
        print(f"  {name:<20} {first}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mambaseg", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="2D medical image segmentation with Mamba U-Nets: train, evaluate, predict, report.",
        epilog="examples:\n"
               "  mambaseg demo                                   # synthetic data, VM-UNet vs U-Net, report\n"
               "  mambaseg fit --config vmunet_isic17 --data.root data/isic2017 --run_dir runs/isic17\n"
               "  mambaseg test --config vmunet_isic17 --data.root data/isic2017 \\\n"
               "      --ckpt_path runs/isic17/checkpoints/best.ckpt\n"
               "  mambaseg predict --ckpt runs/isic17/checkpoints/best.ckpt --input images/ --out preds/\n"
               "fit / validate / test take LightningCLI options (`mambaseg fit --help`); `mambaseg configs` lists "
               "the shipped configs.")
    p.add_argument("--version", action="version", version=f"mambaseg {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, hlp in (("fit", "train a model from a YAML config (LightningCLI)"),
                      ("validate", "evaluate a checkpoint on the validation split"),
                      ("test", "evaluate a checkpoint on the test split (all eight metrics)")):
        sub.add_parser(name, help=hlp, add_help=False)
    m = sub.add_parser("models", help="list the registered models with their parameter counts")
    m.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'vmunet*'")
    m.add_argument("--family", choices=["mamba", "baseline"], default=None)
    m.add_argument("--profile", action="store_true", help="add FLOPs (mambaseg.profiling)")
    m.add_argument("--size", type=int, default=None, help="input size for --profile")
    m.add_argument("--no-params", action="store_true", help="skip building the models")
    sub.add_parser("datasets", help="list the data readers, synthetic sets and transform presets")
    sub.add_parser("configs", help="list the shipped configs")
    sub.add_parser("check", help="check the data of a config (every split, file, mask) without training",
                   add_help=False)
    sub.add_parser("compare", add_help=False,
                   help="models x seeds (x folds): mean ± std, paired tests, report (`mambaseg compare --help`)")
    predict_cmd.add_parser(sub)
    demo_cmd.add_parser(sub)
    export_cmd.add_parser(sub)
    profile_cmd.add_parser(sub)
    return p


def _user_errors():
    errs = [MambasegUserError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ValueError]
    return tuple(errs)


def _fresh_line() -> None:
    """End the line of a progress bar that an error interrupted (tqdm leaves the cursor after its last drawing),
    so that the ``mambaseg: error:`` line starts on a line of its own."""
    tqdm_cls = sys.modules.get("tqdm.std")
    bars = [b for b in list(getattr(getattr(tqdm_cls, "tqdm", None), "_instances", None) or [])
            if not getattr(b, "disable", True)]
    for b in bars:
        try:
            b.close()  # redraws it once and ends its line
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error
            pass
    if bars:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass


def _training_errors():
    from mambaseg.engine.errors import TrainingDivergedError
    return (TrainingDivergedError,)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input, 1 failure, 3 finished with skipped inputs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("MAMBASEG_DEBUG", "") not in ("", "0")
    try:
        if argv and argv[0] == "compare":  # models x seeds (x folds), mean ± std, paired tests (issue 20)
            return compare_cmd.main(argv[1:])
        if argv and argv[0] in LIGHTNING_COMMANDS:
            from mambaseg.engine.run import run_cli
            try:
                run_cli([argv[0]] + _rewrite_config_args(argv[1:]))
            except SystemExit as e:
                return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)
            return 0
        if argv and argv[0] == "check":  # the data check fit runs first, alone (same config and flags)
            from .check_cmd import run_check
            return run_check(_rewrite_config_args(argv[1:]))
        parser = _build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        if args.command == "models":
            return _cmd_models(args)
        if args.command == "datasets":
            return _cmd_datasets(args)
        if args.command == "configs":
            return _cmd_configs(args)
        if args.command == "predict":
            return predict_cmd.run(args)
        if args.command == "export":
            return export_cmd.run(args)
        if args.command == "demo":
            return demo_cmd.run(args)
        if args.command == "profile":
            return int(profile_cmd.run(args) or 0)
        parser.error(f"unknown command {args.command!r}")
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _training_errors() as e:  # training stopped on a non-finite loss: one line, exit 1
        if debug:
            traceback.print_exc()
        _fresh_line()
        print(f"mambaseg: error: {e}", file=sys.stderr)
        return 1
    except _user_errors() as e:
        if debug:
            traceback.print_exc()
        msg = str(e) or type(e).__name__
        _fresh_line()
        print(f"mambaseg: error: {msg}", file=sys.stderr)
        if not debug:
            print("(set MAMBASEG_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
