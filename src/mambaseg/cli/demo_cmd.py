"""``mambaseg demo`` (``make demo``): synthetic-skin -> train VM-UNet and a U-Net baseline -> test -> report.

Runs the shipped ``demo.yaml`` through the engine's run API (``mambaseg.engine.run.fit``, the path of
``mambaseg fit``) once per model, then
writes one report comparing both. The VM-UNet is a reduced configuration (narrower, fewer blocks, 64 px input)
so that the whole demo trains on 2 CPU cores in under 10 minutes (measured: 4.8 min, VM-UNet test DSC 0.909);
the demo prints what it reduced.
``--fast`` is a smoke run (< 1 minute: tiny data, 1 epoch) for tests.
``--3d`` runs the 3-D demo instead: nnU-Net's plain 3-D U-Net on ``synthetic-brats`` (``demo_3d.yaml``: region-based
WT/TC/ET training on patches, sliding-window validation and test, metrics in mm with NSD), a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Dict

__all__ = ["add_parser", "run", "DEMO_MODELS"]

#: (run name, model, model_kwargs, extra overrides, note). The reductions are stated in the output and report.
DEMO_MODELS = [
    ("vmunet", "vmunet", None, {},
     "VM-UNet reduced for 2 CPU cores (see demo.yaml): embed_dim 32, depths [1,1,1,1]/[1,1,1,1], d_state 8, 64 px, "
     "60 epochs (paper: embed_dim 96, depths [2,2,2,2]/[2,2,2,1], d_state 16, 256 px, 300 epochs, ImageNet-pretrained "
     "encoder)"),
    ("unet", "unet", {"base_channels": 16}, {"trainer.max_epochs": 30, "model.t_max": 30},
     "U-Net baseline, base width 16 (paper default 64), 64 px, 30 epochs"),
]


#: the 3-D demo (``--3d``): one model, the config ``demo_3d``
DEMO_3D_MODELS = [
    ("nnunet_3d", "nnunet_3d", None, [],
     "nnU-Net plain 3-D U-Net reduced for a CPU (see demo_3d.yaml): widths 8..64, 4 stages, patch 32^3, "
     "20 epochs x 20 iterations (nnU-Net BraTS: 32..320, 6 stages, 128^3, 1000 x 250)"),
]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="train VM-UNet and U-Net on synthetic skin lesions, print the metrics, "
                                           "write the report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder (a fresh -2, -3, ... if it already holds runs)")
    p.add_argument("--fast", "--smoke", dest="fast", action="store_true", help="smoke run, under a minute")
    p.add_argument("--models", default="vmunet,unet", help="comma-separated subset of: vmunet, unet")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    p.add_argument("--config", default="demo", help="config to start from (default: the shipped demo.yaml)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--3d", dest="three_d", action="store_true",
                   help="the 3-D demo: nnU-Net 3-D U-Net on synthetic-brats (config demo_3d)")
    return p


def _fast_overrides() -> Dict[str, Any]:
    return {"trainer.max_epochs": 1, "data.image_size": 32, "data.batch_size": 4, "data.dataset_kwargs": {"size": 32},
            "data.split_kwargs": {"train": {"num_samples": 12}, "val": {"num_samples": 4},
                                  "test": {"num_samples": 6}},
            "trainer.log_every_n_steps": 1}


def _fast_overrides_3d() -> Dict[str, Any]:
    return {"trainer.max_epochs": 1, "data.iterations_per_epoch": 2, "trainer.check_val_every_n_epoch": 1,
            "data.dataset_kwargs": {"size": 32, "spacing": [1.0, 1.0, 2.0], "channels": 2, "label_mode": "regions"},
            "data.image_size": [32, 32, 16],
            "model.model_kwargs": {"patch_size": [32, 32, 16], "features_per_stage": [8, 16, 32, 64]},
            "data.split_kwargs": {"train": {"num_samples": 3}, "val": {"num_samples": 1}, "test": {"num_samples": 2}},
            "trainer.log_every_n_steps": 1}


def run(args) -> int:
    # the engine imports torch and Lightning: only when the demo runs, not for `mambaseg --help` (cli/main.py)
    from mambaseg.engine.configs import resolve_config_path
    from mambaseg.engine.errors import MambasegUserError, near_matches
    from mambaseg.engine.report import RunRecord, format_metrics_table, write_report
    from mambaseg.engine.run import fit
    from mambaseg.engine.runs import environment_info, next_free_dir

    out = next_free_dir(args.out)
    if out != args.out:
        print(f"{args.out} already holds a demo; writing to {out} instead (nothing is overwritten)")
    os.makedirs(out, exist_ok=True)
    three_d = bool(getattr(args, "three_d", False))
    if three_d and args.config == "demo":
        args.config = "demo_3d"
    if three_d and args.models == "vmunet,unet":
        args.models = "nnunet_3d"
    models = DEMO_3D_MODELS if three_d else DEMO_MODELS
    cfg = resolve_config_path(args.config)  # named in the output before any work
    env = environment_info()
    print(f"mambaseg demo -> {out}\n  config: {cfg}\n  torch {env['torch']}, {env['threads']} threads, scan backend "
          f"{env.get('scan_backend')} (available: {env.get('scan_backends_available')})")
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    known = [m[0] for m in models]
    bad = [m for m in wanted if m not in known]
    if bad:
        raise MambasegUserError(f"unknown demo model {bad[0]!r}{near_matches(bad[0], known)} Choices: {known}")
    records, notes, t_all = [], [], time.time()
    for name, model, kwargs, overrides, note in models:
        if name not in wanted:
            continue
        run: Dict[str, Any] = {"run_dir": os.path.join(out, name), "model.model": model}
        if kwargs is not None:
            run["model.model_kwargs"] = kwargs
        run.update(overrides)
        if args.fast:
            run.update(_fast_overrides_3d() if three_d else _fast_overrides())
        if args.epochs is not None:
            run["trainer.max_epochs"] = args.epochs
        if args.quiet:
            run.update({"trainer.enable_progress_bar": False, "trainer.enable_model_summary": False})
        print(f"\n=== {name}: {note}")
        t0 = time.time()
        cli = fit(cfg, run)
        dt = time.time() - t0
        res = cli.model.test_results or {}
        params = sum(p.numel() for p in cli.model.net.parameters())
        hp = cli.model.hparams
        rec = RunRecord(name=name, run_dir=os.path.join(out, name), summary=res.get("summary", {}),
                        rows=res.get("rows", []), qualitative=res.get("qualitative", []),
                        settings={k: (res.get("settings") or {}).get(k) for k in
                                  ("aggregation", "hd95_mode", "include_background", "threshold", "scan_backend")},
                        extra={"params": f"{params / 1e6:.3f} M", "model_kwargs": dict(hp.model_kwargs or {}),
                               "input size": hp.image_size, "train+test seconds": round(dt, 1), "note": note})
        records.append(rec)
        notes.append(f"{name}: {note}; {params / 1e6:.3f} M params; {dt:.0f} s train+test")
    total = time.time() - t_all
    notes.append(f"total wall time {total:.0f} s on {env['threads']} threads; scan backend {env.get('scan_backend')}")
    data_name = "synthetic-brats" if three_d else "synthetic-skin"
    notes.append(f"data: {data_name} (generated, no download): train / val (model selection) / held-out "
                 "test splits drawn from separate seeds")
    title = ("mambaseg 3-D demo: nnU-Net 3-D U-Net on synthetic-brats (WT / TC / ET)" if three_d else
             "mambaseg demo: VM-UNet vs U-Net on synthetic-skin")
    report = write_report(out, records, title=title, notes=notes)
    print(f"\n=== test metrics (held-out {data_name} test split)\n")
    print(format_metrics_table(records))
    for n in notes:
        print(f"- {n}")
    vm = next((r for r in records if r.name == "vmunet"), None)
    if vm is not None and not args.fast:
        dsc = vm.summary.get("dice")
        if isinstance(dsc, (int, float)):
            verdict = "met" if dsc >= 0.85 else "NOT met"
            print(f"\nVM-UNet test DSC {dsc:.4f} (demo target >= 0.85: {verdict}); total {total / 60:.1f} min "
                  f"(target <= 10 min on 2 cores)")
    print(f"\nreport: {report}")
    return 0
