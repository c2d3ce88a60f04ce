"""``mambaseg compare``: several models x seeds (x folds) under one config, mean ± std, paired tests, report.

    mambaseg compare --config CONFIG --models vmunet,vmunet_v2,unet --seeds 3 [--folds 5] --out DIR
                     [--reference unet] [--model_kwargs JSON] [--launcher local|ray] [fit overrides ...]

Every other ``--key value`` is passed to each run's ``mambaseg fit`` (e.g. ``--trainer.max_epochs 50``).
Run the same command again to resume: finished runs are not retrained, killed ones continue from their last
checkpoint. See ``mambaseg.engine.compare`` for the protocol and the statistics.
"""

from __future__ import annotations

import argparse
import json
import shlex
from typing import List

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mambaseg compare", formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        description="Train and test several models over seeds (and folds) under one config's protocol (model "
                    "selection on validation data only), then report mean ± std over runs and per-case Wilcoxon "
                    "signed-rank tests (Holm-corrected, with effect sizes) against a reference model.",
        epilog="other --key value arguments go to every run's `mambaseg fit` (e.g. --trainer.max_epochs 50).\n"
               "example:\n  mambaseg compare --config demo --models vmunet,unet --seeds 3 --out runs/cmp "
               "--model_kwargs '{\"unet\": {\"base_channels\": 16}}'")
    p.add_argument("--config", "-c", required=True, help="YAML path or shipped config name (`mambaseg configs`)")
    p.add_argument("--models", required=True, help="comma-separated registry names, or label=model pairs")
    p.add_argument("--seeds", default="3", help="N (seeds 0..N-1) or a comma list (default 3)")
    p.add_argument("--folds", type=int, default=None, help="K-fold split of the training cases (fold f validates)")
    p.add_argument("--out", required=True, help="output folder (rerun with the same folder to resume)")
    p.add_argument("--reference", default=None, help="model label the others are tested against (default: first)")
    p.add_argument("--model_kwargs", default=None,
                   help="JSON {label: {kwarg: value}}; default: the config's model_kwargs for the config's own "
                        "model, none for the others")
    p.add_argument("--launcher", choices=["local", "ray"], default="local",
                   help="local: one run after another here; ray: one Ray task per run (pip install mambaseg[compare])")
    p.add_argument("--subprocess", action="store_true", default=None,
                   help="run each run as its own `python -m mambaseg fit` process (automatic for multi-process DDP "
                        "runs: trainer.devices > 1)")
    p.add_argument("--ray_address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local one)")
    p.add_argument("--cpus_per_run", type=float, default=1.0, help="Ray: CPUs reserved per run")
    p.add_argument("--gpus_per_run", type=float, default=0.0, help="Ray: GPUs reserved per run")
    return p


def main(argv: List[str]) -> int:
    from mambaseg.engine.compare import plan_compare, run_compare
    from mambaseg.engine.errors import MambasegUserError
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    bad = [a for a in overrides if a.startswith("-") and not a.startswith("--")]
    if bad:
        raise MambasegUserError(f"compare: unknown option {bad[0]!r}; `mambaseg compare --help` lists the options")
    mk = None
    if args.model_kwargs:
        try:
            mk = json.loads(args.model_kwargs)
        except ValueError as e:
            raise MambasegUserError(f"--model_kwargs is not valid JSON ({e}); e.g. '{{\"unet\": "
                                    f"{{\"base_channels\": 16}}}}'") from None
        if not isinstance(mk, dict):
            raise MambasegUserError("--model_kwargs must be a JSON object {label: {kwarg: value}}")
    command = "mambaseg " + shlex.join(["compare", *argv])
    from mambaseg.engine.io import check_writable
    from mambaseg.engine.runlock import acquire
    check_writable(args.out, "compare output folder", "--out")  # read-only: refused before any work
    plan = plan_compare(args.config, args.models, args.seeds, args.folds, args.out, overrides, mk,
                        args.reference, args.launcher, command=command, subprocess=args.subprocess)
    lock = acquire(plan.out, "compare output folder", "--out", command=command)  # one compare per --out
    try:
        run_compare(plan, ray_address=args.ray_address, cpus_per_run=args.cpus_per_run,
                    gpus_per_run=args.gpus_per_run)
    finally:
        if lock is not None:
            lock.release()
    return 0
