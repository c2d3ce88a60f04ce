"""SegMamba's tri-oriented Mamba ("ToM", upstream ``Mamba(..., bimamba_type="v3", nslices=n)``) on the Mamba-1 block.

Paper: Z. Xing, T. Ye, Y. Yang, G. Liu, L. Zhu, "SegMamba: Long-range Sequential Modeling Mamba For 3D Medical
Image Segmentation", arXiv:2401.13560 (MICCAI 2024). Upstream: https://github.com/ge-xing/SegMamba
(``mamba/mamba_ssm/modules/mamba_simple.py`` of its mamba-ssm v1.0.1 fork, ``bimamba_type == "v3"``, the fused
``mamba_inner_fn_no_out_proj`` path), described in ``upstream_3d_models.md`` §1.3; written here from that
description on :class:`mambaseg.models.blocks.mamba1.Mamba` (its ``project_in`` / ``inner`` steps), not copied.

One shared ``in_proj`` and ``out_proj``; three branches, each with its own ``conv1d``, ``x_proj``, ``dt_proj``,
``A`` and ``D`` (suffixes none, ``_b``, ``_s``), run on three orderings of the same (B, 2E, L) projection xz:

* forward: tokens 0..L-1;
* backward: the token axis reversed (for x and z alike), the output reversed back;
* inter-slice: with n = ``nslices`` and S = L / n, position p = j*n + k of the scanned sequence holds token
  k*S + j (j < S, k < n): the n consecutive chunks of L are interleaved, and the output is put back in place.
  On tokens of a (D, H, W) map in row-major order with n = D, each chunk is one slice along the first spatial
  axis and this branch scans along that axis first.

The three (B, E, L) results are summed, then ``out_proj``. Parameter names and their state-dict order are
upstream's (``A_log, D, A_b_log, D_b, A_s_log, D_s, in_proj, conv1d, x_proj, dt_proj, conv1d_b, x_proj_b,
dt_proj_b, conv1d_s, x_proj_s, dt_proj_s, out_proj``). Parameter count 6 d^2 + 6 d (2R + 55) for the defaults.

Upstream behaviour kept: ``dt_proj_b`` and ``dt_proj_s`` keep PyTorch's default Linear init (only ``dt_proj`` gets
Mamba's dt init); ``A_*_log = log(1..N)``, ``D_* = 1`` on all three branches; no dtype cast (runs in the caller's
autocast dtype; the scan itself is fp32 as in :class:`Mamba`).

Differences, each deliberate: upstream only implements ToM on its CUDA fused path (its slow path silently ignores
the ``_b``/``_s`` weights, spec §7.1); here there is one path, the ToM maths, on whatever scan backend is active.
``bimamba_type`` other than ``"v3"`` is refused, as upstream asserts. A token count not divisible by ``nslices``
raises a ValueError (upstream fails inside a reshape).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .mamba1 import Mamba

__all__ = ["TriOrientedMamba", "TriMambaLayer", "tri_mamba_param_count", "interslice_order", "to_interslice",
           "from_interslice"]


def tri_mamba_param_count(d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank=None) -> int:
    """Closed-form parameter count of :class:`TriOrientedMamba`: shared in/out projections plus three branches
    (conv1d + bias, x_proj, dt_proj + bias, A, D)."""
    e = expand * d_model
    r = math.ceil(d_model / 16) if dt_rank in (None, "auto") else int(dt_rank)
    branch = e * d_conv + e + e * (r + 2 * d_state) + r * e + e + e * d_state + e
    return d_model * 2 * e + 3 * branch + e * d_model


def interslice_order(length: int, nslices: int) -> torch.Tensor:
    """The token visited at each position of the inter-slice scan: ``order[j*n + k] = k*S + j``."""
    s = length // nslices
    return torch.arange(length).view(nslices, s).t().reshape(-1)


def to_interslice(t: torch.Tensor, nslices: int) -> torch.Tensor:
    """(B, C, L) in token order -> (B, C, L) in inter-slice order (see :func:`interslice_order`)."""
    b, c, length = t.shape
    return t.reshape(b, c, nslices, length // nslices).transpose(2, 3).reshape(b, c, length)


def from_interslice(t: torch.Tensor, nslices: int) -> torch.Tensor:
    """Inverse of :func:`to_interslice`."""
    b, c, length = t.shape
    return t.reshape(b, c, length // nslices, nslices).transpose(2, 3).reshape(b, c, length)


class TriOrientedMamba(Mamba):
    """SegMamba's ToM mixer: (B, L, d_model) -> (B, L, d_model).

    Args: those of :class:`Mamba`, plus
        bimamba_type: must be ``"v3"`` (upstream asserts it).
        nslices: number of chunks of the inter-slice branch (L must be divisible by it); ``forward(h, nslices=n)``
            overrides it per call (SegMamba passes the depth of the feature map when asked to).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank="auto",
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False, use_fast_path: bool = True,
                 layer_idx=None, device=None, dtype=None, bimamba_type: str = "v3", nslices: int = 5):
        if bimamba_type != "v3":
            raise ValueError(f"TriOrientedMamba: bimamba_type must be 'v3' (SegMamba's tri-oriented Mamba), got "
                             f"{bimamba_type!r}; use mambaseg.models.blocks.mamba1.Mamba for the plain block")
        super().__init__(d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_scale, dt_init_floor,
                         conv_bias, bias, use_fast_path, layer_idx, device, dtype)
        self.bimamba_type, self.nslices = bimamba_type, int(nslices)
        fk = {"device": device, "dtype": dtype}
        e, r, n = self.d_inner, self.dt_rank, d_state
        for sfx in ("_b", "_s"):
            a = nn.Parameter(torch.empty(e, n, device=device, dtype=torch.float32))
            a._no_weight_decay = True
            d = nn.Parameter(torch.empty(e, device=device, dtype=torch.float32))
            d._no_weight_decay = True
            self.register_parameter(f"A{sfx}_log", a)
            self.register_parameter(f"D{sfx}", d)
        for sfx in ("_b", "_s"):
            self.add_module(f"conv1d{sfx}", nn.Conv1d(e, e, kernel_size=d_conv, groups=e, padding=d_conv - 1,
                                                      bias=conv_bias, **fk))
            self.add_module(f"x_proj{sfx}", nn.Linear(e, r + 2 * n, bias=False, **fk))
            self.add_module(f"dt_proj{sfx}", nn.Linear(r, e, bias=True, **fk))     # PyTorch default init (upstream)
        self._modules["out_proj"] = self._modules.pop("out_proj")             # upstream's registration order
        self._reset_extra_branches()

    @torch.no_grad()
    def _reset_extra_branches(self) -> None:
        if self.A_b_log.is_meta:
            return
        a = torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(self.d_inner, -1)
        for sfx in ("_b", "_s"):
            getattr(self, f"A{sfx}_log").copy_(a)
            getattr(self, f"D{sfx}").fill_(1.0)

    def forward(self, hidden_states: torch.Tensor, nslices: int | None = None) -> torch.Tensor:
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(f"TriOrientedMamba(d_model={self.d_model}): expected tokens (B, L, {self.d_model}), got "
                             f"shape {tuple(hidden_states.shape)}")
        n = self.nslices if nslices is None else int(nslices)
        L = hidden_states.shape[1]
        if n < 1 or L % n:
            raise ValueError(f"TriOrientedMamba: {L} tokens cannot be split into nslices={n} equal chunks for the "
                             f"inter-slice scan; the token count must be a multiple of nslices")
        xz = self.project_in(hidden_states)                                 # (B, 2E, L)
        y = self.inner(xz, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        y = y + self.inner(xz.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log,
                           self.D_b).flip(-1)
        y = y + from_interslice(self.inner(to_interslice(xz, n), self.conv1d_s, self.x_proj_s, self.dt_proj_s,
                                           self.A_s_log, self.D_s), n)
        return self.out_proj(y.transpose(1, 2))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bimamba_type={self.bimamba_type!r}, nslices={self.nslices}"


class TriMambaLayer(nn.Module):
    """SegMamba's ``MambaLayer``: map (B, C, *spatial) -> tokens (B, L, C) in row-major order (last axis fastest)
    -> ``norm`` (LayerNorm) -> ``mamba`` (:class:`TriOrientedMamba`) -> back to the map, + the input (residual).
    No dtype cast (upstream runs it under the caller's autocast)."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, num_slices: int = 64):
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(dim)
        self.mamba = TriOrientedMamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, bimamba_type="v3",
                                      nslices=num_slices)

    def forward(self, x: torch.Tensor, nslices: int | None = None) -> torch.Tensor:
        b, c = x.shape[:2]
        tokens = x.reshape(b, c, -1).transpose(1, 2)
        out = self.mamba(self.norm(tokens), nslices=nslices)
        return out.transpose(1, 2).reshape(x.shape) + x
