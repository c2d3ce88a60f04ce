"""``native`` backend: a fused C kernel for the CPU, compiled on first use, loaded with ctypes.

Why a C kernel: the scan does one ``exp`` and a few FMAs per (batch, channel, step, state) element. Any
pure-PyTorch formulation makes several full passes over (b, d, l, n)-sized buffers per step; the fused loop
keeps the state in registers, reads u/delta/B/C once and writes y once (``scan_notes.md`` §4: about 5x faster
than the best eager method). ``benchmarks/scan.py`` measures it against the other backends.

How it is built: ``csrc/scan_kernel.c`` (plain C, no PyTorch headers, so it compiles in about a second) with
``$CC`` (default ``cc``), ``-O3 -ffast-math -march=native``, into ``$MAMBASEG_CACHE/native`` (default
``~/.cache/mambaseg/native``), keyed by a hash of the source, flags and CPU. Threads: OpenMP, as many as
``torch.get_num_threads()``; the kernel binds to the OpenMP runtime PyTorch already loaded, so both share one
thread pool (with separate runtimes, PyTorch's spin-waiting workers and the kernel's threads slow each other
down several-fold on a 2-core machine). Without OpenMP it falls back to pthreads. No compiler, a failed build or ``MAMBASEG_NATIVE=0`` makes the backend unavailable;
``backend="auto"`` then uses the pure-PyTorch ``torch`` backend, and ``available_backends()`` shows which.

Since issue 18 the library also holds the fused 2-D cross scan (``cs_forward`` / ``cs_backward``,
``csrc/cross_impl.inc``, registered with ``register_fused`` for :func:`mambaseg.ops.cross_selective_scan`),
float32 uses a branch-free polynomial ``exp`` and ``log1p`` inlined into the vector loops (below 3.5e-7
relative error against float64, tested), and on AVX2+FMA the n = 16 float32 recurrences are hand-vectorised
(states in two ymm registers, dot products reduced 8 steps at a time). float64 keeps libm's exp/log1p.

Forward and backward are both fused; softplus, delta_bias, D and the z gate are fused too. float32 and float64
run natively; half precision is computed in float32.

Since issue 27 the plain scan walks the sequence in chunks of ``CHUNK`` (1024) steps, every row of a thread per
chunk (csrc/scan_impl.inc, "Chunking"), so its working set stays in the L2 cache at any length: time per
(channel, token) at L = 2M is that of L = 4K. B and C are read in the caller's (b, g, n, l) layout (copied
time-major a chunk at a time inside the kernel), dB and dC written the same way: no transposed copies. The
forward saves the state at each chunk start when a backward will follow ((b*d, l/CHUNK, n), 1/64 of u's size at
n = 16); the backward visits chunks last to first, recomputing each from its checkpoint. Threads never wait for
each other (a (batch, group) whose channels two threads share gets its dB/dC chunks added under a mutex). Large
fresh outputs get huge-page advice (see ``_empty_like``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

from ._common import as_grouped, compute_dtype
from .cross_selective_scan import register_fused, scan_orders
from .selective_scan import register_backend

_SRC_DIR = Path(__file__).with_name("csrc")
_lock = threading.Lock()
_lib = None
_error: str | None = None
build_flags: list[str] = []
"""The compiler flags of the loaded kernel (empty until it is built or loaded)."""


def _cache_dir() -> Path:
    base = os.environ.get("MAMBASEG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mambaseg")
    return Path(base) / "native"


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    src = b"".join(f.read_bytes() for f in sorted(_SRC_DIR.iterdir()) if f.suffix in (".c", ".inc", ".h"))
    # OpenMP first (shares PyTorch's libgomp thread pool), then pthreads; -march=native first, then generic.
    # -march=native alone can leave 128-bit vectors preferred (e.g. a VM whose CPU reports itself as znver1):
    # ask for the full register width; the recurrence over n = 16 states is one or two vectors then.
    # MAMBASEG_NATIVE_MARCH (e.g. x86-64-v3 = AVX2+FMA) builds for that instruction set instead of this CPU's:
    # how the AVX2 code is tested on an AVX-512 machine.
    march = os.environ.get("MAMBASEG_NATIVE_MARCH", "").strip() or "native"
    arch = f"-march={march}"
    width = "-mprefer-vector-width=512" if march == "native" and " avx512f" in _cpu_signature() \
        else "-mprefer-vector-width=256"
    attempts = [["-O3", "-ffast-math", arch, width, "-fopenmp"],
                ["-O3", "-ffast-math", arch, "-fopenmp"], ["-O3", "-ffast-math", "-fopenmp"],
                ["-O3", "-ffast-math", arch, "-fopenmp-simd"], ["-O3", "-ffast-math", "-fopenmp-simd"]]
    errors = []
    for flags in attempts:
        key = hashlib.sha256(src + " ".join([cc, *flags]).encode() + _cpu_signature().encode()).hexdigest()[:16]
        out_dir = _cache_dir() / key
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError:  # read-only home: build in the temp folder instead
            out_dir = Path(tempfile.gettempdir()) / f"mambaseg-native-{os.getuid()}" / key
        so = out_dir / "scan_kernel.so"
        if so.exists():
            try:
                build_flags[:] = flags
                return _load(so)
            except OSError as e:  # stale or foreign file: rebuild it
                errors.append(f"cached {so}: {e}")
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            obj, tmp_so = os.path.join(tmp, "k.o"), os.path.join(tmp, "k.so")
            # Compile and link separately: linking with -ffast-math would add start-up code that switches the
            # whole process to flush-denormals-to-zero.
            cmds = [[cc, *flags, "-fPIC", "-c", str(_SRC_DIR / "scan_kernel.c"), "-o", obj],
                    [cc, "-shared", obj, "-o", tmp_so, *(["-fopenmp"] if "-fopenmp" in flags else []),
                     "-lmvec", "-lm", "-lpthread"]]
            try:
                for cmd in cmds:
                    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                    if r.returncode != 0 and "-lmvec" in cmd:  # no libmvec: link without it (scalar exp)
                        cmd = [c for c in cmd if c != "-lmvec"]
                        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                    if r.returncode != 0:
                        raise RuntimeError(f"`{' '.join(cmd)}` failed: {(r.stderr or r.stdout).strip()[:400]}")
                os.replace(tmp_so, so)  # atomic: concurrent processes may build at once
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                errors.append(str(e))
                continue
        try:
            build_flags[:] = flags
            return _load(so)
        except OSError as e:
            errors.append(f"loading {so}: {e}")
    raise RuntimeError("; ".join(errors))


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    if lib.mambaseg_scan_abi_version() != 4:
        raise OSError("ABI version mismatch")
    P, I64, I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suf in ("f32", "f64"):
        f = getattr(lib, f"ss_forward_{suf}")
        f.argtypes = [P] * 8 + [I64] * 5 + [I, P, P, P, I64, I]
        f.restype = I
        f = getattr(lib, f"ss_backward_{suf}")
        f.argtypes = [P] * 11 + [I64] * 6 + [I] + [P] * 8 + [I]
        f.restype = I
        f = getattr(lib, f"cs_forward_{suf}")  # noqa: E501
        f.argtypes = [P] * 8 + [I64] * 4 + [I, P, I]
        f.restype = I
        f = getattr(lib, f"cs_backward_{suf}")
        f.argtypes = [P] * 9 + [I64] * 4 + [I] + [P] * 7 + [I]
        f.restype = I
    for name in ("mambaseg_expf_array", "mambaseg_log1p01f_array"):
        getattr(lib, name).argtypes = [P, P, I64]
        getattr(lib, name).restype = None
    return lib


def get_lib():
    """The loaded kernel library, building it on first call; None if it cannot be built here."""
    global _lib, _error
    if _lib is not None or _error is not None:
        return _lib
    with _lock:
        if _lib is None and _error is None:
            if os.environ.get("MAMBASEG_NATIVE", "1") == "0":
                _error = "disabled by MAMBASEG_NATIVE=0"
            elif platform.system() == "Windows":
                _error = "the native kernel is built with a POSIX C compiler; not supported on Windows yet"
            else:
                try:
                    _lib = _build()
                except Exception as e:  # noqa: BLE001 - any build failure means: fall back
                    _error = f"could not build the C kernel ({e})"
    return _lib


def is_available() -> bool:
    return get_lib() is not None


def why_unavailable() -> str:
    get_lib()
    return _error or ""


_HUGE = 2 << 20
_libc = None


def _empty_like(t: torch.Tensor) -> torch.Tensor:
    """torch.empty_like(t), with transparent huge pages requested for the new buffer's 2 MB-aligned interior
    (``madvise(MADV_HUGEPAGE)``, Linux, buffers of 8 MB and more) before anything touches it. Outputs of the
    scan at volumetric lengths are hundreds of MB, freshly mapped on every call; with 4 KB pages their first
    touch (page faults and zeroing) cost about as much as the scan's arithmetic on the machines measured
    (``scan_notes.md`` section 5; the glibc.malloc.hugetlb=1 tunable does the same for the whole process, but only
    if set before Python starts). Where THP is disabled the call changes nothing; MAMBASEG_NATIVE_HUGEPAGES=0
    turns it off."""
    global _libc
    out = torch.empty_like(t, memory_format=torch.contiguous_format)
    nbytes = out.numel() * out.element_size()
    if nbytes < 4 * _HUGE or not sys.platform.startswith("linux") or \
            os.environ.get("MAMBASEG_NATIVE_HUGEPAGES", "1") == "0":
        return out
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _libc.madvise.restype = ctypes.c_int
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        start = (out.data_ptr() + _HUGE - 1) & ~(_HUGE - 1)
        end = (out.data_ptr() + nbytes) & ~(_HUGE - 1)
        if end > start:
            _libc.madvise(start, end - start, 14)  # MADV_HUGEPAGE; a failure only means 4 KB pages
    return out


def _ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _nthreads() -> int:
    return max(1, torch.get_num_threads())


CHUNK = 1024
"""Steps per chunk of the plain scan (see "Chunking" in csrc/scan_impl.inc): each thread walks the sequence in
chunks of this many steps, all its rows per chunk, so the chunk's B/C, recomputed states and dB/dC stay in the
L2 cache at any length. At n = 16 the backward's working set is about 420 KB per thread (six (T, n) buffers),
within a 512 KB L2; measured on a 2 MB-L2 AVX-512 machine (process CPU time per element, 2 threads), 1024 and
2048 were 2-8% faster than 512, 2048 at most 3% faster than 1024. Read at each call (tests set small values to
put chunk boundaries anywhere)."""


def _chunking(l: int) -> tuple[int, int]:
    """(steps per chunk, number of chunks) for length l, as the C kernel computes them."""
    t = CHUNK if 0 < CHUNK < l else max(l, 1)
    return t, -(-l // t)


class _NativeScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, softplus):
        # u, delta, z: (b, d, l); A: (d, n); B, C: (b, g, n, l); D, bias: (d,): all contiguous, one dtype.
        lib = get_lib()
        b, d, l = u.shape
        n, g = A.shape[1], B.shape[1]
        out = _empty_like(u)
        last = u.new_empty(b, d, n)
        chunk, nchunks = _chunking(l)
        # the state at the start of every chunk, for the backward (1/chunk of the (b, d, l, n) states)
        ckpt = u.new_empty(b * d, nchunks, n) if any(ctx.needs_input_grad) else None
        fn = lib.ss_forward_f64 if u.dtype == torch.float64 else lib.ss_forward_f32
        rc = fn(_ptr(u), _ptr(delta), _ptr(A), _ptr(B), _ptr(C), _ptr(D), _ptr(z), _ptr(bias),
                b, d, l, n, g, int(softplus), _ptr(out), _ptr(last), _ptr(ckpt), chunk, _nthreads())
        if rc != 0:
            raise RuntimeError(f"native selective scan failed (code {rc}); n={n} must be <= 256")
        ctx.save_for_backward(u, delta, A, B, C, D, z, bias, ckpt)
        ctx.softplus = softplus
        ctx.chunk = chunk
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, bias, ckpt = ctx.saved_tensors
        lib = get_lib()
        b, d, l = u.shape
        n, g = A.shape[1], B.shape[1]
        dout = dout.contiguous()
        dlast = None if dlast is None else dlast.contiguous()
        du, ddelta = _empty_like(u), _empty_like(u)
        dA_rows = u.new_empty(b, d, n)
        dB, dC = _empty_like(B), _empty_like(C)
        dD_rows = u.new_empty(b, d)
        dbias_rows = u.new_empty(b, d)
        dz = _empty_like(u) if z is not None else None
        fn = lib.ss_backward_f64 if u.dtype == torch.float64 else lib.ss_backward_f32
        rc = fn(_ptr(u), _ptr(delta), _ptr(A), _ptr(B), _ptr(C), _ptr(D), _ptr(z), _ptr(bias), _ptr(dout),
                _ptr(dlast), _ptr(ckpt), ctx.chunk, b, d, l, n, g, int(ctx.softplus), _ptr(du), _ptr(ddelta),
                _ptr(dA_rows), _ptr(dB), _ptr(dC), _ptr(dD_rows), _ptr(dz), _ptr(dbias_rows), _nthreads())
        if rc != 0:
            raise RuntimeError(f"native selective scan backward failed (code {rc})")
        return (du, ddelta, dA_rows.sum(0), dB, dC,
                dD_rows.sum(0) if D is not None else None, dz,
                dbias_rows.sum(0) if bias is not None else None, None)


def selective_scan_native(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
    dtype_in = u.dtype
    ct = compute_dtype(u)

    def prep(t):
        return None if t is None else t.to(ct).contiguous()

    B4, C4 = as_grouped(B, C)
    # (b, g, n, l) as given: the kernel copies B/C time-major one cache-sized chunk at a time. contiguous() copies
    # only when one of B, C is grouped and the other is not (an expanded view); autograd sums dB/dC back.
    out, last = _NativeScan.apply(prep(u), prep(delta), prep(A), prep(B4), prep(C4), prep(D), prep(z),
                                  prep(delta_bias), bool(delta_softplus))
    out = out.to(dtype_in)
    return (out, last) if return_last_state else out


class _NativeCrossScan(torch.autograd.Function):
    """The fused 2-D cross scan (see cross_selective_scan.py). B, C come in (b, 4, l, n) time-major in each
    direction's scan order; u, delta, the output and all their gradients stay row-major."""

    @staticmethod
    def forward(ctx, u, delta, A, Bs, Cs, D, bias, pos, softplus):
        lib = get_lib()
        b, d, l = u.shape
        n = A.shape[1]
        out = torch.empty_like(u)
        fn = lib.cs_forward_f64 if u.dtype == torch.float64 else lib.cs_forward_f32
        rc = fn(_ptr(u), _ptr(delta), _ptr(A), _ptr(Bs), _ptr(Cs), _ptr(D), _ptr(bias), _ptr(pos), b, d, l, n,
                int(softplus), _ptr(out), _nthreads())
        if rc != 0:
            raise RuntimeError(f"native cross selective scan failed (code {rc}); n={n} must be <= 256")
        ctx.save_for_backward(u, delta, A, Bs, Cs, D, bias, pos)
        ctx.softplus = softplus
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, Bs, Cs, D, bias, pos = ctx.saved_tensors
        lib = get_lib()
        b, d, l = u.shape
        n = A.shape[1]
        dout = dout.contiguous()
        nt = min(_nthreads(), b * d, 64)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dA_rows = u.new_empty(b, 4 * d, n)
        dB_parts = u.new_zeros(nt, b, 4, l, n)
        dC_parts = u.new_zeros(nt, b, 4, l, n)
        dD_rows = u.new_empty(b, 4 * d)
        dbias_rows = u.new_empty(b, 4 * d)
        fn = lib.cs_backward_f64 if u.dtype == torch.float64 else lib.cs_backward_f32
        rc = fn(_ptr(u), _ptr(delta), _ptr(A), _ptr(Bs), _ptr(Cs), _ptr(D), _ptr(bias), _ptr(pos), _ptr(dout),
                b, d, l, n, int(ctx.softplus), _ptr(du), _ptr(ddelta), _ptr(dA_rows), _ptr(dB_parts),
                _ptr(dC_parts), _ptr(dD_rows), _ptr(dbias_rows), nt)
        if rc != 0:
            raise RuntimeError(f"native cross selective scan backward failed (code {rc})")
        dB = dB_parts.sum(0) if nt > 1 else dB_parts[0]
        dC = dC_parts.sum(0) if nt > 1 else dC_parts[0]
        return (du, ddelta, dA_rows.sum(0), dB, dC, dD_rows.sum(0) if D is not None else None,
                dbias_rows.sum(0) if bias is not None else None, None, None)


_POS: dict = {}


def _positions(h: int, w: int) -> torch.Tensor:
    t = _POS.get((h, w))
    if t is None:
        t = _POS[(h, w)] = scan_orders(h, w).to(torch.int32).contiguous()
    return t


def cross_selective_scan_native(u, delta, A, B, C, D, delta_bias, delta_softplus, h, w):
    ct = compute_dtype(u)

    def prep(t):
        return None if t is None else t.to(ct).contiguous()

    pos = _positions(h, w)
    perm = scan_orders(h, w)
    # B, C: (b, 4, n, L) row-major positions -> (b, 4, L, n) time-major in each direction's scan order (a copy
    # of n/d of the map's size; autograd maps dB, dC back)
    Bs = torch.stack([B[:, k].to(ct).index_select(-1, perm[k]) for k in range(4)], 1).transpose(-1, -2).contiguous()
    Cs = torch.stack([C[:, k].to(ct).index_select(-1, perm[k]) for k in range(4)], 1).transpose(-1, -2).contiguous()
    out = _NativeCrossScan.apply(prep(u), prep(delta), prep(A), Bs, Cs, prep(D), prep(delta_bias), pos,
                                 bool(delta_softplus))
    return out.to(u.dtype)


register_fused("native", cross_selective_scan_native)

register_backend("native", selective_scan_native, devices=("cpu",), is_available=is_available,
                 why_unavailable=why_unavailable, priority=20)
