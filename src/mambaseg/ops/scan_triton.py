"""``triton`` backend: the selective scan as a Triton kernel for CUDA GPUs (forward and backward).

One program handles ``BLOCK_D`` channels of one batch element and walks the sequence in chunks of ``BLOCK_L``
steps. Inside a chunk the first-order recurrence ``x_t = a_t x_{t-1} + b_t`` is a ``tl.associative_scan`` over
the (BLOCK_D, N, BLOCK_L) tile with the combine ``(a1, b1), (a2, b2) -> (a1 a2, a2 b1 + b2)``; the state
carried between chunks stays in registers, in fp32 (inputs may be fp16/bf16/fp32).

Backward: the forward stores only the state at the start of each segment of 1024 steps (b, d, l / 1024, N, like the
native kernel's chunks). Segments are visited in reverse; in each, the start states of its chunks are recomputed
into a small scratch, then its chunks are visited in reverse: the chunk's states are recomputed from its start
state, the adjoint recurrence
``g_t = dy_t C_t + exp(dt_{t+1} A) g_{t+1}`` is a reverse associative scan, and the gradients follow without
any shifted state, because ``exp(dt_t A) x_{t-1} = x_t - dt_t u_t B_t``:

    d dt_t = sum_n g_t (A (x_t - dt_t u_t B_t) + u_t B_t)      d A  = sum_t g_t (x_t - dt_t u_t B_t) dt_t
    d u_t  = sum_n g_t dt_t B_t + D dy_t                       d B_t = sum_(channels of the group) g_t dt_t u_t
    d C_t  = sum_(channels of the group) dy_t x_t

B/C gradients are reduced over the program's channels and added atomically across programs of a group.

Status: written and checked for exactness against the reference in Triton's interpreter on the CPU
(``TRITON_INTERPRET=1``, see tests/ops/test_scan_triton.py). It has NOT yet been compiled or timed on a GPU:
no GPU was available when it was written. ``backend="auto"`` therefore does not pick it; ask for it with
``backend="triton"`` (CUDA tensors) or set ``MAMBASEG_TRITON_AUTO=1``.
"""

from __future__ import annotations

import os

import torch

from ._common import as_grouped
from .selective_scan import register_backend

try:  # Triton is optional: only a CUDA machine (or the interpreter) can use it
    import triton
    import triton.language as tl
    _IMPORT_ERROR = None
except Exception as e:  # noqa: BLE001
    triton = tl = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:
    @triton.jit
    def _combine(a1, b1, a2, b2):
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _position(t, k, l, h, w, CROSS: tl.constexpr):
        # Row-major position of scan step t in direction k: 0 row-major, 1 column-major, 2 and 3 reversed.
        if CROSS:
            tt = tl.where(k >= 2, l - 1 - t, t)
            return tl.where(k % 2 == 1, (tt % h) * w + tt // h, tt)
        else:
            return t

    @triton.jit
    def _load_chunk(u_ptr, dt_ptr, bias_ptr, B_ptr, C_ptr, A_ptr, u_base, dt_base, a_row, bc_base, offs_d, offs_n,
                    t, k, d, l, n, h, w, SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, CROSS: tl.constexpr):
        # One chunk of steps t (BL,): u and dt (BD, BL), B and C (BD, N, BL), A (BD, N), at the steps' positions.
        md = offs_d < d
        mn = offs_n < n
        ml = t < l
        pos = _position(t, k, l, h, w, CROSS)
        m2 = md[:, None] & ml[None, :]
        urow = u_base[:, None] + pos[None, :]
        dtrow = dt_base[:, None] + pos[None, :]
        u = tl.load(u_ptr + urow, mask=m2, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + dtrow, mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + tl.load(bias_ptr + a_row, mask=md, other=0.0).to(tl.float32)[:, None]
        sig = tl.full(dt.shape, 1.0, tl.float32)
        if SOFTPLUS:
            e = tl.exp(tl.minimum(dt, 20.0))
            sig = tl.where(dt < 20.0, e / (1.0 + e), 1.0)
            dt = tl.where(dt < 20.0, tl.log(1.0 + e), dt)
        dt = tl.where(m2, dt, 0.0)
        A = tl.load(A_ptr + a_row[:, None] * n + offs_n[None, :], mask=md[:, None] & mn[None, :],
                    other=0.0).to(tl.float32)
        bc = bc_base[:, :, None] + pos[None, None, :]
        m3 = md[:, None, None] & mn[None, :, None] & ml[None, None, :]
        Bt = tl.load(B_ptr + bc, mask=m3, other=0.0).to(tl.float32)    # (BD, N, BL)
        Ct = tl.load(C_ptr + bc, mask=m3, other=0.0).to(tl.float32)
        return u, dt, sig, A, Bt, Ct, m2, m3, urow, dtrow, bc

    @triton.jit
    def _bases(pid_b, k, offs_d, offs_n, d, l, n, g, hd, NDIR: tl.constexpr, CROSS: tl.constexpr):
        # Offsets of one (batch, direction, channel block): u rows, dt rows, the A/D/bias rows, B/C rows (BD, N).
        u_base = (pid_b * d + offs_d) * l
        dt_base = ((pid_b * NDIR + k) * d + offs_d) * l
        a_row = k * d + offs_d
        if CROSS:
            grp = offs_d * 0 + k
        else:
            grp = offs_d // hd
        bc_base = ((pid_b * g + grp)[:, None] * n + offs_n[None, :]) * l
        return u_base, dt_base, a_row, bc_base

    @triton.jit
    def _fwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, starts_ptr,
                    d, l, n, g, hd, nchunks, nsegs, h, w,
                    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                    NDIR: tl.constexpr, CROSS: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
                    SEG_TILES: tl.constexpr):
        pid_b = tl.program_id(0)
        pid_d = tl.program_id(1)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        offs_l = tl.arange(0, BLOCK_L)
        md = offs_d < d
        mdn = md[:, None] & (offs_n < n)[None, :]
        for k in range(0, NDIR):
            u_base, dt_base, a_row, bc_base = _bases(pid_b, k, offs_d, offs_n, d, l, n, g, hd, NDIR, CROSS)
            srow = pid_b * NDIR * d + a_row                                 # state rows (b, NDIR*d)
            x = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
            if HAS_D:
                Dv = tl.load(D_ptr + a_row, mask=md, other=0.0).to(tl.float32)
            for c in range(0, nchunks):
                t0 = c * BLOCK_L
                # the state at the start of each segment of SEG_TILES chunks (the backward's checkpoints)
                tl.store(starts_ptr + ((srow * nsegs + c // SEG_TILES)[:, None] * n + offs_n[None, :]), x,
                         mask=mdn & (c % SEG_TILES == 0))
                u, dt, sig, A, Bt, Ct, m2, m3, urow, dtrow, bc = _load_chunk(
                    u_ptr, dt_ptr, bias_ptr, B_ptr, C_ptr, A_ptr, u_base, dt_base, a_row, bc_base, offs_d,
                    offs_n, t0 + offs_l, k, d, l, n, h, w, SOFTPLUS, HAS_BIAS, CROSS)
                dA = tl.exp(dt[:, None, :] * A[:, :, None])
                dBu = (dt * u)[:, None, :] * Bt
                aa, hh = tl.associative_scan((dA, dBu), axis=2, combine_fn=_combine)
                hs = hh + aa * x[:, :, None]
                y = tl.sum(hs * Ct, axis=1)
                last_col = (offs_l == tl.minimum(l - t0, BLOCK_L) - 1)[None, None, :]
                x = tl.sum(tl.where(last_col, hs, 0.0), axis=2)
                if HAS_D:
                    y = y + u * Dv[:, None]
                if HAS_Z:
                    z = tl.load(z_ptr + urow, mask=m2, other=0.0).to(tl.float32)
                    y = y * z / (1.0 + tl.exp(-z))
                if CROSS:   # the merge: this program owns these output rows, directions run one after another
                    y = y + tl.load(out_ptr + urow, mask=m2, other=0.0)
                tl.store(out_ptr + urow, y, mask=m2)
            tl.store(last_ptr + (srow[:, None] * n + offs_n[None, :]), x, mask=mdn)

    @triton.jit
    def _bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, starts_ptr, scratch_ptr, dout_ptr,
                    dlast_ptr, du_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dbias_ptr,
                    d, l, n, g, hd, nchunks, nsegs, h, w,
                    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                    HAS_DLAST: tl.constexpr, NDIR: tl.constexpr, CROSS: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
                    SEG_TILES: tl.constexpr):
        pid_b = tl.program_id(0)
        pid_d = tl.program_id(1)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        offs_l = tl.arange(0, BLOCK_L)
        md = offs_d < d
        mdn = md[:, None] & (offs_n < n)[None, :]
        for k in range(0, NDIR):
            u_base, dt_base, a_row, bc_base = _bases(pid_b, k, offs_d, offs_n, d, l, n, g, hd, NDIR, CROSS)
            srow = pid_b * NDIR * d + a_row
            if HAS_D:
                Dv = tl.load(D_ptr + a_row, mask=md, other=0.0).to(tl.float32)
            carry = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)   # exp(dt_{t0'} A) g_{t0'} from the chunk after
            if HAS_DLAST:
                carry = tl.load(dlast_ptr + (srow[:, None] * n + offs_n[None, :]), mask=mdn,
                                other=0.0).to(tl.float32)
            dA_acc = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
            dD_acc = tl.zeros((BLOCK_D,), tl.float32)
            dbias_acc = tl.zeros((BLOCK_D,), tl.float32)
            for sc in range(0, nsegs):
                sg = nsegs - 1 - sc
                ntiles = tl.minimum(nchunks - sg * SEG_TILES, SEG_TILES)
                # forward over the segment from its checkpoint: each chunk's start state into this program's
                # scratch rows (b, ndir*d, SEG_TILES, n)
                x = tl.load(starts_ptr + ((srow * nsegs + sg)[:, None] * n + offs_n[None, :]), mask=mdn,
                            other=0.0)
                for ti in range(0, ntiles):
                    t0 = (sg * SEG_TILES + ti) * BLOCK_L
                    tl.store(scratch_ptr + ((srow * SEG_TILES + ti)[:, None] * n + offs_n[None, :]), x, mask=mdn)
                    u, dt, sig, A, Bt, Ct, m2, m3, urow, dtrow, bc = _load_chunk(
                        u_ptr, dt_ptr, bias_ptr, B_ptr, C_ptr, A_ptr, u_base, dt_base, a_row, bc_base, offs_d,
                        offs_n, t0 + offs_l, k, d, l, n, h, w, SOFTPLUS, HAS_BIAS, CROSS)
                    aa, hh = tl.associative_scan((tl.exp(dt[:, None, :] * A[:, :, None]), (dt * u)[:, None, :] * Bt),
                                                 axis=2, combine_fn=_combine)
                    hs = hh + aa * x[:, :, None]
                    last_col = (offs_l == tl.minimum(l - t0, BLOCK_L) - 1)[None, None, :]
                    x = tl.sum(tl.where(last_col, hs, 0.0), axis=2)
                tl.debug_barrier()
                # then the segment's chunks last to first
                for tj in range(0, ntiles):
                    ti = ntiles - 1 - tj
                    c = sg * SEG_TILES + ti
                    t0 = c * BLOCK_L
                    x0 = tl.load(scratch_ptr + ((srow * SEG_TILES + ti)[:, None] * n + offs_n[None, :]), mask=mdn,
                                 other=0.0)
                    u, dt, sig, A, Bt, Ct, m2, m3, urow, dtrow, bc = _load_chunk(
                        u_ptr, dt_ptr, bias_ptr, B_ptr, C_ptr, A_ptr, u_base, dt_base, a_row, bc_base, offs_d,
                        offs_n, t0 + offs_l, k, d, l, n, h, w, SOFTPLUS, HAS_BIAS, CROSS)
                    dA = tl.exp(dt[:, None, :] * A[:, :, None])
                    dBu = (dt * u)[:, None, :] * Bt
                    aa, hh = tl.associative_scan((dA, dBu), axis=2, combine_fn=_combine)
                    hs = hh + aa * x0[:, :, None]                                 # states x_t of the chunk
                    dout = tl.load(dout_ptr + urow, mask=m2, other=0.0).to(tl.float32)
                    dy = dout
                    if HAS_Z:
                        z = tl.load(z_ptr + urow, mask=m2, other=0.0).to(tl.float32)
                        y = tl.sum(hs * Ct, axis=1)
                        if HAS_D:
                            y = y + u * Dv[:, None]
                        s = 1.0 / (1.0 + tl.exp(-z))
                        tl.store(dz_ptr + urow, dout * y * s * (1.0 + z * (1.0 - s)), mask=m2)
                        dy = dout * z * s
                    # decays of the next step, exp(dt_{t+1} A), with the carry entering at the chunk's last step
                    u2, dt2, sig2, A2, Bt2, Ct2, m22, m32, urow2, dtrow2, bc2 = _load_chunk(
                        u_ptr, dt_ptr, bias_ptr, B_ptr, C_ptr, A_ptr, u_base, dt_base, a_row, bc_base, offs_d,
                        offs_n, t0 + 1 + offs_l, k, d, l, n, h, w, SOFTPLUS, HAS_BIAS, CROSS)
                    last_col = (offs_l == tl.minimum(l - t0, BLOCK_L) - 1)[None, None, :]
                    a_next = tl.where(last_col, 0.0, tl.exp(dt2[:, None, :] * A[:, :, None]))
                    b_in = dy[:, None, :] * Ct + tl.where(last_col, carry[:, :, None], 0.0)
                    b_in = tl.where(m3, b_in, 0.0)
                    _, G = tl.associative_scan((a_next, b_in), axis=2, combine_fn=_combine, reverse=True)
                    first_col = (offs_l == 0)[None, None, :]
                    carry = tl.sum(tl.where(first_col, G * dA, 0.0), axis=2)
                    xa = hs - dBu                                                  # exp(dt_t A) x_{t-1}
                    ddt = tl.sum(G * (A[:, :, None] * xa + u[:, None, :] * Bt), axis=1)
                    dA_acc += tl.sum(G * xa * dt[:, None, :], axis=2)
                    du = tl.sum(G * Bt, axis=1) * dt
                    if HAS_D:
                        du = du + dy * Dv[:, None]
                        dD_acc += tl.sum(tl.where(m2, dy * u, 0.0), axis=1)
                    ddt = tl.where(m2, ddt * sig, 0.0)
                    dbias_acc += tl.sum(ddt, axis=1)
                    if CROSS:   # u is shared by the four directions: accumulate (this program owns these rows)
                        du = du + tl.load(du_ptr + urow, mask=m2, other=0.0)
                    tl.store(du_ptr + urow, du, mask=m2)
                    tl.store(ddt_ptr + dtrow, ddt, mask=m2)
                    # B/C gradients: reduce over this program's channels of each group, then add atomically
                    gB = G * (dt * u)[:, None, :]
                    gC = dy[:, None, :] * hs
                    tl.atomic_add(dB_ptr + bc, gB, mask=m3)
                    tl.atomic_add(dC_ptr + bc, gC, mask=m3)
            tl.store(dA_ptr + (srow[:, None] * n + offs_n[None, :]), dA_acc, mask=mdn)
            if HAS_D:
                tl.store(dD_ptr + srow, dD_acc, mask=md)
            tl.store(dbias_ptr + srow, dbias_acc, mask=md)


def _blocks(d, n, l, backward=False):
    """Block sizes: every call with state size n and length l gets these (no autotuning), so the kernels that
    can run are exactly ``triton_aot.aot_configs()``'s. The backward holds about twice the forward's tiles, so
    it takes a quarter of the channels: at BLOCK_D 16 it needed 255 registers and spilled 0.6-1.3 kB of stack
    per thread on sm_80 and sm_90; at 4 it needs about 220 and spills nothing (``benchmarks/triton_aot.py``)."""
    BN = max(2, triton.next_power_of_2(n))
    if backward:
        BD = 4 if BN <= 16 else 2
    else:
        BD = 16 if BN <= 16 else 4
    BL = 16 if l >= 16 else max(2, triton.next_power_of_2(l))
    return BD, BN, BL


SEG_STEPS = 1024
"""Steps between the backward's checkpoints (as the native kernel's chunks, ``scan_native.CHUNK``): the forward
stores the state only at the start of every segment of ``SEG_STEPS // BLOCK_L`` chunks, (b, d, l / 1024, n)
instead of one state per 16-step chunk, which at n = 16 was as large as u itself; the backward recomputes a
segment's chunk start states into a small per-program scratch (b, d, SEG_STEPS // BLOCK_L, n), then walks its
chunks last to first."""


def _seg_tiles(block_l: int) -> int:
    return max(1, SEG_STEPS // block_l)


class _TritonScan(torch.autograd.Function):
    """Plain scan (``hw is None``): u, delta (b, d, l), B/C (b, g, n, l). Fused cross scan (``hw = (h, w)``):
    u (b, d, l) row-major, delta (b, 4, d, l), B/C (b, 4, n, l), A (4d, n); out (b, d, l) is the merge."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, softplus, hw):
        b, d, l = u.shape
        g, n = B.shape[1], A.shape[1]
        cross = hw is not None
        ndir = 4 if cross else 1
        h, w = hw if cross else (0, 0)
        BD, BN, BL = _blocks(d, n, l)
        nchunks = triton.cdiv(l, BL)
        seg = _seg_tiles(BL)
        nsegs = triton.cdiv(nchunks, seg)
        f32 = dict(device=u.device, dtype=torch.float32)
        out = (torch.zeros if cross else torch.empty)(b, d, l, **f32)
        last = torch.empty(b, ndir * d, n, **f32)
        starts = torch.empty(b, ndir * d, nsegs, n, **f32)
        dummy = out
        grid = (b, triton.cdiv(d, BD))
        _fwd_kernel[grid](u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
                          bias if bias is not None else dummy, out, last, starts, d, l, n, g, d // g, nchunks, nsegs,
                          h, w, SOFTPLUS=softplus, HAS_BIAS=bias is not None, HAS_D=D is not None,
                          HAS_Z=z is not None, NDIR=ndir, CROSS=cross, BLOCK_D=BD, BLOCK_N=BN, BLOCK_L=BL,
                          SEG_TILES=seg)
        ctx.save_for_backward(u, delta, A, B, C, D, z, bias, starts)
        ctx.softplus, ctx.hw = softplus, hw
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, bias, starts = ctx.saved_tensors
        b, d, l = u.shape
        g, n = B.shape[1], A.shape[1]
        cross = ctx.hw is not None
        ndir = 4 if cross else 1
        h, w = ctx.hw if cross else (0, 0)
        BD, BN, BL = _blocks(d, n, l, backward=True)
        nchunks = triton.cdiv(l, BL)
        seg = _seg_tiles(BL)
        nsegs = starts.shape[2]
        assert nsegs == triton.cdiv(nchunks, seg)
        f32 = dict(device=u.device, dtype=torch.float32)
        scratch = torch.empty(b, ndir * d, seg, n, **f32)
        du = (torch.zeros if cross else torch.empty)(b, d, l, **f32)
        ddt = torch.empty(delta.shape, **f32)
        dA = torch.empty(b, ndir * d, n, **f32)
        dB, dC = torch.zeros(B.shape, **f32), torch.zeros(C.shape, **f32)
        dD, dbias = torch.empty(b, ndir * d, **f32), torch.empty(b, ndir * d, **f32)
        dz = torch.empty(b, d, l, **f32) if z is not None else None
        dummy = du
        grid = (b, triton.cdiv(d, BD))
        _bwd_kernel[grid](u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
                          bias if bias is not None else dummy, starts, scratch, dout.contiguous(),
                          dlast.contiguous() if dlast is not None else dummy,
                          du, ddt, dA, dB, dC, dD, dz if dz is not None else dummy, dbias,
                          d, l, n, g, d // g, nchunks, nsegs, h, w,
                          SOFTPLUS=ctx.softplus, HAS_BIAS=bias is not None, HAS_D=D is not None,
                          HAS_Z=z is not None, HAS_DLAST=dlast is not None, NDIR=ndir, CROSS=cross,
                          BLOCK_D=BD, BLOCK_N=BN, BLOCK_L=BL, SEG_TILES=seg)
        return (du.to(u.dtype), ddt.to(delta.dtype), dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
                dD.sum(0).to(D.dtype) if D is not None else None, dz.to(z.dtype) if z is not None else None,
                dbias.sum(0).to(bias.dtype) if bias is not None else None, None, None)


def _f32(t):
    return None if t is None else t.float().contiguous()


def _contig(t):
    return None if t is None else t.contiguous()


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
    if u.dtype == torch.float64:
        raise TypeError("the triton backend computes in float32; use backend='torch' for float64")
    B4, C4 = as_grouped(B, C)
    out, last = _TritonScan.apply(_contig(u), _contig(delta), _f32(A), _contig(B4), _contig(C4), _f32(D),
                                  _contig(z), _f32(delta_bias), bool(delta_softplus), None)
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out


def cross_selective_scan_triton(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, *, h, w):
    """The fused 2-D cross scan (``mambaseg.ops.cross_selective_scan``'s contract): u (b, d, h*w) row-major,
    delta (b, 4, d, h*w), B and C (b, 4, n, h*w) at row-major positions, A (4d, n), D and delta_bias (4d,).
    Direction k walks the row-major positions in cross_scan's order k; the four outputs are summed in place
    into the row-major result (b, d, h*w), so no (b, 4, d, L) copy of u or y is made."""
    if u.dtype == torch.float64:
        raise TypeError("the triton backend computes in float32; use backend='torch' for float64")
    b, d, L = u.shape
    n = A.shape[1]
    if L != h * w or tuple(delta.shape) != (b, 4, d, L) or tuple(A.shape) != (4 * d, n) \
            or tuple(B.shape) != (b, 4, n, L) or tuple(C.shape) != (b, 4, n, L):
        raise ValueError(f"cross_selective_scan: u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}, "
                         f"B {tuple(B.shape)}, C {tuple(C.shape)} with h={h}, w={w}; expected u (b, d, h*w), "
                         f"delta (b, 4, d, h*w), A (4d, n), B and C (b, 4, n, h*w)")
    out, _ = _TritonScan.apply(_contig(u), _contig(delta), _f32(A), _contig(B), _contig(C), _f32(D), None,
                               _f32(delta_bias), bool(delta_softplus), (int(h), int(w)))
    return out.to(u.dtype)


def is_available() -> bool:
    return triton is not None and (_INTERPRET or torch.cuda.is_available())


def why_unavailable() -> str:
    if triton is None:
        return f"triton is not importable ({_IMPORT_ERROR})"
    return "no CUDA device (set TRITON_INTERPRET=1 to run the kernel in Triton's CPU interpreter)"


register_backend("triton", selective_scan_triton, devices=("cuda", "cpu") if _INTERPRET else ("cuda",),
                 is_available=is_available, why_unavailable=why_unavailable,
                 priority=30 if os.environ.get("MAMBASEG_TRITON_AUTO") == "1" else 5)

if triton is not None:
    from .cross_selective_scan import register_fused

    register_fused("triton", lambda u, delta, A, B, C, D, bias, softplus, h, w: cross_selective_scan_triton(
        u, delta, A, B, C, D, bias, softplus, h=h, w=w))
