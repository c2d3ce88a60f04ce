"""Selective scan at volumetric lengths: time and memory per (channel, token) against the 2-D length.

    python benchmarks/scan_lengths.py                        # this checkout, native backend
    python benchmarks/scan_lengths.py --compare main         # this checkout and git revision main, same run
    MAMBASEG_NATIVE_MARCH=x86-64-v3 python benchmarks/scan_lengths.py   # force the AVX2 build of the kernel
    python benchmarks/scan_lengths.py --quick                # small lengths, a smoke test

Shapes (batch 1, n = 16, B and C ungrouped (b, n, l), softplus with delta_bias, D, no z, fp32), the lengths a
3-D network scans: L = 4,096 (d 768; the 2-D stage-1 length), 262,144 (d 96; SegMamba at 128^3 per branch) and
2,097,152 (d 64; U-Mamba Enc's first stage at 128^3). Each (length, mode) runs in a fresh subprocess with
--threads threads: the first call there is the *cold* one (kernel already built and loaded, but every buffer is
touched for the first time), then the best of at least --repeats warm calls (more, up to 40, until they add up to
--min-warm-s seconds: the first calls after start-up are slower), in wall-clock time and in process CPU time
(the machine this was written on is shared: CPU time per element is the steadier measure of the kernel's own
efficiency, wall time what a user waits). fwd+bwd back-propagates a fixed dy into all
inputs with ``out.backward(dy)``.

Memory: before the first call the worker resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5,
which sets VmHWM to the current RSS), and after the last call reads VmHWM: "peak growth" is VmHWM minus the RSS
with the inputs (and dy) already allocated, so it *includes* the outputs and gradients the call creates.
"in+out" is the bytes of the scan's inputs (u, delta, A, B, C, D, delta_bias, and dy for fwd+bwd) plus outputs
(out, and every input's gradient for fwd+bwd); "growth/io" is their ratio (target: at most 1.5).

Every ratio printed ("x 4k") is taken between numbers of the same run; the machine is shared, so absolute
nanoseconds drift between runs. GLIBC_TUNABLES=glibc.malloc.hugetlb=1 is set for the workers unless already set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _compare import env_for, export_src, this_src  # noqa: E402

SHAPES = [(768, 4096), (96, 262144), (64, 2097152)]
QUICK = [(768, 4096), (96, 65536), (64, 262144)]


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def worker(cfg: dict) -> dict:
    import math

    import torch

    from mambaseg.ops import selective_scan
    from mambaseg.ops import scan_native

    torch.set_num_threads(cfg["threads"])
    if not scan_native.is_available():
        raise SystemExit(f"native backend unavailable: {scan_native.why_unavailable()}")
    torch.manual_seed(0)
    b, d, l, n = 1, cfg["d"], cfg["l"], cfg["n"]
    dt0 = torch.exp(torch.rand(d) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    inputs = dict(u=torch.randn(b, d, l), delta=0.3 * torch.randn(b, d, l), A=-torch.arange(1, n + 1.0).repeat(d, 1),
                  B=torch.randn(b, n, l), C=torch.randn(b, n, l), D=torch.ones(d),
                  delta_bias=dt0 + torch.log(-torch.expm1(-dt0)))
    bwd = cfg["mode"] == "fwd+bwd"
    dy = torch.randn(b, d, l) if bwd else None
    if bwd:
        for v in inputs.values():
            v.requires_grad_(True)
    in_bytes = sum(v.numel() * v.element_size() for v in inputs.values())
    io_bytes = in_bytes + b * d * l * 4 + ((in_bytes + dy.numel() * 4) if bwd else 0)

    def call():
        y = selective_scan(**inputs, delta_softplus=True, backend="native")
        if bwd:
            y.backward(dy)
            for v in inputs.values():
                v.grad = None
        del y

    base_kb = _status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm_ok = True
    except OSError:
        hwm_ok = False
    times, cpus = [], []
    # the cold call, then at least --repeats warm calls, and more (up to 40) until the warm calls add up to
    # --min-warm-s: the first few calls after start-up run slower on 2 threads (seen at L = 4,096: about 2x)
    while len(times) < cfg["repeats"] + 1 or (sum(times[1:]) < cfg.get("min_warm_s", 2.0) and len(times) < 41):
        t, c = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    peak_kb = _status_kb("VmHWM") if hwm_ok else None
    el = b * d * l
    return {"calls": len(times) - 1, "cold_ns": times[0] / el * 1e9, "warm_ns": min(times[1:]) / el * 1e9, "cold_s": times[0],
            "warm_s": min(times[1:]), "cpu_ns": min(cpus[1:]) / el * 1e9, "growth_gb": (peak_kb - base_kb) / 2**20 if peak_kb else None,
            "io_gb": io_bytes / 2**30}


def run_sub(cfg: dict, src: str) -> dict:
    env = env_for(src)
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)],
                       capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", default=None, metavar="REV", help="also run git revision REV, alternating")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="warm calls after the cold one, at least (best is reported)")
    p.add_argument("--min-warm-s", type=float, default=6.0,
                   help="keep calling (up to 40 warm calls) until the warm calls took this many seconds")
    p.add_argument("--quick", action="store_true", help="shorter lengths (smoke test)")
    p.add_argument("--modes", default="fwd,fwd+bwd")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    revs = [("new", this_src())]
    if args.compare:
        revs = [("old", export_src(args.compare)), ("new", this_src())]
    shapes = QUICK if args.quick else SHAPES
    modes = args.modes.split(",")
    print(f"native selective scan, batch 1, n={args.n}, g=1, fp32, softplus+bias+D, threads={args.threads}, "
          f"best of >= {args.repeats} warm calls (>= {args.min_warm_s} s of them); MAMBASEG_NATIVE_MARCH={os.environ.get('MAMBASEG_NATIVE_MARCH', '')!r}"
          + (f"; old = {args.compare}, new = this checkout" if args.compare else ""))
    res = {}
    for d, l in shapes:
        for mode in modes:
            for tag, src in (revs if (d + l) % 2 == 0 else revs[::-1]):
                cfg = dict(d=d, l=l, n=args.n, mode=mode, threads=args.threads, repeats=args.repeats,
                           min_warm_s=args.min_warm_s)
                res[tag, l, mode] = run_sub(cfg, src)
    hdr = (f"{'rev':>4} {'mode':>8} {'L':>9} {'d':>4} | {'warm ns/el':>10} {'x 4k':>6} | {'cpu ns/el':>9} {'x 4k':>6} | {'cold ns/el':>10} "
           f"{'cold s':>7} {'x 4k warm':>9} | {'peak growth GB':>14} {'in+out GB':>9} {'growth/io':>9}")
    print(hdr)
    print("-" * len(hdr))
    for tag, _ in revs:
        for mode in modes:
            ref = res.get((tag, shapes[0][1], mode), {})
            for d, l in shapes:
                r = res[tag, l, mode]
                if "error" in r:
                    print(f"{tag:>4} {mode:>8} {l:>9} {d:>4} | error: {r['error'][:90]}")
                    continue
                x = r["warm_ns"] / ref["warm_ns"] if "warm_ns" in ref else float("nan")
                xcpu = r["cpu_ns"] / ref["cpu_ns"] if "cpu_ns" in ref else float("nan")
                xc = r["cold_ns"] / ref["warm_ns"] if "warm_ns" in ref else float("nan")
                gr = r["growth_gb"]
                print(f"{tag:>4} {mode:>8} {l:>9} {d:>4} | {r['warm_ns']:10.2f} {x:6.2f} | {r['cpu_ns']:9.2f} {xcpu:6.2f} | {r['cold_ns']:10.2f} "
                      f"{r['cold_s']:7.2f} {xc:9.2f} | {gr if gr is not None else float('nan'):14.2f} "
                      f"{r['io_gb']:9.2f} {(gr or float('nan')) / r['io_gb']:9.2f}")
    print("ns/el = seconds per call / (batch * d * L) * 1e9 (wall clock, best warm call); cpu ns/el = the process's "
          "CPU time (all threads) per element, best warm call: unlike wall time it does not count time spent waiting "
          "for a core on a shared machine; x 4k = ratio to L = 4,096 of the same rev and mode, this run. Peak growth "
          "includes the outputs and gradients (see the module docstring).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
