"""The Mamba-1 block (``mamba_ssm.Mamba``, ``mamba_simple.py``) in pure PyTorch on :func:`mambaseg.ops.selective_scan`.

Paper: A. Gu, T. Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", arXiv:2312.00752 (2023).
Upstream: https://github.com/state-spaces/mamba (``mamba_ssm/modules/mamba_simple.py``; parameter layout and
initialisation identical from v1.0.1 to HEAD, see ``upstream_mamba1_models.md`` §1). Written here from that
description, not copied. U-Mamba, LightM-UNet, UltraLight VM-UNet and LKM-UNet all use this block.

Parameter names equal upstream's (``A_log``, ``D``, ``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``,
``out_proj``), so an upstream block's ``state_dict`` loads with ``strict=True``.

Forward on channel-last tokens ``h`` (B, L, d_model), E = expand * d_model, R = dt_rank, N = d_state:

1. ``in_proj`` -> x (B, L, E) and gate z (B, L, E);
2. causal depthwise conv over L (``conv1d``, kernel ``d_conv``, left context only) then SiLU;
3. ``x_proj`` -> dt (R), B (N), C (N) per token; delta = ``dt_proj.weight`` @ dt (the bias is added inside the
   scan, before the softplus, as upstream);
4. selective scan (fp32): ``h_t = exp(softplus(delta_t + b) A) h_{t-1} + softplus(delta_t + b) B_t x_t``,
   ``y_t = C_t . h_t + D x_t``, ``y = y * SiLU(z)`` with ``A = -exp(A_log)``;
5. ``out_proj`` (E -> d_model).

This is exactly upstream's slow path with ``selective_scan_ref`` (the CUDA fast path computes the same steps).
As upstream's slow path, ``in_proj`` and ``dt_proj`` are applied as plain matmuls on their weights (``x_proj``,
``conv1d`` and ``out_proj`` as modules), so a thop-style count (``mambaseg profile``'s ``paper`` convention) sees
the same modules it sees in upstream's code.
Differences from upstream, each deliberate:

* ``use_fast_path``, ``layer_idx``: accepted for signature compatibility and ignored (there is one path; no
  inference cache / ``step()``, which none of the segmentation networks uses).
* The scan is whatever :mod:`mambaseg.ops` backend is active (fused C on CPU, PyTorch, Triton, mamba-ssm).
"""

from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn as nn

from mambaseg.ops import selective_scan

from .ssm_init import dt_bias, init_dt_weight_, s4d_real_a_log

__all__ = ["Mamba", "mamba_param_count"]


def mamba_param_count(d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank=None,
                      out_proj: bool = True) -> int:
    """Closed-form parameter count of :class:`Mamba` (``6 D^2 + 2 D (2R + 3N + 7)`` for the defaults)."""
    e = expand * d_model
    r = math.ceil(d_model / 16) if dt_rank in (None, "auto") else int(dt_rank)
    n = (d_model * 2 * e + e * d_conv + e + e * (r + 2 * d_state) + r * e + e + e * d_state + e)
    return n + (e * d_model if out_proj else 0)


class Mamba(nn.Module):
    """Mamba-1 mixer: (B, L, d_model) -> (B, L, d_model).

    Args:
        d_model: token channels.
        d_state: SSM state size N. Default 16.
        d_conv: causal depthwise conv kernel. Default 4.
        expand: E = expand * d_model. Default 2.
        dt_rank: rank of the dt projection; ``"auto"`` = ceil(d_model / 16).
        dt_min, dt_max: range of the initial step size (log-uniform). Defaults 1e-3, 0.1.
        dt_init: ``"random"`` (U(-s, s), s = dt_rank^-0.5 * dt_scale) or ``"constant"`` (s) dt_proj weights.
        dt_scale, dt_init_floor: see upstream. Defaults 1.0, 1e-4.
        conv_bias: bias of ``conv1d``. Default True.
        bias: bias of ``in_proj`` / ``out_proj``. Default False.
        use_fast_path, layer_idx: ignored (upstream signature).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: Union[int, str] = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, use_fast_path: bool = True, layer_idx=None,
                 device=None, dtype=None):
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"Mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")
        fk = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = e = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.use_fast_path, self.layer_idx = use_fast_path, layer_idx

        self.in_proj = nn.Linear(d_model, 2 * e, bias=bias, **fk)
        self.conv1d = nn.Conv1d(e, e, kernel_size=d_conv, groups=e, padding=d_conv - 1, bias=conv_bias, **fk)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(e, self.dt_rank + 2 * d_state, bias=False, **fk)
        self.dt_proj = nn.Linear(self.dt_rank, e, bias=True, **fk)
        self.A_log = nn.Parameter(torch.empty(e, d_state, device=device, dtype=torch.float32))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.empty(e, device=device, dtype=torch.float32))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(e, d_model, bias=bias, **fk)
        self._dt_cfg = (dt_min, dt_max, dt_init, dt_scale, dt_init_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Upstream's SSM init: dt_proj weight U(-s, s) (or s), ``softplus(dt_proj.bias)`` log-uniform in
        [dt_min, dt_max] (floored), ``A_log = log(1..N)`` on every row, ``D = 1``. The Linear/Conv1d weights keep
        PyTorch's defaults."""
        if self.A_log.is_meta:
            return
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor = self._dt_cfg
        init_dt_weight_(self.dt_proj.weight, self.dt_rank, dt_scale, dt_init)
        e = self.d_inner
        self.dt_proj.bias.copy_(dt_bias(e, dt_min, dt_max, dt_init_floor))        # inverse softplus
        self.dt_proj.bias._no_reinit = True
        self.A_log.copy_(s4d_real_a_log(e, self.d_state))
        self.D.fill_(1.0)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(f"Mamba(d_model={self.d_model}): expected tokens (B, L, {self.d_model}), got shape "
                             f"{tuple(hidden_states.shape)}")
        y = self.inner(self.project_in(hidden_states), self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        return self.out_proj(y.transpose(1, 2))

    def project_in(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Step 1: ``in_proj`` as one matmul into the channels-first (B, 2E, L) layout, as upstream (x and z then
        come out contiguous along L for the conv and the scan)."""
        xz = torch.matmul(self.in_proj.weight, hidden_states.transpose(1, 2))
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        return xz

    def inner(self, xz: torch.Tensor, conv1d: nn.Conv1d, x_proj: nn.Linear, dt_proj: nn.Linear,
              A_log: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        """Steps 2-4 on ``xz`` (B, 2E, L) with the given branch weights (upstream's ``mamba_inner_fn`` without
        ``out_proj``): returns y (B, E, L). Blocks with several branches (SegMamba's tri-oriented Mamba) call it
        once per branch."""
        L, N, R, E = xz.shape[-1], self.d_state, self.dt_rank, self.d_inner
        x, z = xz[:, :E], xz[:, E:]
        x = self.act(conv1d(x)[..., :L])                                    # causal: keep the first L outputs
        dt, Bm, Cm = torch.split(x_proj(x.transpose(1, 2)), [R, N, N], dim=-1)
        delta = torch.matmul(dt_proj.weight, dt.transpose(1, 2))           # (B, E, L); bias inside the scan
        cdt = torch.promote_types(x.dtype, torch.float32)
        y = selective_scan(
            x.to(cdt), delta.to(cdt), -torch.exp(A_log.to(cdt)),
            Bm.transpose(1, 2).to(cdt).contiguous(), Cm.transpose(1, 2).to(cdt).contiguous(),
            D=D.to(cdt), z=z.to(cdt), delta_bias=dt_proj.bias.to(cdt), delta_softplus=True)   # (B, E, L)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, "
                f"d_conv={self.d_conv}")
