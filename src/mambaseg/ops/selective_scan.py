"""``selective_scan``: the S6 operator of Mamba, with input checking and backend dispatch.

Same signature and semantics as mamba-ssm's ``selective_scan_ref``:

    selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend=None)

=============  =====================  ==========================================================
argument       shape                  meaning
=============  =====================  ==========================================================
u              (b, d, l)              input sequence
delta          (b, d, l)              step size (before bias / softplus)
A              (d, n)                 state matrix (real; complex A is not supported)
B, C           (b, n, l) or           input / output projections; grouped form: channel c uses
               (b, g, n, l)           group c // (d // g) (VMamba's 4 scan directions are groups)
D              (d,)                   skip term, optional
z              (b, d, l)              gate: out *= silu(z), optional
delta_bias     (d,)                   added to delta before the softplus, optional
=============  =====================  ==========================================================

The computation runs in float32 whatever the input dtype (also under autocast; float64 inputs run in
float64) and the output comes back in ``u``'s dtype. ``return_last_state=True`` returns ``(out, x_L)`` with
the final state (b, d, n) in the compute dtype.

Backends (``available_backends()`` lists what this machine has, best first):

* ``reference``: the math as written, a Python loop over l; the test oracle. Slow.
* ``torch``: blocked sequential scan in pure PyTorch with a custom backward that keeps only block-start
  states; exact (same recurrence), any device.
* ``native``: a C kernel compiled on first use with the system C compiler (CPU only); fused forward and
  backward, multithreaded. Falls back to ``torch`` automatically when no compiler is available.

``backend=None`` uses the process default (``set_default_backend`` / ``use_backend`` / the environment
variable ``MAMBASEG_SCAN_BACKEND``), which is ``"auto"``: the best available backend for the tensors' device.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Dict, List, Optional

import torch

from .reference import selective_scan_reference

__all__ = ["selective_scan", "record_scans", "intercept_scans", "ScanCall", "available_backends", "set_default_backend", "get_default_backend",
           "use_backend", "resolve_backend", "register_backend", "BackendUnavailableError"]


class BackendUnavailableError(RuntimeError):
    """A scan backend was requested by name but cannot run here."""


class _Backend:
    def __init__(self, name: str, fn: Callable, devices: tuple, is_available: Callable[[], bool],
                 why_unavailable: Callable[[], str], priority: int):
        self.name, self.fn, self.devices = name, fn, devices
        self.is_available, self.why_unavailable, self.priority = is_available, why_unavailable, priority


_BACKENDS: Dict[str, _Backend] = {}
_state = threading.local()


def register_backend(name: str, fn: Callable, devices=("cpu", "cuda"), is_available=lambda: True,
                     why_unavailable=lambda: "", priority: int = 0) -> None:
    """Register a scan implementation. Higher ``priority`` wins under ``backend="auto"``."""
    _BACKENDS[name] = _Backend(name, fn, tuple(devices), is_available, why_unavailable, priority)


def available_backends(device: str | torch.device = "cpu") -> List[str]:
    """Names of the backends that can run on ``device`` here, best first (``auto`` picks the first)."""
    dev = torch.device(device).type
    ok = [b for b in _BACKENDS.values() if dev in b.devices and b.is_available()]
    return [b.name for b in sorted(ok, key=lambda b: -b.priority)]


def get_default_backend() -> str:
    return getattr(_state, "backend", None) or os.environ.get("MAMBASEG_SCAN_BACKEND", "auto")


def set_default_backend(name: str) -> None:
    """Set the backend used when ``selective_scan`` is called without ``backend=`` (models do that)."""
    if name != "auto" and name not in _BACKENDS:
        raise ValueError(f"unknown scan backend {name!r}; known: {['auto', *sorted(_BACKENDS)]}")
    _state.backend = name


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: run every scan inside the block on backend ``name``."""
    old = getattr(_state, "backend", None)
    set_default_backend(name)
    try:
        yield
    finally:
        _state.backend = old


def resolve_backend(name: Optional[str], device: str | torch.device = "cpu") -> str:
    """Turn ``name`` (or the default) into a concrete backend name for ``device``; raise if it cannot run."""
    name = name or get_default_backend()
    dev = torch.device(device).type
    if name == "auto":
        avail = available_backends(dev)
        if not avail:
            raise BackendUnavailableError(f"no selective-scan backend can run on device {dev!r}")
        return avail[0]
    if name not in _BACKENDS:
        raise ValueError(f"unknown scan backend {name!r}; known: {['auto', *sorted(_BACKENDS)]}")
    b = _BACKENDS[name]
    if dev not in b.devices:
        raise BackendUnavailableError(
            f"scan backend {name!r} does not run on {dev!r} tensors (it supports {list(b.devices)}); "
            f"use backend='auto' or one of {available_backends(dev)}")
    if not b.is_available():
        raise BackendUnavailableError(
            f"scan backend {name!r} is not available here: {b.why_unavailable()}; "
            f"available on {dev!r}: {available_backends(dev)}")
    return name


class ScanCall(tuple):
    """One observed scan call: (b, d, l, n, has_D, has_z, backend)."""
    __slots__ = ()
    _fields = ("b", "d", "l", "n", "has_D", "has_z", "backend")

    def __new__(cls, *args):
        return tuple.__new__(cls, args)

    b = property(lambda s: s[0])
    d = property(lambda s: s[1])
    l = property(lambda s: s[2])
    n = property(lambda s: s[3])
    has_D = property(lambda s: s[4])
    has_z = property(lambda s: s[5])
    backend = property(lambda s: s[6])

    @property
    def flops(self) -> int:
        """FLOPs in VMamba/fvcore's convention (mamba issue #110): 9*b*l*d*n, + b*d*l for D, + b*d*l for z."""
        return 9 * self.b * self.l * self.d * self.n + (self.b * self.d * self.l if self.has_D else 0) + \
            (self.b * self.d * self.l if self.has_z else 0)


_observers: list = []


@contextlib.contextmanager
def record_scans():
    """Context manager yielding a list that receives a ``ScanCall`` for every ``selective_scan`` call inside
    the block (used by the FLOP counter: the scan is counted analytically, not traced)."""
    calls: list = []
    _observers.append(calls)
    try:
        yield calls
    finally:
        _observers.remove(calls)


_interceptors: list = []


@contextlib.contextmanager
def intercept_scans(wrapper: Callable[[Callable], Callable]):
    """Context manager: every ``selective_scan`` call inside the block runs ``wrapper(backend_fn)(...)``
    instead of the backend function (after the input checks). Used by the profiler to keep the scan out of
    traced FLOP counts (it is counted analytically) or to replace it by a zero-cost stand-in."""
    _interceptors.append(wrapper)
    try:
        yield
    finally:
        _interceptors.remove(wrapper)


def _shape_err(arg, t, expected):
    return ValueError(f"selective_scan: {arg} has shape {tuple(t.shape)}, expected {expected}")


def _check_inputs(u, delta, A, B, C, D, z, delta_bias):
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"selective_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.is_complex():
            raise NotImplementedError(
                f"selective_scan: {name} is complex ({t.dtype}); complex A/B/C (S4D-Lin style) is out of scope "
                f"for mambaseg: every supported model uses real A = -exp(A_log)")
        if not t.is_floating_point():
            raise ValueError(f"selective_scan: {name} has dtype {t.dtype}, expected a floating dtype "
                             f"(float16, bfloat16, float32 or float64)")
        if t.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {u.device}")
    if u.dim() != 3:
        raise _shape_err("u", u, "(b, d, l)")
    b, d, l = u.shape
    if delta.shape != u.shape:
        raise _shape_err("delta", delta, f"(b, d, l) = {(b, d, l)} like u")
    if A.dim() != 2 or A.shape[0] != d:
        raise _shape_err("A", A, f"(d, n) with d = {d}")
    n = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        if M.dim() == 3:
            if tuple(M.shape) != (b, n, l):
                raise _shape_err(name, M, f"(b, n, l) = {(b, n, l)} or grouped (b, g, n, l)")
        elif M.dim() == 4:
            g = M.shape[1]
            if M.shape[0] != b or M.shape[2] != n or M.shape[3] != l or g == 0 or d % g != 0:
                raise _shape_err(name, M, f"(b, g, n, l) = ({b}, g, {n}, {l}) with g dividing d = {d}")
        else:
            raise _shape_err(name, M, f"(b, n, l) = {(b, n, l)} or grouped (b, g, n, l)")
    if B.dim() == 4 and C.dim() == 4 and B.shape[1] != C.shape[1]:
        raise ValueError(f"selective_scan: B has {B.shape[1]} groups but C has {C.shape[1]}; they must match")
    if D is not None and tuple(D.shape) != (d,):
        raise _shape_err("D", D, f"(d,) = ({d},)")
    if delta_bias is not None and tuple(delta_bias.shape) != (d,):
        raise _shape_err("delta_bias", delta_bias, f"(d,) = ({d},)")
    if z is not None and z.shape != u.shape:
        raise _shape_err("z", z, f"(b, d, l) = {(b, d, l)} like u")
    if delta.dtype != u.dtype:
        raise ValueError(f"selective_scan: delta has dtype {delta.dtype} but u has {u.dtype}; they must match")
    if z is not None and z.dtype != u.dtype:
        raise ValueError(f"selective_scan: z has dtype {z.dtype} but u has {u.dtype}; they must match")
    if B.dtype != C.dtype:
        raise ValueError(f"selective_scan: B has dtype {B.dtype} but C has {C.dtype}; they must match")


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend: Optional[str] = None):
    """Selective scan (S6). See the module docstring for shapes, semantics and backends."""
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u.device)
    fn = _BACKENDS[name].fn
    for wrap in _interceptors:
        fn = wrap(fn)
    if _observers:
        call = ScanCall(u.shape[0], u.shape[1], u.shape[2], A.shape[1], D is not None, z is not None, name)
        for obs in _observers:
            obs.append(call)
    dev = u.device.type if u.device.type in ("cpu", "cuda") else "cpu"
    with torch.autocast(device_type=dev, enabled=False):
        return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=bool(delta_softplus),
                  return_last_state=bool(return_last_state))


register_backend("reference", selective_scan_reference, devices=("cpu", "cuda"), priority=0)
