"""VMamba v2 building blocks (channels-first): what MSVM-UNet's encoder and decoder are made of.

VMamba (Liu et al., "VMamba: Visual State Space Model", arXiv:2401.10166), the mid-2024 "v2" code that MSVM-UNet
copies (``model/vmamba/vmamba.py``) and the VMamba-T[s1l8] ImageNet checkpoint (``vmambav2v_tiny_224.yaml``,
``vssm1_tiny_0230s_ckpt_epoch_264.pth``) use. Written here once, beside the v0 blocks of
:mod:`mambaseg.models.blocks.vss`, in our own code from the spec (``upstream_vss_models.md`` §A):

* :class:`Linear2d` (an ``nn.Linear`` applied as a 1x1 conv, weight kept as (out, in); also loads (out, in, 1, 1)
  weights) and :class:`LayerNorm2d` (LayerNorm over the channel axis of a (B, C, H, W) map),
* :class:`SS2Dv2`: the v2 2-D selective-scan mixer for the forward types these networks use (``v05_noz`` and its
  relatives, see :func:`parse_forward_type`),
* :class:`VSSBlockV2`: ``x + DropPath(op(norm(x)))`` then ``x + DropPath(mlp(norm2(x)))``, with the MLP pluggable
  (MSVM-UNet's decoder swaps in its multi-scale MLP),
* :func:`patch_embed_v2` (two 3x3 stride-2 convs, 48 then ``embed_dim`` channels) and :func:`downsample_v3`
  (3x3 stride-2 conv + LayerNorm2d), as ``nn.Sequential`` with upstream's indices (conv at 0/5 and 1),
* :func:`init_vss_v2_weights` (upstream ``VSSM._init_weights``).

Parameter names equal upstream's (``norm``, ``op.{in_proj, conv2d, x_proj_weight, dt_projs_weight,
dt_projs_bias, A_logs, Ds, out_norm, out_proj}``, ``norm2``, ``mlp.{fc1, fc2}``). Differences from v0 SS2D:
channels-first, inner width ``ssm_ratio * C`` (1.0 here, not 2), ``d_state`` 1 (so A = -1 everywhere), no gate
branch with ``_noz``, no conv bias, an MLP in the block.

Scan: :func:`mambaseg.ops.selective_scan` on the grouped (B, 4, N, L) B/C form (``d_state`` = 1 included), with
``delta_bias`` and softplus, computed in float32 (float64 stays float64). Upstream's ``v05`` keeps its inputs in
the incoming dtype and its "oflex" kernel computes in fp32 and returns fp32; under bf16 autocast we feed the scan
fp32 inputs instead (no bf16 rounding of delta/B/C before the scan) - the only numeric difference, and only under
autocast. Cross-scan / merge: :func:`mambaseg.ops.cross_scan` / :func:`mambaseg.ops.cross_merge` (the same index
maps as upstream's torch and triton kernels).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.ops import cross_merge, cross_scan, selective_scan

from .layers import DropPath, init_linear_and_norms
from .ssm_init import dt_bias, init_dt_weight_, s4d_real_a_log

__all__ = ["Linear2d", "LayerNorm2d", "SS2Dv2", "VSSBlockV2", "MlpV2", "parse_forward_type", "patch_embed_v2",
           "downsample_v3", "init_vss_v2_weights", "vss_stage"]


class Linear2d(nn.Linear):
    """``nn.Linear`` whose weight (out, in) is applied to a (B, in, H, W) map as a 1x1 conv (upstream
    ``Linear2d``); a checkpoint weight stored as (out, in, 1, 1) is accepted and reshaped."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        k = prefix + "weight"
        if k in state_dict and state_dict[k].dim() == 4 and state_dict[k].shape[2:] == (1, 1):
            state_dict[k] = state_dict[k].flatten(1)
        return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of (B, C, H, W) (upstream ``LayerNorm2d``: permute, layer_norm, permute)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


_CORES = ("v01", "v02", "v03", "v04", "v05", "v2", "v3")
_UNSUPPORTED_TAGS = ("_ondwconv3", "_oncnorm", "_onsoftmax", "_onsigmoid")


def parse_forward_type(forward_type: str) -> dict:
    """Split an upstream ``forward_type`` string into its core and tags (stripped from the end, upstream order).

    Supported: the four-direction cores ``v01 v02 v03 v04 v05 v2 v3`` (same maths; they differ upstream only in
    kernels, cross-scan implementation and input dtype) with the tags ``_no32``, ``_oact``, ``_noz``,
    ``_nozact`` and ``_onnone``. Other out-norm tags and the ablation / cascade cores raise a ValueError."""
    s = str(forward_type)
    flags = {}
    for tag in ("_no32", "_oact", "_noz", "_nozact", "_onnone"):
        flags[tag[1:]] = s.endswith(tag)
        if flags[tag[1:]]:
            s = s[: -len(tag)]
    if s.endswith(_UNSUPPORTED_TAGS) or s not in _CORES:
        raise ValueError(f"SS2Dv2: forward_type {forward_type!r} is not supported; use one of the 4-direction "
                         f"cores {', '.join(_CORES)} with optional _noz/_nozact/_oact/_onnone/_no32 "
                         f"(MSVM-UNet and VMamba-T[s1l8] use 'v05_noz')")
    flags["core"] = s
    return flags


class SS2Dv2(nn.Module):
    """VMamba v2 2-D selective-scan mixer on channels-first maps (B, C, H, W) -> (B, C, H, W).

    ``in_proj`` (Linear2d C -> D, or 2D with a gate) -> depthwise ``d_conv`` conv (bias only with ``conv_bias``)
    -> SiLU -> cross-scan (4 directions) -> per direction ``x_proj_weight[k]`` (dt, B, C) and
    ``dt_projs_weight[k]`` -> one grouped selective scan (``A = -exp(A_logs)``, ``Ds``, ``dt_projs_bias``,
    softplus) -> cross-merge -> ``out_norm`` (LayerNorm2d(D), or Identity with ``_onnone``) -> GELU with
    ``_oact`` -> ``* z`` (SiLU(z) unless ``_nozact``) when gated -> ``out_proj`` (Linear2d D -> C) -> dropout.

    Args:
        d_model: channels C.
        d_state: SSM state size N. Default: 1 (VMamba-T[s1l8] / MSVM-UNet).
        ssm_ratio: inner width D = int(ssm_ratio * C). Default: 1.0.
        dt_rank: ``"auto"`` = ceil(C / 16), or an int. Default: ``"auto"``.
        d_conv: depthwise conv kernel; < 2 means no conv (SiLU still applied). Default: 3.
        conv_bias: bias of the depthwise conv. Default: False.
        dropout: dropout after ``out_proj``. Default: 0.
        forward_type: upstream's string (see :func:`parse_forward_type`). Default: ``"v05_noz"``.
        dt_min, dt_max, dt_init_floor, dt_scale: "v0" init of the step size (as v0 SS2D).
    """

    K = 4

    def __init__(self, d_model: int, d_state: int = 1, ssm_ratio: float = 1.0, dt_rank: Union[int, str] = "auto",
                 d_conv: int = 3, conv_bias: bool = False, dropout: float = 0.0, forward_type: str = "v05_noz",
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4, dt_scale: float = 1.0):
        super().__init__()
        self.flags = flags = parse_forward_type(forward_type)
        self.forward_type = forward_type
        self.d_model, self.d_state = d_model, d_state
        self.d_inner = D = int(ssm_ratio * d_model)
        self.dt_rank = R = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.gated = not flags["noz"]
        K = self.K
        # registration order as upstream (out_norm first); irrelevant for loading
        self.out_norm = nn.Identity() if flags["onnone"] else LayerNorm2d(D)
        self.in_proj = Linear2d(d_model, 2 * D if self.gated else D, bias=False)
        self.act = nn.SiLU()
        self.conv2d = (nn.Conv2d(D, D, d_conv, padding=(d_conv - 1) // 2, groups=D, bias=conv_bias)
                       if d_conv > 1 else None)
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * d_state, D))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, D, R))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, D))
        self.A_logs = nn.Parameter(torch.empty(K * D, d_state))
        self.Ds = nn.Parameter(torch.empty(K * D))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        self.out_act = nn.GELU() if flags["oact"] else nn.Identity()
        self.out_proj = Linear2d(D, d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._dt_cfg = (dt_min, dt_max, dt_init_floor, dt_scale)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Upstream init "v0": x_proj as nn.Linear's default U(+-D^-1/2); dt weights U(+-R^-1/2 * scale); dt bias =
        inverse softplus of log-uniform dt in [dt_min, dt_max] (floored); A_logs = log(1..N) (N = 1: zeros, i.e.
        A = -1); Ds = 1."""
        dt_min, dt_max, floor, scale = self._dt_cfg
        D, N = self.d_inner, self.d_state
        nn.init.uniform_(self.x_proj_weight, -D ** -0.5, D ** -0.5)
        init_dt_weight_(self.dt_projs_weight, self.dt_rank, scale, "random")
        self.dt_projs_bias.copy_(dt_bias((self.K, D), dt_min, dt_max, floor))
        self.A_logs.copy_(s4d_real_a_log(self.K * D, N))
        self.Ds.fill_(1.0)

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, D, H, W) after conv + SiLU -> merged scan output (B, D, H, W) in the compute dtype (>= fp32)."""
        B, D, H, W = x.shape
        L, K, N, R = H * W, self.K, self.d_state, self.dt_rank
        cdt = torch.promote_types(x.dtype, torch.float32)
        xs = cross_scan(x)                                                          # (B, K, D, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight.to(xs.dtype))
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight.to(dts.dtype))
        ys = selective_scan(
            xs.reshape(B, K * D, L).to(cdt), dts.reshape(B, K * D, L).to(cdt),
            -torch.exp(self.A_logs.to(cdt)), Bs.to(cdt).contiguous(), Cs.to(cdt).contiguous(),
            D=self.Ds.to(cdt), z=None, delta_bias=self.dt_projs_bias.reshape(-1).to(cdt), delta_softplus=True)
        return cross_merge(ys.view(B, K, D, L), H, W).view(B, D, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(x)
        z = None
        if self.gated:
            x, z = x.chunk(2, dim=1)
            if not self.flags["nozact"]:
                z = self.act(z)
        if self.conv2d is not None:
            x = self.conv2d(x)
        x = self.act(x)
        dtype = x.dtype
        y = self.out_norm(self.forward_core(x)).to(dtype)
        y = self.out_act(y)
        if z is not None:
            y = y * z
        return self.dropout(self.out_proj(y))


class MlpV2(nn.Module):
    """Channels-first MLP: ``fc1`` Linear2d(C -> hidden, bias) -> GELU -> dropout -> ``fc2`` -> dropout."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear2d(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = Linear2d(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class VSSBlockV2(nn.Module):
    """VMamba v2 block (pre-norm, channels-first): ``x + DropPath(op(norm(x)))``, then
    ``x + DropPath(mlp(norm2(x)))``. ``norm``/``norm2`` are LayerNorm2d (eps 1e-5).

    Args:
        hidden_dim: channels C.
        drop_path: stochastic-depth rate of both branches. Default: 0.
        mlp_ratio: hidden width of the MLP = int(C * mlp_ratio); 0 means no MLP. Default: 4.0.
        mlp_layer: factory ``(C, hidden) -> nn.Module`` for the MLP. Default: :class:`MlpV2`.
        **ssm_kwargs: passed to :class:`SS2Dv2` (``d_state``, ``ssm_ratio``, ``forward_type``, ...).
    """

    def __init__(self, hidden_dim: int, drop_path: float = 0.0, mlp_ratio: float = 4.0,
                 mlp_layer: Optional[Callable[[int, int], nn.Module]] = None, **ssm_kwargs):
        super().__init__()
        self.norm = LayerNorm2d(hidden_dim)
        self.op = SS2Dv2(hidden_dim, **ssm_kwargs)
        self.drop_path = DropPath(drop_path)
        self.mlp = None
        if mlp_ratio > 0:
            self.norm2 = LayerNorm2d(hidden_dim)
            self.mlp = (mlp_layer or MlpV2)(hidden_dim, int(hidden_dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


def vss_stage(dim: int, rates, **block_kwargs) -> nn.Sequential:
    """A stage as upstream keeps it: ``Sequential(blocks=Sequential(VSSBlockV2, ...))`` (keys ``blocks.{j}.*``)."""
    return nn.Sequential(OrderedDict(blocks=nn.Sequential(*[VSSBlockV2(dim, r, **block_kwargs) for r in rates])))


def patch_embed_v2(in_chans: int = 3, embed_dim: int = 96) -> nn.Sequential:
    """Upstream patch embed "v2" (channels-first), indices 0..7: Conv3x3 s2 (in -> embed_dim/2, bias), Identity,
    LayerNorm2d, Identity, GELU, Conv3x3 s2 (-> embed_dim, bias), Identity, LayerNorm2d. /4 overall."""
    mid = embed_dim // 2
    return nn.Sequential(nn.Conv2d(in_chans, mid, 3, 2, 1), nn.Identity(), LayerNorm2d(mid), nn.Identity(),
                         nn.GELU(), nn.Conv2d(mid, embed_dim, 3, 2, 1), nn.Identity(), LayerNorm2d(embed_dim))


def downsample_v3(dim: int, out_dim: Optional[int] = None) -> nn.Sequential:
    """Upstream downsample "v3": Identity, Conv3x3 s2 p1 (dim -> 2*dim, bias), Identity, LayerNorm2d (indices
    1 and 3 hold the weights)."""
    out_dim = out_dim or 2 * dim
    return nn.Sequential(nn.Identity(), nn.Conv2d(dim, out_dim, 3, 2, 1), nn.Identity(), LayerNorm2d(out_dim))


def _normal_clamped_002(w: torch.Tensor) -> None:
    with torch.no_grad():
        w.normal_(0.0, 0.02).clamp_(-2.0, 2.0)   # == timm trunc_normal_(std=.02) (bounds +-2 = 100 sigma)


def init_vss_v2_weights(m: nn.Module) -> None:
    """Upstream ``VSSM._init_weights`` for ``module.apply``: every nn.Linear (Linear2d included) trunc-normal
    std 0.02, bias 0; every LayerNorm (LayerNorm2d included) 1 / 0. Convs and SS2D dt/A/D keep their init."""
    init_linear_and_norms(m, weight_init=_normal_clamped_002)
