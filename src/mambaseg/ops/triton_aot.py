"""Ahead-of-time compilation of the Triton scan kernels, without a GPU.

``triton.compile`` with a ``GPUTarget`` runs Triton's whole pipeline (TTIR, TTGIR, LLVM IR, PTX) and NVIDIA's
``ptxas`` (bundled in Triton's wheel) on a machine with no GPU, so a kernel that would not compile for an
A100 (``sm_80``) or an H100/H200 (``sm_90``) is caught here, and the resources each kernel needs are known:

* ``aot_configs()`` lists the kernel specialisations the shipped networks launch (``_blocks`` picks block
  sizes from (d, n, l) alone, with no autotuning, so this list is closed);
* ``aot_compile(...)`` compiles one for one architecture;
* ``resource_usage(compiled)`` reads registers, shared memory, local memory and stack from the cubin with
  the bundled ``cuobjdump -res-usage``; spill stores/loads come from ``ptxas -v`` (captured while compiling);
* ``aot_report(...)`` does all of it, in parallel worker processes; ``benchmarks/triton_aot.py`` prints it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Tuple

__all__ = ["aot_configs", "aot_compile", "resource_usage", "aot_report"]

# Pointer arguments that carry the (possibly low-precision) inputs; all others are fp32.
_LOW_PRECISION_PTRS = {"u_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr"}


def aot_configs(full: bool = False) -> List[Tuple[str, str, str, dict]]:
    """(name, kernel, pointer dtype, constexprs) for every specialisation the shipped networks launch.

    Default (CI) set, fp32: the plain scan of the VSS/VMamba blocks (softplus, bias, D; n = 16), the Mamba-1
    block's scan (the same plus the z gate), the fused cross scan (n = 16, and n = 1 for d_state-1 VMamba v2
    blocks); bf16 inputs for the fused cross scan. ``full=True`` adds bf16 for every one and the short-sequence
    block size (L < 16: BLOCK_L = 4) that only tiny inputs reach.
    """
    from .scan_triton import _blocks, _seg_tiles

    cases = [(16, False, False, 4096), (16, True, False, 4096), (16, False, True, 4096), (1, False, True, 4096)]
    if full:
        cases.append((16, False, True, 4))
    out = []
    for dtype in ("fp32", "bf16"):
        for n, z, cross, l in cases:
            if dtype == "bf16" and not full and not (cross and n == 16):
                continue
            tag = f"{'cross' if cross else 'scan'}_n{n}{'_z' if z else ''}_{dtype}"
            for kind, kernel in (("fwd", "_fwd_kernel"), ("bwd", "_bwd_kernel")):
                BD, BN, BL = _blocks(64, n, l, backward=kind == "bwd")
                c = dict(SOFTPLUS=True, HAS_BIAS=True, HAS_D=True, HAS_Z=z, NDIR=4 if cross else 1, CROSS=cross,
                         BLOCK_D=BD, BLOCK_N=BN, BLOCK_L=BL, SEG_TILES=_seg_tiles(BL))
                if kind == "bwd":
                    c["HAS_DLAST"] = False
                out.append((f"{kind}_{tag}_bd{BD}_bl{BL}", kernel, dtype, c))
    return out


def aot_compile(kernel_name: str, dtype: str, constexprs: dict, arch: int):
    """Compile ``scan_triton.<kernel_name>`` for ``sm_<arch>`` (no GPU needed). Returns Triton's compiled
    kernel (``.asm['ptx']``, ``.asm['cubin']``, ``.metadata``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import scan_triton

    kernel = getattr(scan_triton, kernel_name)
    sig = {}
    for a in kernel.arg_names:
        if a in constexprs:
            sig[a] = "constexpr"
        elif a.endswith("_ptr"):
            sig[a] = f"*{dtype}" if a in _LOW_PRECISION_PTRS else "*fp32"
        else:
            sig[a] = "i32"
    return triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs),
                          target=GPUTarget("cuda", arch, 32))


def _tool(name: str) -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def resource_usage(compiled) -> Dict[str, int]:
    """Registers per thread, shared memory, local memory and stack (bytes) of a compiled kernel, read from its
    cubin by ``cuobjdump -res-usage``. Local memory or stack above 0 means register spills."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    ptx_regs = sum(int(m) for m in re.findall(r"\.reg \.\w+\s+%\w+<(\d+)>", compiled.asm["ptx"]))
    return {"registers": int(fields.get("REG", -1)), "shared_bytes": int(fields.get("SHARED", -1)),
            "local_bytes": int(fields.get("LOCAL", -1)), "stack_bytes": int(fields.get("STACK", -1)),
            "ptx_virtual_registers": ptx_regs, "num_warps": int(compiled.metadata.num_warps)}


def _compile_with_ptxas_log(kernel_name, dtype, constexprs, arch):
    """Compile, capturing what ptxas -v prints (Triton prints it to fd 1 with TRITON_DUMP_PTXAS_LOG=1).
    Returns (compiled, log); the log is empty when the kernel came from Triton's cache."""
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as f:
        os.dup2(f.fileno(), 1)
        try:
            compiled = aot_compile(kernel_name, dtype, constexprs, arch)
            sys.stdout.flush()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        f.seek(0)
        return compiled, f.read()


def parse_ptxas_log(log: str) -> Dict[str, int]:
    """Spill stores/loads (bytes), stack frame (bytes) and registers from ``ptxas -v`` output; -1 if absent."""
    def grab(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else -1
    return {"spill_store_bytes": grab(r"(\d+) bytes spill stores"), "spill_load_bytes": grab(r"(\d+) bytes spill loads"),
            "stack_frame_bytes": grab(r"(\d+) bytes stack frame"), "ptxas_registers": grab(r"Used (\d+) registers")}


def _one(job):
    name, kernel_name, dtype, constexprs, arch = job
    t = time.perf_counter()
    try:
        compiled, log = _compile_with_ptxas_log(kernel_name, dtype, constexprs, arch)
        res = resource_usage(compiled)
        res.update(parse_ptxas_log(log))
        res.update(ok=True, ptx_bytes=len(compiled.asm["ptx"]), cubin_bytes=len(compiled.asm["cubin"]))
    except Exception as e:  # noqa: BLE001 -- reported, and the caller fails on it
        res = {"ok": False, "error": f"{type(e).__name__}: {str(e)[-2000:]}"}
    res.update(kernel=name, arch=f"sm_{arch}", seconds=round(time.perf_counter() - t, 1))
    return res


def aot_report(archs=(80, 90), full: bool = False, workers: Optional[int] = None) -> List[dict]:
    """Compile every ``aot_configs(full)`` kernel for every arch, ``workers`` processes at a time (default: the
    CPU count). One dict per (kernel, arch): ok/error, registers, shared/local/stack bytes, sizes, seconds."""
    jobs = [(name, k, dt, c, arch) for name, k, dt, c in aot_configs(full) for arch in archs]
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        return [_one(j) for j in jobs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        return list(ex.map(_one, jobs))
