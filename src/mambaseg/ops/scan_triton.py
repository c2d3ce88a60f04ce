"""``triton`` backend: the selective scan as a Triton kernel for CUDA GPUs (forward and backward).

One program handles ``BLOCK_D`` channels of one batch element and walks the sequence in chunks of ``BLOCK_L``
steps. Inside a chunk the first-order recurrence ``x_t = a_t x_{t-1} + b_t`` is a ``tl.associative_scan`` over
the (BLOCK_D, N, BLOCK_L) tile with the combine ``(a1, b1), (a2, b2) -> (a1 a2, a2 b1 + b2)``; the state
carried between chunks stays in registers, in fp32 (inputs may be fp16/bf16/fp32).

Backward: the forward stores only the state at the start of each chunk (b, d, chunks, N). Chunks are then
visited in reverse: the chunk's states are recomputed from its start state, the adjoint recurrence
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
    def _load_chunk(u_ptr, dt_ptr, bias_ptr, B_ptr, C_ptr, A_ptr, pid_b, offs_d, offs_n, offs_l, t0,
                    d, l, n, g, hd, SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr):
        md = offs_d < d
        mn = offs_n < n
        ml = (t0 + offs_l) < l
        m2 = md[:, None] & ml[None, :]
        row = (pid_b * d + offs_d)[:, None] * l + t0 + offs_l[None, :]
        u = tl.load(u_ptr + row, mask=m2, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + row, mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)[:, None]
        sig = tl.full(dt.shape, 1.0, tl.float32)
        if SOFTPLUS:
            e = tl.exp(tl.minimum(dt, 20.0))
            sig = tl.where(dt < 20.0, e / (1.0 + e), 1.0)
            dt = tl.where(dt < 20.0, tl.log(1.0 + e), dt)
        dt = tl.where(m2, dt, 0.0)
        A = tl.load(A_ptr + offs_d[:, None] * n + offs_n[None, :], mask=md[:, None] & mn[None, :],
                    other=0.0).to(tl.float32)
        grp = offs_d // hd                                             # (BD,)
        bc = ((pid_b * g + grp)[:, None, None] * n + offs_n[None, :, None]) * l + t0 + offs_l[None, None, :]
        m3 = md[:, None, None] & mn[None, :, None] & ml[None, None, :]
        Bt = tl.load(B_ptr + bc, mask=m3, other=0.0).to(tl.float32)    # (BD, N, BL)
        Ct = tl.load(C_ptr + bc, mask=m3, other=0.0).to(tl.float32)
        return u, dt, sig, A, Bt, Ct, m2, m3, row, bc

    @triton.jit
    def _fwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, starts_ptr,
                    d, l, n, g, hd, nchunks,
                    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
        pid_b = tl.program_id(0)
        pid_d = tl.program_id(1)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        offs_l = tl.arange(0, BLOCK_L)
        md = offs_d < d
        mdn = md[:, None] & (offs_n < n)[None, :]
        x = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
        for c in range(0, nchunks):
            t0 = c * BLOCK_L
            tl.store(starts_ptr + (((pid_b * d + offs_d) * nchunks + c)[:, None] * n + offs_n[None, :]), x,
                     mask=mdn)
            u, dt, sig, A, Bt, Ct, m2, m3, row, bc = _load_chunk(
                u_ptr, dt_ptr, bias_ptr, B_ptr, C_ptr, A_ptr, pid_b, offs_d, offs_n, offs_l, t0, d, l, n, g, hd,
                SOFTPLUS, HAS_BIAS)
            dA = tl.exp(dt[:, None, :] * A[:, :, None])
            dBu = (dt * u)[:, None, :] * Bt
            aa, hh = tl.associative_scan((dA, dBu), axis=2, combine_fn=_combine)
            h = hh + aa * x[:, :, None]
            y = tl.sum(h * Ct, axis=1)
            last_col = (offs_l == tl.minimum(l - t0, BLOCK_L) - 1)[None, None, :]
            x = tl.sum(tl.where(last_col, h, 0.0), axis=2)
            if HAS_D:
                y = y + u * Dv[:, None]
            if HAS_Z:
                z = tl.load(z_ptr + row, mask=m2, other=0.0).to(tl.float32)
                y = y * z / (1.0 + tl.exp(-z))
            tl.store(out_ptr + row, y, mask=m2)
        tl.store(last_ptr + ((pid_b * d + offs_d)[:, None] * n + offs_n[None, :]), x, mask=mdn)

    @triton.jit
    def _bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, starts_ptr, dout_ptr, dlast_ptr,
                    du_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dbias_ptr,
                    d, l, n, g, hd, nchunks,
                    SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                    HAS_DLAST: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
        pid_b = tl.program_id(0)
        pid_d = tl.program_id(1)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        offs_l = tl.arange(0, BLOCK_L)
        md = offs_d < d
        mdn = md[:, None] & (offs_n < n)[None, :]
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
        carry = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)   # exp(dt_{t0'} A) g_{t0'} from the chunk after
        if HAS_DLAST:
            carry = tl.load(dlast_ptr + ((pid_b * d + offs_d)[:, None] * n + offs_n[None, :]), mask=mdn,
                            other=0.0).to(tl.float32)
        dA_acc = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
        dD_acc = tl.zeros((BLOCK_D,), tl.float32)
        dbias_acc = tl.zeros((BLOCK_D,), tl.float32)
        for cc in range(0, nchunks):
            c = nchunks - 1 - cc
            t0 = c * BLOCK_L
            x0 = tl.load(starts_ptr + (((pid_b * d + offs_d) * nchunks + c)[:, None] * n + offs_n[None, :]),
                         mask=mdn, other=0.0)
            u, dt, sig, A, Bt, Ct, m2, m3, row, bc = _load_chunk(
                u_ptr, dt_ptr, bias_ptr, B_ptr, C_ptr, A_ptr, pid_b, offs_d, offs_n, offs_l, t0, d, l, n, g, hd,
                SOFTPLUS, HAS_BIAS)
            dA = tl.exp(dt[:, None, :] * A[:, :, None])
            dBu = (dt * u)[:, None, :] * Bt
            aa, hh = tl.associative_scan((dA, dBu), axis=2, combine_fn=_combine)
            h = hh + aa * x0[:, :, None]                                  # states x_t of the chunk
            dout = tl.load(dout_ptr + row, mask=m2, other=0.0).to(tl.float32)
            dy = dout
            if HAS_Z:
                z = tl.load(z_ptr + row, mask=m2, other=0.0).to(tl.float32)
                y = tl.sum(h * Ct, axis=1)
                if HAS_D:
                    y = y + u * Dv[:, None]
                s = 1.0 / (1.0 + tl.exp(-z))
                tl.store(dz_ptr + row, dout * y * s * (1.0 + z * (1.0 - s)), mask=m2)
                dy = dout * z * s
            # decays of the next step, exp(dt_{t+1} A), with the carry entering at the chunk's last step
            u2, dt2, sig2, A2, Bt2, Ct2, m22, m32, row2, bc2 = _load_chunk(
                u_ptr, dt_ptr, bias_ptr, B_ptr, C_ptr, A_ptr, pid_b, offs_d, offs_n, offs_l, t0 + 1, d, l, n, g,
                hd, SOFTPLUS, HAS_BIAS)
            last_col = (offs_l == tl.minimum(l - t0, BLOCK_L) - 1)[None, None, :]
            a_next = tl.where(last_col, 0.0, tl.exp(dt2[:, None, :] * A[:, :, None]))
            b_in = dy[:, None, :] * Ct + tl.where(last_col, carry[:, :, None], 0.0)
            b_in = tl.where(m3, b_in, 0.0)
            _, G = tl.associative_scan((a_next, b_in), axis=2, combine_fn=_combine, reverse=True)
            first_col = (offs_l == 0)[None, None, :]
            carry = tl.sum(tl.where(first_col, G * dA, 0.0), axis=2)
            xa = h - dBu                                                   # exp(dt_t A) x_{t-1}
            ddt = tl.sum(G * (A[:, :, None] * xa + u[:, None, :] * Bt), axis=1)
            dA_acc += tl.sum(G * xa * dt[:, None, :], axis=2)
            du = tl.sum(G * Bt, axis=1) * dt
            if HAS_D:
                du = du + dy * Dv[:, None]
                dD_acc += tl.sum(tl.where(m2, dy * u, 0.0), axis=1)
            ddt = tl.where(m2, ddt * sig, 0.0)
            dbias_acc += tl.sum(ddt, axis=1)
            tl.store(du_ptr + row, du, mask=m2)
            tl.store(ddt_ptr + row, ddt, mask=m2)
            # B/C gradients: reduce over this program's channels of each group, then add atomically
            gB = G * (dt * u)[:, None, :]
            gC = dy[:, None, :] * h
            tl.atomic_add(dB_ptr + bc, gB, mask=m3)
            tl.atomic_add(dC_ptr + bc, gC, mask=m3)
        tl.store(dA_ptr + ((pid_b * d + offs_d)[:, None] * n + offs_n[None, :]), dA_acc, mask=mdn)
        if HAS_D:
            tl.store(dD_ptr + pid_b * d + offs_d, dD_acc, mask=md)
        tl.store(dbias_ptr + pid_b * d + offs_d, dbias_acc, mask=md)


def _blocks(d, n, l):
    BN = max(2, triton.next_power_of_2(n))
    BD = 16 if BN <= 16 else 4
    BL = 16 if l >= 16 else max(2, triton.next_power_of_2(l))
    return BD, BN, BL


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, softplus):
        b, d, l = u.shape
        g, n = B.shape[1], A.shape[1]
        BD, BN, BL = _blocks(d, n, l)
        nchunks = triton.cdiv(l, BL)
        out = torch.empty(b, d, l, device=u.device, dtype=torch.float32)
        last = torch.empty(b, d, n, device=u.device, dtype=torch.float32)
        starts = torch.empty(b, d, nchunks, n, device=u.device, dtype=torch.float32)
        dummy = out
        grid = (b, triton.cdiv(d, BD))
        _fwd_kernel[grid](u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
                          bias if bias is not None else dummy, out, last, starts, d, l, n, g, d // g, nchunks,
                          SOFTPLUS=softplus, HAS_BIAS=bias is not None, HAS_D=D is not None, HAS_Z=z is not None,
                          BLOCK_D=BD, BLOCK_N=BN, BLOCK_L=BL)
        ctx.save_for_backward(u, delta, A, B, C, D, z, bias, starts)
        ctx.softplus = softplus
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, bias, starts = ctx.saved_tensors
        b, d, l = u.shape
        g, n = B.shape[1], A.shape[1]
        BD, BN, BL = _blocks(d, n, l)
        nchunks = starts.shape[2]
        f32 = dict(device=u.device, dtype=torch.float32)
        du, ddt = torch.empty(b, d, l, **f32), torch.empty(b, d, l, **f32)
        dA = torch.empty(b, d, n, **f32)
        dB, dC = torch.zeros(B.shape, **f32), torch.zeros(C.shape, **f32)
        dD, dbias = torch.empty(b, d, **f32), torch.empty(b, d, **f32)
        dz = torch.empty(b, d, l, **f32) if z is not None else None
        dummy = du
        grid = (b, triton.cdiv(d, BD))
        _bwd_kernel[grid](u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
                          bias if bias is not None else dummy, starts, dout.contiguous(),
                          dlast.contiguous() if dlast is not None else dummy,
                          du, ddt, dA, dB, dC, dD, dz if dz is not None else dummy, dbias,
                          d, l, n, g, d // g, nchunks,
                          SOFTPLUS=ctx.softplus, HAS_BIAS=bias is not None, HAS_D=D is not None,
                          HAS_Z=z is not None, HAS_DLAST=dlast is not None, BLOCK_D=BD, BLOCK_N=BN, BLOCK_L=BL)
        return (du.to(u.dtype), ddt.to(delta.dtype), dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
                dD.sum(0).to(D.dtype) if D is not None else None, dz.to(z.dtype) if z is not None else None,
                dbias.sum(0).to(bias.dtype) if bias is not None else None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
    if u.dtype == torch.float64:
        raise TypeError("the triton backend computes in float32; use backend='torch' for float64")
    dtype_in = u.dtype
    B4, C4 = as_grouped(B, C)
    f = lambda t: None if t is None else t.contiguous()  # noqa: E731
    out, last = _TritonScan.apply(f(u), f(delta), A.float().contiguous(), f(B4), f(C4),
                                  None if D is None else D.float().contiguous(), f(z),
                                  None if delta_bias is None else delta_bias.float().contiguous(),
                                  bool(delta_softplus))
    out = out.to(dtype_in)
    return (out, last) if return_last_state else out


def is_available() -> bool:
    return triton is not None and (_INTERPRET or torch.cuda.is_available())


def why_unavailable() -> str:
    if triton is None:
        return f"triton is not importable ({_IMPORT_ERROR})"
    return "no CUDA device (set TRITON_INTERPRET=1 to run the kernel in Triton's CPU interpreter)"


register_backend("triton", selective_scan_triton, devices=("cuda", "cpu") if _INTERPRET else ("cuda",),
                 is_available=is_available, why_unavailable=why_unavailable,
                 priority=30 if os.environ.get("MAMBASEG_TRITON_AUTO") == "1" else 5)
