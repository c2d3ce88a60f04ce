"""Compile every Triton scan kernel ahead of time for sm_80 and sm_90, no GPU needed, and print what each
needs: registers per thread, shared memory, local memory and stack frame (cuobjdump), spill stores/loads
(ptxas -v; -1 when the kernel came from Triton's cache: set TRITON_CACHE_DIR to an empty folder), PTX size.

    python benchmarks/triton_aot.py               # the CI set (what the shipped networks launch), both archs
    python benchmarks/triton_aot.py --full        # also bf16 everywhere and the short-sequence block size
    python benchmarks/triton_aot.py --json out.json

Exits 1 if any kernel fails to compile. CI runs the default set in tests/ops/test_scan_triton.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true")
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    from mambaseg.ops.triton_aot import aot_report

    t = time.perf_counter()
    rows = aot_report(tuple(a.arch), full=a.full, workers=a.workers)
    print(f"{'kernel':34s} {'arch':6s} {'ok':3s} {'regs':>5s} {'smem B':>7s} {'local B':>7s} {'stack B':>7s} "
          f"{'spill st/ld B':>13s} {'warps':>5s} {'ptx kB':>7s} {'s':>5s}")
    for r in rows:
        if r["ok"]:
            print(f"{r['kernel']:34s} {r['arch']:6s} yes {r['registers']:5d} {r['shared_bytes']:7d} "
                  f"{r['local_bytes']:7d} {r['stack_bytes']:7d} {str(r['spill_store_bytes']) + '/' + str(r['spill_load_bytes']):>13s} {r['num_warps']:5d} {r['ptx_bytes'] / 1024:7.1f} "
                  f"{r['seconds']:5.1f}")
        else:
            print(f"{r['kernel']:34s} {r['arch']:6s} NO  {r['error'].splitlines()[-1][:80]}")
    print(f"{len(rows)} compiles in {time.perf_counter() - t:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
