"""CPU time and peak memory of the 3-D networks per patch, beside nnU-Net's 3-D U-Net in the same run.

    python benchmarks/models3d.py                                   # every 3-D network at 64^3 and 128^3
    python benchmarks/models3d.py --models umamba_enc_3d --sizes 128 --modes train   # issue 27: must complete
    python benchmarks/models3d.py --models nnunet_3d,umamba_bot_3d --sizes 32,64 --repeats 2

Each (network, size, mode) runs in its own subprocess (batch 1, 4 input channels, 4 classes, fp32, CPU), so the
peak resident memory of that process (``ru_maxrss``) is the measurement's own; ``peak GB`` is that peak minus the
process's resident memory just after building the network (the weights), i.e. activations, autograd buffers and
scan workspace. Times are the median of ``--repeats`` calls after one warm-up call (``--warmup 0`` times the first,
cold call). ``fwd``: forward under ``torch.no_grad`` in eval mode; ``train``: forward + backward of a mean-square
loss in train mode. Ratios are against the baseline network (``--baseline``, default ``nnunet_3d``) at the same size
and mode, measured in the same invocation (the machine is shared: only such ratios mean anything).

nnU-Net planned networks are built with the plan of the patch (``patch_size=S``: a cube gets nnU-Net's topology,
128 -> the brats128 topology); U-Mamba Enc only runs at its plan's size. Other 3-D networks take their defaults.
The scan backend is the default (``auto``); set ``MAMBASEG_SCAN_BACKEND`` to compare backends.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30


def worker(name: str, size: int, mode: str, repeats: int, warmup: int, threads: int) -> dict:
    import torch

    from mambaseg.models import create_model
    from mambaseg.models.registry import model_kwarg_names

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    kw = {"patch_size": size} if "patch_size" in (model_kwarg_names(name) or []) else {}
    model = create_model(name, in_channels=4, num_classes=4, **kw)
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.randn(1, 4, size, size, size)
    base = _rss_gb()

    def step():
        if mode == "fwd":
            model.eval()
            with torch.no_grad():
                model(x)
        else:
            model.train()
            model.zero_grad(set_to_none=True)
            out = model(x)
            out = out[0] if isinstance(out, (list, tuple)) else out
            out.float().square().mean().backward()

    for _ in range(warmup):
        step()
    ts = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20      # KiB -> GiB
    return dict(name=name, size=size, mode=mode, params=n_params, seconds=statistics.median(ts),
                peak_gb=max(0.0, peak - base), weights_rss_gb=base)


def run_one(name, size, mode, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps([name, size, mode])] + [
        "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return dict(name=name, size=size, mode=mode, error=f"exit {p.returncode}: {tail}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=None, help="comma-separated names (default: every 3-D network)")
    ap.add_argument("--sizes", default="64,128", help="cube edges, comma-separated (default 64,128)")
    ap.add_argument("--modes", default="fwd,train", help="fwd and/or train (forward+backward)")
    ap.add_argument("--baseline", default="nnunet_3d", help="network the ratios refer to (run first)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        name, size, mode = json.loads(args.worker)
        print(json.dumps(worker(name, size, mode, args.repeats, args.warmup, args.threads)))
        return

    sys.path.insert(0, os.path.join(ROOT, "src"))
    import torch

    from mambaseg.models import list_models, model_info
    from mambaseg.ops import resolve_backend

    three_d = [n for n in list_models() if model_info(n).extra.get("spatial_dims", 2) == 3]
    names = args.models.split(",") if args.models else three_d
    bad = [n for n in names if n not in three_d]
    if bad:
        sys.exit(f"not a registered 3-D network: {', '.join(bad)} (3-D networks: {', '.join(three_d)})")
    if args.baseline and args.baseline not in names:
        names = [args.baseline] + names
    elif args.baseline:
        names = [args.baseline] + [n for n in names if n != args.baseline]
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - {"fwd", "train"}:
        sys.exit(f"--modes takes fwd and/or train, got {args.modes}")
    backend = resolve_backend(None, torch.device("cpu"))
    print(f"# torch {torch.__version__}, scan backend {backend}, {os.cpu_count()} CPUs, batch 1, 4 -> 4 "
          f"channels, repeats {args.repeats} after {args.warmup} warm-up")
    rows, base = [], {}
    print(f"{'network':<18} {'size':>5} {'mode':>5} {'params':>11} {'seconds':>9} {'x base':>7} {'peak GB':>8} "
          f"{'x base':>7}")
    for size in sizes:
        for mode in modes:
            for name in names:
                r = run_one(name, size, mode, args)
                rows.append(r)
                if "error" in r:
                    print(f"{name:<18} {size:>5} {mode:>5}  {r['error']}")
                    continue
                if name == args.baseline:
                    base[(size, mode)] = r
                b = base.get((size, mode))
                rt = f"{r['seconds'] / b['seconds']:.2f}" if b else "-"
                rm = f"{r['peak_gb'] / b['peak_gb']:.2f}" if b and b["peak_gb"] > 0 else "-"
                print(f"{name:<18} {size:>5} {mode:>5} {r['params']:>11,} {r['seconds']:>9.2f} {rt:>7} "
                      f"{r['peak_gb']:>8.2f} {rm:>7}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
