"""CPU (or GPU) speed of every registered model: forward and forward+backward seconds per image.

    python benchmarks/models.py                       # every model, batch 1 and 4, paper input sizes
    python benchmarks/models.py --models vmunet,unet --batch 1 --repeats 5
    python benchmarks/models.py --compare main --models vmunet --batch 1 --rounds 5   # this checkout vs main

``--compare REV`` runs each (model, batch) measurement in subprocesses, alternating git revision REV (its
``src/`` exported with ``git archive``) and this checkout for --rounds rounds, and prints the medians over the
rounds with old/new ratios, measured in the same run (the machine is shared: only such ratios mean anything).
``--precision bf16`` times the forward under CPU/GPU bf16 autocast (both revisions, same setting).

Input size is each model's paper size (256; 224 for Mamba-UNet and Swin-UNet) unless --size is given; the scan
backend is the default one (``auto``), printed in the header. Times are the median of --repeats calls after
one warm-up, divided by the batch size. Target of the models issue: VM-UNet forward at 256, batch 1, <= 0.5 s on
a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _compare import env_for, export_src, ratio, this_src  # noqa: E402


def measure(name: str, size, b: int, repeats: int, device: str, backward: bool, precision: str = "fp32") -> dict:
    """Median forward and forward+backward seconds per image of one model (used in-process and by workers)."""
    import torch

    from mambaseg.models import create_model, model_info

    dev = torch.device(device)
    size = size or model_info(name).default_size
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, num_classes=1).to(dev)
    x = torch.randn(b, 3, size, size, device=dev)
    amp = precision == "bf16"

    def timeit(fn):
        fn()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) / b

    def fwd():
        model.eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            model(x)

    def fwd_bwd():
        model.train()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        out.float().mean().backward()
        model.zero_grad(set_to_none=True)

    return {"size": size, "params": sum(p.numel() for p in model.parameters()), "fwd": timeit(fwd),
            "fwd_bwd": timeit(fwd_bwd) if backward else float("nan")}


def run_worker(src: str, cfg: dict) -> dict:
    r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True,
                       env=env_for(src), timeout=1800)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def compare(args, names, batches) -> int:
    old_src, new_src = export_src(args.compare), this_src()
    print(f"device={args.device}, old = {args.compare}, new = this checkout, precision={args.precision}; median "
          f"over {args.rounds} rounds (each the median of {args.repeats} calls after 1 warm-up), old and new "
          f"alternating, seconds per image")
    hdr = (f"{'model':>12} {'size':>4} {'batch':>5} | {'fwd old':>8} {'fwd new':>8} {'old/new':>7} | "
           f"{'f+b old':>8} {'f+b new':>8} {'old/new':>7}")
    print(hdr)
    print("-" * len(hdr))
    for name in names:
        for b in batches:
            cfg = dict(name=name, size=args.size, b=b, repeats=args.repeats, device=args.device,
                       backward=not args.no_backward, precision=args.precision)
            res = {"old": [], "new": []}
            size = args.size
            for i in range(args.rounds):
                order = [("new", new_src), ("old", old_src)] if i % 2 else [("old", old_src), ("new", new_src)]
                for tag, src in order:
                    r = run_worker(src, cfg)
                    if "error" in r:
                        print(f"  {name} {tag}: error: {r['error'][:100]}")
                    else:
                        res[tag].append(r)
                        size = r["size"]
            med = {t: {k: (statistics.median(x[k] for x in v) if v else None) for k in ("fwd", "fwd_bwd")}
                   for t, v in res.items()}
            o, n = med["old"], med["new"]

            def f(v):
                return f"{v:8.3f}" if v is not None else f"{'-':>8}"
            print(f"{name:>12} {size or '-':>4} {b:>5} | {f(o['fwd'])} {f(n['fwd'])} {ratio(o['fwd'], n['fwd']):>7} | "
                  f"{f(o['fwd_bwd'])} {f(n['fwd_bwd'])} {ratio(o['fwd_bwd'], n['fwd_bwd']):>7}", flush=True)
    print("old/new > 1: this checkout is faster. Shared machine: read the ratios, not the absolute times.")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="comma-separated registry names (default: all)")
    p.add_argument("--batch", default="1,4")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast")
    p.add_argument("--compare", default=None, metavar="REV",
                   help="also time git revision REV in the same run, alternating, and print old vs new")
    p.add_argument("--rounds", type=int, default=3, help="--compare: old/new subprocess pairs per measurement")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(**json.loads(args.worker))))
        return 0

    import torch

    from mambaseg.models import list_models
    from mambaseg.ops import resolve_backend

    names = args.models.split(",") if args.models else list_models()
    batches = [int(b) for b in args.batch.split(",")]
    if args.compare:
        return compare(args, names, batches)
    dev = torch.device(args.device)
    print(f"device={dev}, threads={torch.get_num_threads()}, scan backend={resolve_backend(None, dev)}, "
          f"torch {torch.__version__}, precision={args.precision}, median of {args.repeats} after 1 warm-up, "
          f"seconds per image")
    print(f"{'model':>18} {'size':>5} {'params':>10} {'batch':>5} | {'fwd s/img':>10} | {'fwd+bwd s/img':>13}")
    for name in names:
        for b in batches:
            r = measure(name, args.size, b, args.repeats, args.device, not args.no_backward, args.precision)
            print(f"{name:>18} {r['size']:>5} {r['params'] / 1e6:>9.2f}M {b:>5} | {r['fwd']:>10.3f} | "
                  f"{r['fwd_bwd']:>13.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
