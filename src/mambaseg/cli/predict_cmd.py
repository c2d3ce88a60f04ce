"""``mambaseg predict``: masks for a folder of images or NIfTI volumes (see ``mambaseg.engine.predict``).

Exit codes: 0 every input predicted; 2 bad input (missing checkpoint, no input, a device this machine lacks, an
output folder already holding predictions without ``--overwrite``), nothing written; 3 finished, but some inputs
could not be read and were skipped (listed on stderr and in ``OUT/errors.txt``).
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_parser", "run", "EXIT_SKIPPED"]

#: exit code of a run that finished but skipped unreadable inputs (listed in ``OUT/errors.txt``)
EXIT_SKIPPED = 3


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict", help="predict PNG masks (+ overlays) for images, NIfTI masks for NIfTI volumes",
        description="Predict with a trained checkpoint. PNG masks hold 0/255 (binary) or class indices "
                    "(multi-class); NIfTI outputs keep the input's affine. Unreadable inputs are skipped and "
                    "listed in OUT/errors.txt (exit code 3); an output folder that already holds predictions is "
                    "refused unless --overwrite.")
    p.add_argument("--ckpt", required=True, help="checkpoint written by `mambaseg fit` (RUN/checkpoints/best.ckpt)")
    p.add_argument("--input", "-i", nargs="+", required=True, help="image / NIfTI files or folders")
    p.add_argument("--out", "-o", required=True, help="output folder (masks/, overlays/, errors.txt)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an output folder that already holds predictions, replacing files of the same "
                        "name (other files are kept)")
    p.add_argument("--no-overlay", action="store_true", help="do not write colour overlays")
    p.add_argument("--threshold", type=float, default=None, help="binary threshold (default: the checkpoint's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: bfloat16 autocast for the GEMMs/convs (scan and norms stay fp32)")
    return p


def run(args) -> int:
    from mambaseg.engine.devices import check_device
    from mambaseg.engine.io import check_writable
    check_device(args.device)
    out = args.out
    check_writable(out, "output folder", "--out")  # before the checkpoint is read or anything is written
    overwrite = bool(getattr(args, "overwrite", False))
    if not overwrite:
        for sub in ("masks", "overlays"):
            d = os.path.join(out, sub)
            if os.path.isdir(d) and any(True for _ in os.scandir(d)):
                raise FileExistsError(f"{d} already holds predictions; choose another --out, or pass --overwrite "
                                      "to replace files of the same name (nothing was written)")
    from mambaseg.engine.runlock import acquire
    lock = acquire(out, "output folder", "--out", command="mambaseg predict")  # one predict per --out at a time
    try:
        return _run_locked(args, out, overwrite)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(args, out: str, overwrite: bool) -> int:
    from mambaseg.engine.predict import load_module, predict_paths
    module = load_module(args.ckpt, device=args.device)
    if getattr(args, "precision", "fp32") != "fp32":
        from mambaseg.engine.precision import with_precision
        module.net = with_precision(module.net, args.precision)
    res = predict_paths(module, args.input, out, overlays=not args.no_overlay, threshold=args.threshold,
                        progress=not args.no_progress, device=args.device, overwrite=overwrite)
    print(f"wrote {len(res.written)} prediction(s) to {os.path.join(out, 'masks')}")
    for w in res.warnings:
        print(f"mambaseg: warning: {w}", file=sys.stderr)
    if res.errors:
        print(f"skipped {len(res.errors)} input(s) (also listed in {os.path.join(out, 'errors.txt')}):",
              file=sys.stderr)
        for path, msg in res.errors:
            print(f"  {path}: {msg}", file=sys.stderr)
        print(f"mambaseg: finished with {len(res.errors)} skipped input(s); exit code {EXIT_SKIPPED}", file=sys.stderr)
        return EXIT_SKIPPED
    return 0
