"""``mambaseg profile MODEL``: parameters, FLOPs in named conventions, latency.

Examples::

    mambaseg profile vmunet                        # at the model's paper size, CPU, float32
    mambaseg profile vmunet_v2 --size 256 --batch 4 --repeats 20
    mambaseg profile hmt_unet --size 224 --no-latency --json
    mambaseg profile vmunet --device cuda --dtype bfloat16
    mambaseg profile nnunet_3d --size 128 128 96      # a 3-D model: one size (a cube) or D H W
    mambaseg profile --config demo_3d                 # a config's network, patch, channels and outputs

See ``mambaseg.profiling`` for what ``paper`` (thop-compatible, what the papers print) and ``full`` (every
matmul/conv/einsum + the selective scan + attention) count.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "run"]


def _positive(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}")
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}")
    return n


def _nonneg(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v!r}")
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v!r}")
    return n


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``profile`` subcommand to an argparse ``subparsers`` object; returns its parser."""
    p = subparsers.add_parser(
        "profile", help="parameters, FLOPs (paper/thop-compatible and full incl. the scan) and latency",
        description="Count parameters (total, trainable, used by the forward), FLOPs in the 'paper' "
                    "(thop-compatible: registered Linear/Conv/Norm modules, MACs printed as 'FLOPs') and 'full' "
                    "(every matmul/conv/einsum + selective scan 9*B*L*D*N + attention) conventions, and measure "
                    "latency.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None,
                   help="registered model name (see `mambaseg models`); optional with --config")
    p.add_argument("--config", "-c", default=None,
                   help="profile a config's network: its model, model_kwargs and data.image_size (a 3-D config's "
                        "patch), its data set's channels and outputs (regions) when the data is found")
    p.add_argument("--size", type=_positive, nargs="+", default=None, metavar="N",
                   help="input side: N (a square image, a cube for 3-D models), H W, or D H W for a 3-D model "
                        "(default: the model's paper size, e.g. 256, 224, or 128 for 3-D)")
    p.add_argument("--batch", type=_positive, default=1, help="batch size (default 1)")
    p.add_argument("--device", default="cpu", help="device for the latency measurement: cpu or cuda[:i]")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"],
                   help="precision for the latency measurement (counts do not depend on it)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16"],
                   help="short for --dtype float32 / --dtype bfloat16 (autocast)")
    p.add_argument("--in-channels", type=_positive, default=None, help="input channels (default 3, as the papers)")
    p.add_argument("--num-classes", type=_positive, default=None, help="output classes (default 1)")
    p.add_argument("--conventions", default="paper,full",
                   help="comma-separated FLOP conventions: paper, full (default both)")
    p.add_argument("--no-latency", action="store_true", help="skip the timing")
    p.add_argument("--no-used", action="store_true",
                   help="skip the forward/backward that finds parameters the forward never uses")
    p.add_argument("--warmup", type=_nonneg, default=3, help="untimed warm-up forwards (default 3)")
    p.add_argument("--repeats", type=_positive, default=10, help="timed forwards (default 10)")
    p.add_argument("--backend", default=None,
                   help="selective-scan backend for the run (default: auto; see `mambaseg.ops.available_backends`)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)
    return p


def _spatial_dims(model: str) -> int:
    """The registered model's number of spatial axes (2 for a name the registry does not know: its own error
    comes later)."""
    try:
        from ..models.registry import model_info
        return int(model_info(model).extra.get("spatial_dims", 2))
    except Exception:  # noqa: BLE001
        return 2


def _from_config(args) -> dict:
    """Fill ``args`` (model, size, channels, outputs) from ``--config`` where the command line leaves them out;
    returns the config's model_kwargs. The data set gives the channels and outputs (one per region for
    region-based training) when it can be opened; otherwise --in-channels / --num-classes (default 3 / 1)."""
    import yaml

    from ..engine.configs import resolve_config_path
    with open(resolve_config_path(args.config)) as f:
        cfg = yaml.safe_load(f) or {}
    m, d = dict(cfg.get("model") or {}), dict(cfg.get("data") or {})
    if args.model and m.get("model") and args.model != m["model"]:
        raise ValueError(f"model {args.model!r} differs from the config's model.model {m['model']!r}; give one")
    args.model = args.model or m.get("model")
    if args.size is None and d.get("image_size") is not None:
        s = d["image_size"]
        args.size = [int(v) for v in s] if isinstance(s, (list, tuple)) else [int(s)]
    if args.in_channels is None or args.num_classes is None:
        try:
            from ..engine.datamodule import SegDataModule
            from ..engine.volumetric import output_layout
            dm = SegDataModule(**d)
            args.in_channels = args.in_channels or int(dm.in_channels)
            args.num_classes = args.num_classes or output_layout(int(dm.num_classes), dm.regions)[0]
        except Exception as e:  # noqa: BLE001 - no data here: the flags' defaults, said once
            print(f"note: {args.config}: data not opened ({type(e).__name__}); channels / outputs from "
                  f"--in-channels / --num-classes", file=sys.stderr)
    return dict(m.get("model_kwargs") or {})


def run(args) -> int:
    """Execute ``mambaseg profile``; returns the exit code (0 ok, 2 bad input)."""
    import contextlib

    from ..profiling import CONVENTIONS, profile_model

    conventions = tuple(c.strip() for c in str(args.conventions).split(",") if c.strip())
    bad = [c for c in conventions if c not in CONVENTIONS]
    if bad:
        print(f"error: unknown FLOP convention(s) {bad}; choose from {list(CONVENTIONS)}", file=sys.stderr)
        return 2
    ctx = contextlib.nullcontext()
    if getattr(args, "backend", None):
        from ..ops import use_backend
        try:
            ctx = use_backend(args.backend)
            ctx.__enter__()
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if getattr(args, "precision", None):
        args.dtype = {"fp32": "float32", "bf16": "bfloat16"}[args.precision]
    from ..models.limits import check_input_size
    try:
        model_kwargs = _from_config(args) if getattr(args, "config", None) else None
        if not args.model:
            raise ValueError("name a model (`mambaseg profile MODEL`) or a config (`--config CONFIG`)")
        args.in_channels = args.in_channels or 3
        args.num_classes = args.num_classes or 1
        size = args.size
        if size is not None:  # an absurd size is refused before allocating, with the number
            if len(size) > 3:
                raise ValueError(f"--size takes N, H W, or D H W for a 3-D model, got {' '.join(map(str, size))}")
            check_input_size(list(size) * (_spatial_dims(args.model) if len(size) == 1 else 1), "--size",
                             args.in_channels, args.num_classes, args.batch)
            size = size[0] if len(size) == 1 else tuple(size)
        prof = profile_model(args.model, size=size, batch=args.batch, device=args.device, dtype=args.dtype,
                             in_channels=args.in_channels, num_classes=args.num_classes, conventions=conventions,
                             used_params=not args.no_used, latency=not args.no_latency, warmup=args.warmup,
                             repeats=args.repeats, model_kwargs=model_kwargs)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        ctx.__exit__(None, None, None)
    if args.json:
        print(json.dumps(prof.to_dict(), indent=2, default=str))
    else:
        print(prof.format())
    return 0
