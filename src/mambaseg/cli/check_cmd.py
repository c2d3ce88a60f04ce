"""``mambaseg check --config CONFIG [--data.* ...] [--data.check full]``: the data check ``fit`` runs before
training, alone. Prints per split what it found (samples, files, sizes, classes present) and every problem; exit 0
when clean, 2 otherwise. Reads the same config and flags as ``fit`` (model and trainer keys are accepted and only
the model's input-size rule is used); writes nothing."""

from __future__ import annotations

import sys
from typing import List

import torch

from mambaseg.data.hints import hint_style
from mambaseg.engine.datamodule import SegDataModule
from mambaseg.engine.module import check_image_size
from mambaseg.engine.run import MambaSegCLI, build
from mambaseg.models import create_model

__all__ = ["run_check"]


def _divisor(model: str, model_kwargs, in_channels: int):
    try:
        with torch.device("meta"):
            net = create_model(model, in_channels=in_channels, num_classes=1, **dict(model_kwargs or {}))
    except Exception:
        return None  # the model's own errors are fit's business; the check only reads its size rule
    return net.downsample_factor  # the model contract's size rule (mambaseg.models.contract)


def run_check(args: List[str]) -> int:
    with hint_style("cli"):
        return _run(args)


def _run(args: List[str]) -> int:
    class _CheckCLI(MambaSegCLI):
        def before_instantiate_classes(self) -> None:  # no run directory: check writes nothing
            return

        def instantiate_classes(self) -> None:
            self.config_init = None

        def _set_seed(self) -> None:
            return

    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip() + "\n\nAll `mambaseg fit` options are accepted (`mambaseg fit --help`).")
        return 0
    cli = build(overrides=args, cli_class=_CheckCLI)
    cfg = cli.config
    data_kw = cfg["data"].as_dict() if hasattr(cfg["data"], "as_dict") else dict(cfg["data"])
    dm = SegDataModule(**data_kw)
    mcfg = cfg["model"]
    div = _divisor(mcfg["model"], mcfg.get("model_kwargs"), data_kw.get("in_channels") or 3)
    check_image_size(data_kw.get("image_size", 256), div, mcfg["model"])
    mode = data_kw.get("check") or "header"
    if mode == "none":
        mode = "header"
    report = dm.check_data(mode=mode, include_test=True)
    print(report.summary())
    if report.ok:
        print("no problems found")
        return 0
    print(f"\n{len(report.problems)} problem(s):", file=sys.stderr)
    for p in report.problems:
        print(f"  {p}", file=sys.stderr)
    return 2
