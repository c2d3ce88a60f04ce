"""Reference selective scan, written from the math: slow, obviously correct, the test oracle.

Semantics follow mamba-ssm's ``selective_scan_ref`` (see ``mambaseg.ops.selective_scan`` for the contract):

    delta_t = softplus(delta_t + delta_bias)            (each step optional)
    x_t     = exp(delta_t * A) * x_{t-1} + delta_t * B_t * u_t      x_{-1} = 0,  x: (b, d, n)
    y_t     = sum_n x_t * C_t + D * u_t
    out     = y * silu(z)                               (optional)

Everything is computed in float32 (float64 stays float64) and the output is cast to ``u``'s dtype. It
materialises (b, d, l, n) tensors and loops over l in Python: use it on small shapes only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _expand_groups(M: torch.Tensor, d: int) -> torch.Tensor:
    """(b, n, l) or (b, g, n, l) -> (b, d, n, l); channel c uses group c // (d // g)."""
    if M.dim() == 3:
        return M.unsqueeze(1).expand(M.shape[0], d, M.shape[1], M.shape[2])
    g = M.shape[1]
    return M.repeat_interleave(d // g, dim=1)


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False):
    dtype_in = u.dtype
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    u = u.to(ct)
    delta = delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, l = u.shape
    A = A.to(ct)
    Bx = _expand_groups(B.to(ct), d)  # (b, d, n, l)
    Cx = _expand_groups(C.to(ct), d)
    x = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(l):
        dA = torch.exp(delta[:, :, t, None] * A)                          # (b, d, n)
        dBu = delta[:, :, t, None] * Bx[:, :, :, t] * u[:, :, t, None]     # (b, d, n)
        x = dA * x + dBu
        ys.append((x * Cx[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.to(ct)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    out = y.to(dtype_in)
    return (out, x) if return_last_state else out
