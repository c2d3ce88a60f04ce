"""Selective-scan benchmark: every backend against the reference on VM-UNet's four stage shapes.

    python benchmarks/scan.py                 # CPU, batch 2, N=16 (the foundation issue's table)
    python benchmarks/scan.py --quick         # tiny shapes, seconds (smoke test)
    python benchmarks/scan.py --device cuda --batch 32
    python benchmarks/scan.py --compare main --shapes a --rounds 5   # this checkout vs main, side by side
    python benchmarks/scan.py --compare main --op cross            # SS2D's cross-scan + scan + merge

``--compare REV`` times the same workers for git revision REV (its ``src/`` exported with ``git archive``) in
the same invocation, alternating old and new subprocesses for --rounds rounds, and prints the medians over the
rounds with old/new ratios (the machine is shared: only such same-run ratios mean anything). ``--op cross``
times what SS2D runs: cross_scan -> scan -> cross_merge on a (b, d/4, h, w) map with h*w = l, h <= w as square as possible, or the
fused ``cross_selective_scan`` where the revision has it.

Shapes (VM-UNet at 256x256, 4 scan directions as groups): d*l = 768*4096, 1536*1024, 3072*256, 6144*64.
Each (shape, backend, mode) runs in a fresh subprocess so peak memory is its own: "peak extra MB" is the
high-water mark of the process RSS (CPU, sampled every 0.5 ms plus ru_maxrss) or of CUDA allocations above what
the inputs already hold. Times are min / median of --repeats calls after one warm-up. Ratios are taken between
numbers of the same run. The reference's backward is super-linear in L (autograd through a Python loop), so it
is only run where it finishes in reasonable time (--ref-bwd, default the two short shapes).

On CUDA the table also gives the achieved memory bandwidth of each backend, as GB/s and as a fraction of the
device-to-device copy rate measured in the same run (or --peak-gbs). --mamba-ssm-ext DIR adds mamba-ssm's own
CUDA kernel (built by benchmarks/mamba_ssm_ext.py) as backend "mamba_ssm_ext". Bytes counted, fp32: forward reads u,
delta, B, C and writes y; backward reads u, delta, B, C, dy and writes du, ddelta, dB, dC (the scan is memory
bound on a GPU, so this is the number that says how close a kernel is to the hardware).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _compare import env_for, export_src, ratio, this_src  # noqa: E402

SHAPES = {"a": (768, 4096), "b": (1536, 1024), "c": (3072, 256), "d": (6144, 64)}
QUICK = {"a": (96, 512), "b": (192, 128), "c": (384, 32), "d": (768, 8)}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(cfg: dict) -> dict:
    import math

    import torch

    import mambaseg.ops as ops
    from mambaseg.ops import selective_scan

    if cfg.get("mamba_ssm_ext"):
        _register_mamba_ssm_ext(cfg["mamba_ssm_ext"])
    torch.manual_seed(0)
    dev = cfg["device"]
    b, d, l, n, g = cfg["batch"], cfg["d"], cfg["l"], cfg["n"], 4
    dt0 = torch.exp(torch.rand(d) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    inputs = dict(u=torch.randn(b, d, l), delta=0.3 * torch.randn(b, d, l), A=-torch.arange(1, n + 1.0).repeat(d, 1),
                  B=torch.randn(b, g, n, l), C=torch.randn(b, g, n, l), D=torch.ones(d),
                  delta_bias=dt0 + torch.log(-torch.expm1(-dt0)))
    inputs = {k: v.to(dev) for k, v in inputs.items()}
    bwd = cfg["mode"] == "fwd+bwd"
    if bwd:
        for v in inputs.values():
            v.requires_grad_(True)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    if cfg.get("op") == "cross":
        hh = max(i for i in range(1, int(math.isqrt(l)) + 1) if l % i == 0)
        ww = l // hh
        dd = d // g
        x = torch.randn(b, dd, hh, ww, device=dev)
        inputs = dict(u=x.reshape(b, dd, l), delta=inputs["delta"].view(b, g, dd, l), A=inputs["A"],
                      B=inputs["B"], C=inputs["C"], D=inputs["D"], delta_bias=inputs["delta_bias"])
        if bwd:
            inputs = {k: v.detach().requires_grad_(True) for k, v in inputs.items()}
        fused = getattr(ops, "cross_selective_scan", None)

        def scan_fn(u, delta, A, B, C, D, delta_bias, delta_softplus, backend):
            if fused is not None:
                return fused(u, delta, A, B, C, D, delta_bias, delta_softplus, h=hh, w=ww, backend=backend)
            perm = ops.cross_scan(torch.arange(l, device=dev).view(1, 1, hh, ww)).view(4, l)
            xs = ops.cross_scan(u.view(b, dd, hh, ww)).reshape(b, g * dd, l)
            dl = torch.stack([delta[:, k, :, perm[k]] for k in range(g)], 1).reshape(b, g * dd, l)
            Bs = torch.stack([B[:, k, :, perm[k]] for k in range(g)], 1)
            Cs = torch.stack([C[:, k, :, perm[k]] for k in range(g)], 1)
            y = selective_scan(xs, dl, A, Bs, Cs, D, delta_bias=delta_bias, delta_softplus=delta_softplus,
                               backend=backend)
            return ops.cross_merge(y.view(b, g, dd, l), hh, ww)
    else:
        scan_fn = selective_scan

    def call():
        y = scan_fn(**inputs, delta_softplus=True, backend=cfg["backend"])
        if bwd:
            y.backward(torch.ones_like(y))
            for v in inputs.values():
                v.grad = None
        sync()

    peak = [0.0]
    stop = threading.Event()
    if dev == "cpu":
        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_mb())
                time.sleep(0.0005)
        base = _rss_mb()
        th = threading.Thread(target=sample, daemon=True)
        th.start()
    else:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    times = []
    reps = cfg["repeats"] + 1
    for i in range(reps):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
        if cfg.get("budget_s") and sum(times) > cfg["budget_s"]:
            break
    if dev == "cpu":
        stop.set()
        th.join()
        peak_mb = max(peak[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024) - base
    else:
        peak_mb = torch.cuda.max_memory_allocated() / 2**20 - base
    timed = times[1:] if len(times) > 1 else times
    return {"min_ms": min(timed) * 1e3, "median_ms": statistics.median(timed) * 1e3, "peak_mb": peak_mb,
            "calls": len(timed)}


def _register_mamba_ssm_ext(build_dir: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import mamba_ssm_ext
    mamba_ssm_ext.register(mamba_ssm_ext.load_built(build_dir))


def measured_copy_gbs() -> float:
    """Device-to-device copy rate of this GPU, bytes read + written per second (1 GiB, best of 10)."""
    import torch
    x = torch.empty(2**28, device="cuda")
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(12):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        y.copy_(x)
        e.record()
        torch.cuda.synchronize()
        best = min(best, s.elapsed_time(e) / 1e3)
    return 2 * x.numel() * 4 / best / 1e9


def run_sub(cfg: dict, src: str | None = None) -> dict:
    env = dict(os.environ)
    env.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    if src:
        env = env_for(src)
    r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True,
                       env=env, timeout=cfg.get("timeout", 1800))
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--shapes", default="abcd")
    p.add_argument("--backends", default=None, help="comma-separated; default: every available backend")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ref-bwd", default="cd", help="shapes where the reference's fwd+bwd is run")
    p.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test in seconds")
    p.add_argument("--peak-gbs", type=float, default=0.0,
                   help="GPU memory bandwidth for the fraction column; 0 (default): the measured device-to-device "
                        "copy rate (read + write)")
    p.add_argument("--mamba-ssm-ext", default=None, metavar="DIR",
                   help="also time mamba-ssm's CUDA kernel built into DIR by benchmarks/mamba_ssm_ext.py "
                        "(backend 'mamba_ssm_ext')")
    p.add_argument("--compare", default=None, metavar="REV",
                   help="also time git revision REV in the same run, alternating, and print old vs new")
    p.add_argument("--rounds", type=int, default=3, help="--compare: old/new subprocess pairs per measurement")
    p.add_argument("--op", default="scan", choices=["scan", "cross"],
                   help="scan: selective_scan alone; cross: SS2D's cross-scan + scan + merge")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.compare:
        return compare(args)

    import torch

    from mambaseg.ops import available_backends

    backends = args.backends.split(",") if args.backends else available_backends(args.device)
    if args.mamba_ssm_ext and "mamba_ssm_ext" not in backends:
        backends.append("mamba_ssm_ext")
    if args.device == "cuda" and not args.peak_gbs:
        args.peak_gbs = measured_copy_gbs()
        print(f"measured device-to-device copy: {args.peak_gbs:.0f} GB/s (read + write)")
    if "reference" not in backends:
        backends.append("reference")
    fast = [b for b in backends if b != "reference"]
    shapes = QUICK if args.quick else SHAPES
    print(f"selective scan, device={args.device}, batch={args.batch}, n={args.n}, groups=4, fp32, "
          f"threads={torch.get_num_threads()}, torch {torch.__version__}; backends: {', '.join(backends)}")
    hdr = (f"{'shape':>14} {'backend':>10} | {'fwd min/med ms':>17} {'x ref':>7} | {'fwd+bwd min/med ms':>19} "
           f"{'x ref':>7} | {'peak extra MB fwd / fwd+bwd':>27}")
    print(hdr)
    print("-" * len(hdr))
    for key in args.shapes:
        d, l = shapes[key]
        res = {}
        for be in ["reference", *fast]:
            for mode in ("fwd", "fwd+bwd"):
                if be == "reference" and mode == "fwd+bwd" and key not in args.ref_bwd:
                    res[be, mode] = None
                    continue
                reps = 1 if be == "reference" else args.repeats
                cfg = dict(device=args.device, batch=args.batch, n=args.n, d=d, l=l, backend=be, mode=mode,
                           repeats=reps, budget_s=60, mamba_ssm_ext=args.mamba_ssm_ext, op=args.op)
                res[be, mode] = run_sub(cfg)
        ref_f, ref_b = res["reference", "fwd"], res["reference", "fwd+bwd"]
        for be in ["reference", *fast]:
            f, fb = res[be, "fwd"], res[be, "fwd+bwd"]

            def fmt(r):
                if r is None:
                    return "not run (too slow)"
                if "error" in r:
                    return "error: " + r["error"][:40]
                return f"{r['min_ms']:.1f} / {r['median_ms']:.1f}"

            def ratio(r, ref):
                if not r or not ref or "error" in r or "error" in ref:
                    return "-"
                return f"{ref['min_ms'] / r['min_ms']:.0f}x"

            mem = " / ".join("-" if not r or "error" in r else f"{r['peak_mb']:.0f}" for r in (f, fb))
            print(f"{f'{d}x{l}':>14} {be:>10} | {fmt(f):>17} {ratio(f, ref_f):>7} | {fmt(fb):>19} "
                  f"{ratio(fb, ref_b):>7} | {mem:>27}")
        if args.device == "cuda":
            b, g, n = args.batch, 4, args.n
            fwd_bytes = 4 * (3 * b * d * l + 2 * b * g * n * l)
            bwd_bytes = fwd_bytes + 4 * (5 * b * d * l + 4 * b * g * n * l)
            for be in fast:
                for mode, nbytes in (("fwd", fwd_bytes), ("fwd+bwd", bwd_bytes)):
                    r = res[be, mode]
                    if r and "error" not in r:
                        gbs = nbytes / (r["min_ms"] / 1e3) / 1e9
                        print(f"{'':>14} {be:>10}   {mode} bandwidth {gbs:8.0f} GB/s = "
                              f"{100 * gbs / args.peak_gbs:5.1f} % of {args.peak_gbs:.0f} GB/s")
    print("x ref = reference min time / backend min time, measured in this run.")
    return 0


def compare(args) -> int:
    """Old (REV) vs new (this checkout), alternating subprocesses, medians over --rounds."""
    old_src, new_src = export_src(args.compare), this_src()
    backends = args.backends.split(",") if args.backends else ["native"]
    shapes = QUICK if args.quick else SHAPES
    print(f"selective scan ({args.op}), device={args.device}, batch={args.batch}, n={args.n}, groups=4, fp32; "
          f"old = {args.compare}, new = this checkout; median over {args.rounds} rounds of the per-round median "
          f"of {args.repeats} calls, old and new alternating")
    hdr = f"{'shape':>10} {'backend':>9} {'mode':>8} | {'old ms':>9} {'new ms':>9} {'old/new':>8}"
    print(hdr)
    print("-" * len(hdr))
    for key in args.shapes:
        d, l = shapes[key]
        for be in backends:
            for mode in ("fwd", "fwd+bwd"):
                cfg = dict(device=args.device, batch=args.batch, n=args.n, d=d, l=l, backend=be, mode=mode,
                           repeats=args.repeats, budget_s=60, op=args.op)
                meds = {"old": [], "new": []}
                for i in range(args.rounds):
                    order = [("new", new_src), ("old", old_src)] if i % 2 else [("old", old_src), ("new", new_src)]
                    for tag, src in order:
                        r = run_sub(cfg, src)
                        if "error" in r:
                            print(f"  {tag}: error: {r['error'][:100]}")
                        else:
                            meds[tag].append(r["median_ms"])
                o = statistics.median(meds["old"]) if meds["old"] else None
                n = statistics.median(meds["new"]) if meds["new"] else None
                print(f"{f'{d}x{l}':>10} {be:>9} {mode:>8} | {o or float('nan'):9.1f} {n or float('nan'):9.1f} "
                      f"{ratio(o, n):>8}", flush=True)
    print("old/new > 1: this checkout is faster. Shared machine: read the ratios, not the absolute times.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
