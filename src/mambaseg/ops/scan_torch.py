"""``torch`` backend: a blocked sequential scan in pure PyTorch with a custom backward.

The recurrence ``x_t = exp(dt_t A) x_{t-1} + dt_t u_t B_t`` is run step by step (the same arithmetic as the
reference: no exp-of-cumsum rewrite that can overflow), but in blocks of ``T`` steps laid out time-major in
reusable buffers of about 2^20 elements (``scan_notes.md`` §0, "seqblk"):

* forward: per block, the decays ``exp(dt A)`` and inputs ``dt u B`` of all T steps in two batched ops, then one
  ``addcmul(out=)`` per step, then one einsum for the outputs of the block. Only the state at the start of
  each block is kept for the backward.
* backward: per block, in reverse: recompute the block's states from its start state, run the reverse
  recurrence ``g_t = g_{t+1} exp(dt_{t+1} A) + dy_t C_t`` one ``addcmul`` per step, then get the gradients of
  dt, A, u, B and C with a few einsums over the block.

Memory is O(b d n T) plus one state per block: no (b, d, l, n) tensor is materialised. softplus, delta_bias,
D and the z gate are plain differentiable PyTorch ops around the core. Runs on any device (the fallback on
CUDA when Triton is not available, and on CPUs where the ``native`` kernel cannot be built).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import as_grouped, compute_dtype
from .selective_scan import register_backend


def _block_len(b: int, d: int, n: int) -> int:
    return int(min(256, max(4, (1 << 20) // max(1, b * d * n))))


def _block_inputs(u_, dt_, A_, B_, t0, T, bufs=None):
    """Decays and inputs of steps t0..t0+T, time-major: (T, b, g, h, n); written into ``bufs`` if given
    (fresh large allocations are slow: first-touch page faults cost more than the arithmetic)."""
    dtb = dt_[..., t0:t0 + T].permute(3, 0, 1, 2)                       # (T, b, g, h)
    dtu = dtb * u_[..., t0:t0 + T].permute(3, 0, 1, 2)                    # (T, b, g, h)
    Bb = B_[..., t0:t0 + T].permute(3, 0, 1, 2).unsqueeze(3)              # (T, b, g, 1, n)
    if bufs is None:
        return dtb, dtu, torch.exp(dtb.unsqueeze(-1) * A_), dtu.unsqueeze(-1) * Bb
    dA, dBu = bufs[0][:T], bufs[1][:T]
    torch.mul(dtb.unsqueeze(-1), A_, out=dA)
    dA.exp_()
    torch.mul(dtu.unsqueeze(-1), Bb, out=dBu)
    return dtb, dtu, dA, dBu


class _BlockedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, dt, A, B, C):
        # u, dt: (b, d, l); A: (d, n); B, C: (b, g, n, l)
        b, d, l = u.shape
        g, n = B.shape[1], A.shape[1]
        h = d // g
        u_, dt_, A_ = u.view(b, g, h, l), dt.view(b, g, h, l), A.view(g, h, n)
        T = _block_len(b, d, n)
        x = u.new_zeros(b, g, h, n)
        xs = u.new_empty(T, b, g, h, n)
        bufs = (u.new_empty(T, b, g, h, n), u.new_empty(T, b, g, h, n))
        y = u.new_empty(b, g, h, l)
        starts = []
        for t0 in range(0, l, T):
            Tk = min(T, l - t0)
            starts.append(x)
            _, _, dA, dBu = _block_inputs(u_, dt_, A_, B, t0, Tk, bufs)
            for i in range(Tk):
                torch.addcmul(dBu[i], dA[i], x, out=xs[i])
                x = xs[i]
            y[..., t0:t0 + Tk] = torch.einsum("tbghn,bgnt->bght", xs[:Tk], C[..., t0:t0 + Tk])
            x = x.clone()
        ctx.save_for_backward(u, dt, A, B, C, torch.stack(starts))
        ctx.T = T
        return y.view(b, d, l), x.view(b, d, n)

    @staticmethod
    def backward(ctx, dy, dlast):
        u, dt, A, B, C, starts = ctx.saved_tensors
        T = ctx.T
        b, d, l = u.shape
        g, n = B.shape[1], A.shape[1]
        h = d // g
        u_, dt_, A_ = u.view(b, g, h, l), dt.view(b, g, h, l), A.view(g, h, n)
        dy_ = dy.contiguous().view(b, g, h, l) if dy is not None else u.new_zeros(b, g, h, l)
        gx = dlast.reshape(b, g, h, n).clone() if dlast is not None else u.new_zeros(b, g, h, n)
        du, ddt = torch.empty_like(u_), torch.empty_like(u_)
        dA = torch.zeros_like(A_)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        xs = u.new_empty(T, b, g, h, n)
        gs = u.new_empty(T, b, g, h, n)
        bufs = (u.new_empty(T, b, g, h, n), u.new_empty(T, b, g, h, n))
        block_starts = list(range(0, l, T))
        for k in reversed(range(len(block_starts))):
            t0 = block_starts[k]
            Tk = min(T, l - t0)
            dtb, dtu, dAb, dBu = _block_inputs(u_, dt_, A_, B, t0, Tk, bufs)
            x = starts[k]
            for i in range(Tk):                                      # recompute the block's states
                torch.addcmul(dBu[i], dAb[i], x, out=xs[i])
                x = xs[i]
            Cb = C[..., t0:t0 + Tk].permute(3, 0, 1, 2).unsqueeze(3)  # (T, b, g, 1, n)
            dyb = dy_[..., t0:t0 + Tk].permute(3, 0, 1, 2).unsqueeze(-1)  # (T, b, g, h, 1)
            for i in reversed(range(Tk)):                            # reverse recurrence
                torch.addcmul(gx, dyb[i], Cb[i], out=gs[i])
                gx = gs[i] * dAb[i]
            xsk, gsk = xs[:Tk], gs[:Tk]
            xprev = torch.cat([starts[k].unsqueeze(0), xsk[:-1]], 0)
            gdecay = gsk * xprev * dAb                                # dL/d(dt*A), (T, b, g, h, n)
            Bb = B[..., t0:t0 + Tk].permute(3, 0, 1, 2).unsqueeze(3)
            gB = (gsk * Bb).sum(-1)                                   # (T, b, g, h)
            ddt[..., t0:t0 + Tk] = ((gdecay * A_).sum(-1) + gB * u_[..., t0:t0 + Tk].permute(3, 0, 1, 2)
                                    ).permute(1, 2, 3, 0)
            du[..., t0:t0 + Tk] = (gB * dtb).permute(1, 2, 3, 0)
            dA += torch.einsum("tbghn,tbgh->ghn", gdecay, dtb)
            dB[..., t0:t0 + Tk] = torch.einsum("tbghn,tbgh->bgnt", gsk, dtu)
            dC[..., t0:t0 + Tk] = torch.einsum("tbghn,tbgh->bgnt", xsk, dyb.squeeze(-1))
        return du.view(b, d, l), ddt.view(b, d, l), dA.view(d, n), dB, dC


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    dtype_in = u.dtype
    ct = compute_dtype(u)
    u32 = u.to(ct)
    dt = delta.to(ct)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    B4, C4 = (t.to(ct) for t in as_grouped(B, C))
    y, last = _BlockedScan.apply(u32.contiguous(), dt.contiguous(), A.to(ct).contiguous(), B4.contiguous(),
                                 C4.contiguous())
    if D is not None:
        y = y + u32 * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    out = y.to(dtype_in)
    return (out, last) if return_last_state else out


register_backend("torch", selective_scan_torch, devices=("cpu", "cuda"), priority=10)
