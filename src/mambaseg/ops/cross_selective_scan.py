"""``cross_selective_scan``: SS2D's cross-scan -> grouped selective scan -> cross-merge as one operator.

    cross_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, *, h, w,
                         backend=None)

=============  =====================  ==========================================================
argument       shape                  meaning
=============  =====================  ==========================================================
u              (b, d, h*w)            the row-major map, shared input of the 4 directions
delta          (b, 4, d, h*w)         step size of direction k for the token at row-major position p
A              (4*d, n)               direction k uses rows k*d:(k+1)*d
B, C           (b, 4, n, h*w)         direction k's B/C for the token at row-major position p
D, delta_bias  (4*d,)                 optional, rows as A
=============  =====================  ==========================================================

Returns y (b, d, h*w), row-major, in ``u``'s dtype, equal to (the lead's convention, issues 18/19)::

    cross_merge(selective_scan(cross_scan(u.view(b, d, h, w)).reshape(b, 4*d, L), delta_in_scan_order, A,
                               B_in_scan_order, C_in_scan_order, D, delta_bias, delta_softplus).view(b, 4, d, L), h, w)

where "in scan order" permutes the positions with cross_scan's orders (:func:`scan_orders`: 0 row-major,
1 column-major, 2 and 3 their reverses). All of delta/B/C being indexed by row-major position is what lets
SS2D compute its projections once on the row-major map, and a backend walk the four orders without copying.

Backends: a scan backend may register a fused implementation with :func:`register_fused` (``native`` does:
one C pass per (batch, channel) over the four orders, summing into the row-major output, forward and
backward); every other backend (and every call inside ``intercept_scans``, so the profiler's wrappers see the
scans) runs the composed form above (:func:`cross_selective_scan_composed`) on that backend. ``record_scans``
observes one grouped scan call (b, 4d, L, n) either way.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from .cross_scan import cross_merge, cross_scan
from .selective_scan import ScanCall, _interceptors, _observers, resolve_backend, selective_scan

__all__ = ["cross_selective_scan", "cross_selective_scan_composed", "register_fused", "fused_backends",
           "scan_orders"]

_FUSED: Dict[str, Callable] = {}
_ORDERS: Dict[tuple, torch.Tensor] = {}


def register_fused(backend: str, fn: Callable) -> None:
    """Register ``fn(u, delta, A, B, C, D, delta_bias, delta_softplus, h, w)`` as backend ``backend``'s fused
    cross selective scan (inputs already checked; same contract as :func:`cross_selective_scan`)."""
    _FUSED[backend] = fn


def fused_backends() -> list:
    """Names of the scan backends that have a fused implementation registered."""
    return sorted(_FUSED)


def scan_orders(h: int, w: int, device="cpu") -> torch.Tensor:
    """(4, h*w) int64: entry [k, t] is the row-major position of the t-th token of direction k (cross_scan's
    orders: row-major, column-major, and both reversed). Cached per (h, w, device)."""
    key = (h, w, str(device))
    t = _ORDERS.get(key)
    if t is None:
        row = torch.arange(h * w, device=device)
        col = row.view(h, w).t().reshape(-1)
        t = torch.stack([row, col, row.flip(0), col.flip(0)])
        _ORDERS[key] = t
    return t


def to_scan_order(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(b, 4, c, L) indexed by row-major position -> direction k's values in direction k's scan order."""
    perm = scan_orders(h, w, x.device)
    return torch.stack([x[:, k].index_select(-1, perm[k]) for k in range(4)], dim=1)


def cross_selective_scan_composed(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, *, h, w,
                                  backend=None):
    """The definition: cross_scan -> selective_scan (any backend) -> cross_merge."""
    b, d, L = u.shape
    xs = cross_scan(u.reshape(b, d, h, w)).reshape(b, 4 * d, L)
    ys = selective_scan(xs, to_scan_order(delta, h, w).reshape(b, 4 * d, L), A, to_scan_order(B, h, w),
                        to_scan_order(C, h, w), D, delta_bias=delta_bias, delta_softplus=delta_softplus,
                        backend=backend)
    return cross_merge(ys.view(b, 4, d, L), h, w)


def _check(u, delta, A, B, C, D, delta_bias, h, w):
    def err(name, t, exp):
        return ValueError(f"cross_selective_scan: {name} has shape {tuple(t.shape)}, expected {exp}")
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("delta_bias", delta_bias)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"cross_selective_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise ValueError(f"cross_selective_scan: h and w must be positive ints, got h={h!r}, w={w!r}")
    if u.dim() != 3 or u.shape[2] != h * w:
        raise err("u", u, f"(b, d, h*w) with h*w = {h * w}")
    b, d, L = u.shape
    if tuple(delta.shape) != (b, 4, d, L):
        raise err("delta", delta, f"(b, 4, d, h*w) = {(b, 4, d, L)}")
    if A.dim() != 2 or A.shape[0] != 4 * d:
        raise err("A", A, f"(4*d, n) with 4*d = {4 * d}")
    n = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        if tuple(M.shape) != (b, 4, n, L):
            raise err(name, M, f"(b, 4, n, h*w) = {(b, 4, n, L)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (4 * d,):
            raise err(name, t, f"(4*d,) = ({4 * d},)")
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("delta_bias", delta_bias)):
        if t is None:
            continue
        if t.is_complex() or not t.is_floating_point():
            raise ValueError(f"cross_selective_scan: {name} has dtype {t.dtype}, expected a real floating dtype")
        if t.device != u.device:
            raise ValueError(f"cross_selective_scan: {name} is on {t.device} but u is on {u.device}")
    if delta.dtype != u.dtype:
        raise ValueError(f"cross_selective_scan: delta has dtype {delta.dtype} but u has {u.dtype}; they must match")
    if B.dtype != C.dtype:
        raise ValueError(f"cross_selective_scan: B has dtype {B.dtype} but C has {C.dtype}; they must match")


def cross_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, *, h: int, w: int,
                         backend: Optional[str] = None):
    """Fused 2-D cross selective scan; see the module docstring."""
    # Under TorchScript tracing (ONNX export) x.shape entries are 0-d tensors; the map size is static there.
    h = int(h) if isinstance(h, torch.Tensor) and h.dim() == 0 else h
    w = int(w) if isinstance(w, torch.Tensor) and w.dim() == 0 else w
    _check(u, delta, A, B, C, D, delta_bias, h, w)
    name = resolve_backend(backend, u.device)
    fused = _FUSED.get(name)
    if fused is None or _interceptors:
        return cross_selective_scan_composed(u, delta, A, B, C, D, delta_bias, delta_softplus, h=h, w=w,
                                             backend=name)
    if _observers:
        call = ScanCall(u.shape[0], 4 * u.shape[1], u.shape[2], A.shape[1], D is not None, False, name)
        for obs in _observers:
            obs.append(call)
    dev = u.device.type if u.device.type in ("cpu", "cuda") else "cpu"
    with torch.autocast(device_type=dev, enabled=False):
        return fused(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), h, w)
