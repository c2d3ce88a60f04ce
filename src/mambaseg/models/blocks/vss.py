"""VMamba v0 building blocks shared by VM-UNet, VM-UNetV2 and Mamba-UNet.

All three networks carry the early (v0, January 2024) code of VMamba (Liu et al., "VMamba: Visual State Space
Model", arXiv:2401.10166). This file writes those blocks once:

* :class:`SS2D`: the 2-D selective-scan mixer (four scan directions, one grouped selective scan),
* :class:`VSSBlock`: ``x + DropPath(SS2D(LayerNorm(x)))`` (no MLP, no layer scale),
* :class:`VSSLayer` (encoder stage: blocks, then optional :class:`PatchMerging2D`) and :class:`VSSLayerUp`
  (decoder stage: blocks and an optional upsampling module, in the order each network uses),
* :class:`PatchEmbed2D`, :class:`PatchMerging2D`,
* the pixel-shuffle "expand" layers: :class:`PatchExpand2D` and :class:`FinalPatchExpand2D` (VM-UNet's
  ``PatchExpand2D`` / ``Final_PatchExpand2D``), :class:`PatchExpand` and :class:`FinalPatchExpandX4` (Mamba-UNet's
  Swin-UNet-style ``PatchExpand`` / ``FinalPatchExpand_X4``),
* :class:`VSSEncoder`: patch embedding + encoder stages (the encoder half of upstream's ``VSSM``).

Tensors inside the blocks are channels-last ``(B, H, W, C)`` as upstream. Module and parameter names equal
upstream's (``ln_1``, ``self_attention``, ``in_proj``, ``conv2d``, ``x_proj_weight``, ``dt_projs_weight``,
``dt_projs_bias``, ``A_logs``, ``Ds``, ``out_norm``, ``out_proj``, ``downsample.{norm,reduction}``,
``upsample.{expand,norm}``, ...), so upstream state dicts load with ``strict=True``.

The scan is :func:`mambaseg.ops.cross_selective_scan` (process-default backend): the four cross-scan
directions, the grouped selective scan (``delta_bias``, ``delta_softplus=True``) and the merge in one op, on
projections computed once on the row-major map (a deliberate difference in evaluation order only: the same
numbers as upstream's per-direction projections of the cross-scanned copies). Computed in float32 (float64
stays float64) also under autocast.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.ops import cross_selective_scan

from .layers import DropPath, check_input_size, init_linear_and_norms, pixel_shuffle_channels_last
from .ssm_init import dt_bias, init_dt_weight_, s4d_real_a_log

__all__ = ["VSSMEncoder", "SS2D", "VSSBlock", "VSSLayer", "VSSLayerUp", "PatchEmbed2D", "PatchMerging2D", "PatchExpand2D",
           "FinalPatchExpand2D", "PatchExpand", "FinalPatchExpandX4", "VSSEncoder", "init_vss_weights",
           "pixel_shuffle_channels_last", "prepare_input", "stage_drop_path_rates"]


# ----------------------------------------------------------------------------------------------------------------
# SS2D and the VSS block
# ----------------------------------------------------------------------------------------------------------------
class SS2D(nn.Module):
    """VMamba v0 2-D selective-scan mixer (``SS2D``) on channels-last maps.

    ``in_proj`` (C -> 2D, split into x and gate z) -> depthwise 3x3 conv + SiLU on x -> cross-scan into 4
    sequences (row-major, column-major, both reversed) -> per direction ``x_proj`` (dt, B, C) and ``dt_proj`` ->
    one grouped selective scan (direction k uses B/C group k, ``D`` skip, ``delta_bias``, softplus) -> merge the
    4 directions back to row-major (sum) -> ``out_norm`` LayerNorm(D) -> ``* SiLU(z)`` -> ``out_proj`` (D -> C).

    Args:
        d_model: channels C of the input and output.
        d_state: SSM state size N. Default: 16.
        d_conv: depthwise conv kernel size. Default: 3.
        expand: inner width D = expand * C. Default: 2.
        dt_rank: rank of the dt projection; ``"auto"`` = ceil(C / 16). Default: ``"auto"``.
        dt_min, dt_max: range of the initial step size (log-uniform). Defaults: 1e-3, 0.1.
        dt_init: ``"random"`` (uniform +-dt_rank^-0.5 * dt_scale) or ``"constant"`` dt-projection weights.
        dt_scale: scale of the dt-projection init. Default: 1.0.
        dt_init_floor: lower clamp of the initial step size. Default: 1e-4.
        dropout: dropout after ``out_proj`` (upstream never sets it). Default: 0.
        conv_bias: bias of the depthwise conv. Default: True.
        bias: bias of ``in_proj`` / ``out_proj``. Default: False.
    """

    K = 4  # scan directions

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3, expand: int = 2,
                 dt_rank: Union[int, str] = "auto", dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 dropout: float = 0.0, conv_bias: bool = True, bias: bool = False):
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"SS2D: dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        K = self.K

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv2d = nn.Conv2d(d_inner, d_inner, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=d_inner,
                                bias=conv_bias)
        self.act = nn.SiLU()
        # Per-direction projections, stacked as raw parameters (upstream builds 4 nn.Linear and stacks them).
        self.x_proj_weight = nn.Parameter(torch.empty(K, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, d_inner))
        self.A_logs = nn.Parameter(torch.empty(K * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(K * d_inner))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0.0 else None

        self._dt_cfg = (dt_min, dt_max, dt_init, dt_scale, dt_init_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Initialise the raw SSM parameters as upstream (``in_proj``/``out_proj`` are set by the network's
        ``init_vss_weights``; the conv keeps PyTorch's default)."""
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor = self._dt_cfg
        D, N = self.d_inner, self.d_state
        # nn.Linear default (kaiming_uniform, a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = D.
        nn.init.uniform_(self.x_proj_weight, -D ** -0.5, D ** -0.5)
        init_dt_weight_(self.dt_projs_weight, self.dt_rank, dt_scale, dt_init)
        # softplus(bias) = dt ~ logU[dt_min, dt_max], floored (blocks.ssm_init)
        self.dt_projs_bias.copy_(dt_bias((self.K, D), dt_min, dt_max, dt_init_floor))
        # S4D-real: A = -(1..N) per row, stored as log; D skip = 1.
        self.A_logs.copy_(s4d_real_a_log(self.K * D, N))
        self.Ds.fill_(1.0)

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, D, H, W) after conv+SiLU -> merged scan output (B, D, H*W) in the compute dtype (>= float32).

        Upstream projects each of the 4 cross-scanned copies of x. Here ``x_proj`` and ``dt_proj`` run once on
        the row-major map (direction k's projection W_k @ x at every row-major position: the same numbers,
        permuted), and :func:`mambaseg.ops.cross_selective_scan` walks the 4 orders itself, so no (B, 4, D, L)
        copy of x is made; its output is already merged and row-major."""
        B, D, H, W = x.shape
        L, K, N, R = H * W, self.K, self.d_state, self.dt_rank
        xf = x.reshape(B, D, L)
        x_dbl = torch.matmul(self.x_proj_weight.reshape(K * (R + 2 * N), D), xf).view(B, K, R + 2 * N, L)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)                      # (B, K, ., L), row-major
        dts = torch.matmul(self.dt_projs_weight, dts)                            # (B, K, D, L), bias in the scan
        cdt = torch.promote_types(x.dtype, torch.float32)                       # fp32 scan (fp64 stays fp64)
        return cross_selective_scan(
            xf.to(cdt), dts.to(cdt),
            -torch.exp(self.A_logs.to(cdt)),                                     # (K*D, N)
            Bs.to(cdt), Cs.to(cdt),                                              # grouped (B, K, N, L)
            D=self.Ds.to(cdt),
            delta_bias=self.dt_projs_bias.reshape(-1).to(cdt),
            delta_softplus=True, h=H, w=W,
        )                                                                        # (B, D, L) row-major

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)                                  # (B, H, W, D) each
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))           # (B, D, H, W)
        y = self.forward_core(x)                                                 # (B, D, L)
        y = self.out_norm(y.transpose(1, 2).reshape(B, H, W, self.d_inner))
        y = y.to(z.dtype) * F.silu(z)
        out = self.out_proj(y)
        if self.dropout is not None:
            out = self.dropout(out)
        return out


class VSSBlock(nn.Module):
    """``x + DropPath(SS2D(LayerNorm(x)))`` on (B, H, W, C). No MLP, no layer scale (VMamba v0).

    Args:
        dim: channels C.
        drop_path: stochastic-depth rate of the residual branch. Default: 0.
        d_state: SSM state size. Default: 16.
        norm_eps: LayerNorm epsilon. Default: 1e-5 (upstream's block default is 1e-6, but every ``VSSLayer``
            of the three networks passes ``nn.LayerNorm``, i.e. 1e-5).
    """

    def __init__(self, dim: int, drop_path: float = 0.0, d_state: int = 16, norm_eps: float = 1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=norm_eps)
        self.self_attention = SS2D(d_model=dim, d_state=d_state)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


def _rates(drop_path: Union[float, Sequence[float]], depth: int) -> List[float]:
    if isinstance(drop_path, (int, float)):
        return [float(drop_path)] * depth
    rates = [float(r) for r in drop_path]
    if len(rates) != depth:
        raise ValueError(f"drop_path has {len(rates)} rates for {depth} blocks")
    return rates


class VSSLayer(nn.Module):
    """Encoder stage: ``depth`` VSS blocks, then (optionally) :class:`PatchMerging2D` (dim -> 2*dim, /2).

    Args:
        dim: channels.
        depth: number of VSS blocks.
        drop_path: one rate or one per block. Default: 0.
        d_state: SSM state size. Default: 16.
        downsample: append a PatchMerging2D. Default: False.
    """

    def __init__(self, dim: int, depth: int, drop_path: Union[float, Sequence[float]] = 0.0, d_state: int = 16,
                 downsample: bool = False):
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList([VSSBlock(dim, r, d_state) for r in _rates(drop_path, depth)])
        self.downsample = PatchMerging2D(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class VSSLayerUp(nn.Module):
    """Decoder stage: ``depth`` VSS blocks at ``dim`` channels and an optional ``upsample`` module.

    VM-UNet applies the upsampling first (``upsample_first=True``: :class:`PatchExpand2D` from 2*dim to dim,
    then blocks); Mamba-UNet applies the blocks first (``upsample_first=False``: blocks, then
    :class:`PatchExpand` from dim to dim/2), as Swin-UNet does.

    Args:
        dim: channels of the blocks.
        depth: number of VSS blocks.
        drop_path: one rate or one per block. Default: 0.
        d_state: SSM state size. Default: 16.
        upsample: the upsampling module, or None. Default: None.
        upsample_first: order of upsampling and blocks (see above). Default: True.
    """

    def __init__(self, dim: int, depth: int, drop_path: Union[float, Sequence[float]] = 0.0, d_state: int = 16,
                 upsample: Optional[nn.Module] = None, upsample_first: bool = True):
        super().__init__()
        self.dim = dim
        self.upsample_first = upsample_first
        self.blocks = nn.ModuleList([VSSBlock(dim, r, d_state) for r in _rates(drop_path, depth)])
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None and self.upsample_first:
            x = self.upsample(x)
        for blk in self.blocks:
            x = blk(x)
        if self.upsample is not None and not self.upsample_first:
            x = self.upsample(x)
        return x


# ----------------------------------------------------------------------------------------------------------------
# Patch embedding, merging and expanding (channels-last)
# ----------------------------------------------------------------------------------------------------------------
class PatchEmbed2D(nn.Module):
    """Non-overlapping ``patch_size`` conv (``proj``) + LayerNorm (``norm``): (B, C, H, W) -> (B, H/p, W/p, E)."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, patch_norm: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x) if self.norm is not None else x


class PatchMerging2D(nn.Module):
    """(B, H, W, C) -> (B, H/2, W/2, 2C): concatenate the 2x2-strided sub-grids at offsets (0,0), (1,0), (0,1),
    (1,1) (row, column) along channels, LayerNorm(4C) (``norm``), Linear(4C -> 2C, no bias) (``reduction``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        if H % 2 or W % 2:
            raise ValueError(f"PatchMerging2D: feature map {H}x{W} is not even; the input size must be divisible "
                             f"by 32 (4 for the patch embedding x 2 per merge)")
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchExpand2D(nn.Module):
    """VM-UNet's ``PatchExpand2D(dim)``: (B, H, W, 2*dim) -> (B, 2H, 2W, dim).

    ``expand`` Linear(2*dim -> 4*dim, no bias), 2x2 pixel shuffle, ``norm`` LayerNorm(dim).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.expand = nn.Linear(2 * dim, 4 * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_channels_last(self.expand(x), 2))


class FinalPatchExpand2D(nn.Module):
    """VM-UNet's ``Final_PatchExpand2D(dim, dim_scale=4)``: (B, H, W, dim) -> (B, 4H, 4W, dim/4).

    ``expand`` Linear(dim -> 4*dim, no bias), 4x4 pixel shuffle, ``norm`` LayerNorm(dim/4).
    """

    def __init__(self, dim: int, dim_scale: int = 4):
        super().__init__()
        self.dim, self.dim_scale = dim, dim_scale
        self.expand = nn.Linear(dim, dim_scale * dim, bias=False)
        self.norm = nn.LayerNorm(dim // dim_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_channels_last(self.expand(x), self.dim_scale))


class PatchExpand(nn.Module):
    """Mamba-UNet's (Swin-UNet-style) ``PatchExpand(dim)``: (B, H, W, dim) -> (B, 2H, 2W, dim/2).

    ``expand`` Linear(dim -> 2*dim, no bias), 2x2 pixel shuffle, ``norm`` LayerNorm(dim/2).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_channels_last(self.expand(x), 2))


class FinalPatchExpandX4(nn.Module):
    """Mamba-UNet's ``FinalPatchExpand_X4(dim)``: (B, H, W, dim) -> (B, 4H, 4W, dim).

    ``expand`` Linear(dim -> 16*dim, no bias), 4x4 pixel shuffle, ``norm`` LayerNorm(dim).
    """

    def __init__(self, dim: int, dim_scale: int = 4):
        super().__init__()
        self.dim, self.dim_scale = dim, dim_scale
        self.expand = nn.Linear(dim, dim_scale * dim_scale * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_channels_last(self.expand(x), self.dim_scale))


# ----------------------------------------------------------------------------------------------------------------
# Encoder and helpers
# ----------------------------------------------------------------------------------------------------------------
def stage_drop_path_rates(depths: Sequence[int], drop_path_rate: float) -> List[List[float]]:
    """Stochastic-depth rates linspace(0, drop_path_rate, sum(depths)) split per stage (upstream's ``dpr``)."""
    dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
    out, start = [], 0
    for d in depths:
        out.append(dpr[start:start + d])
        start += d
    return out


def _check_depths(depths: Sequence[int], n: int = 4, what: str = "depths") -> List[int]:
    depths = list(depths)
    if len(depths) != n or not all(isinstance(d, int) and d >= 0 for d in depths):
        raise ValueError(f"{what} must be {n} non-negative integers (blocks per stage), got {depths!r}")
    return depths


class VSSEncoder(nn.Module):
    """Patch embedding + 4 encoder stages: the encoder half of upstream's ``VSSM`` (attribute names
    ``patch_embed``, ``layers``). Stage i has ``embed_dim * 2**i`` channels at stride ``4 * 2**i``; every stage
    but the last ends with a PatchMerging2D.

    Args:
        in_channels: input channels of the patch embedding. Default: 3.
        depths: VSS blocks per stage. Default: (2, 2, 2, 2).
        embed_dim: channels of stage 1. Default: 96.
        d_state: SSM state size. Default: 16.
        drop_path_rate: maximum stochastic-depth rate (linear over all encoder blocks). Default: 0.2.
        patch_size: patch embedding stride. Default: 4.
        num_stages: how many of the 4 stages to build (VM-UNetV2 can drop the unused last one). Default: 4.
    """

    def __init__(self, in_channels: int = 3, depths: Sequence[int] = (2, 2, 2, 2), embed_dim: int = 96,
                 d_state: int = 16, drop_path_rate: float = 0.2, patch_size: int = 4, num_stages: int = 4):
        super().__init__()
        depths = _check_depths(depths)
        self.depths = depths
        self.embed_dim = embed_dim
        self.dims = [embed_dim * 2 ** i for i in range(len(depths))]
        self.patch_embed = PatchEmbed2D(patch_size, in_channels, embed_dim)
        rates = stage_drop_path_rates(depths, drop_path_rate)
        self.layers = nn.ModuleList([
            VSSLayer(self.dims[i], depths[i], rates[i], d_state, downsample=i < len(depths) - 1)
            for i in range(num_stages)])

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(B, C, H, W) -> (output of the last built stage, [input of each built stage]), channels-last."""
        x = self.patch_embed(x)
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        return x, skips


def _normal_clamped_002(w: torch.Tensor) -> None:
    with torch.no_grad():
        w.normal_(0.0, 0.02).clamp_(-2.0, 2.0)


def init_vss_weights(m: nn.Module) -> None:
    """Upstream ``VSSM._init_weights`` (apply with ``module.apply``): Linear weights trunc_normal(std 0.02) and
    biases 0; LayerNorm weight 1, bias 0. Convs and the raw SS2D parameters keep their own init.

    Upstream's timm ``trunc_normal_(std=.02)`` truncates at the absolute bounds +-2, i.e. 100 standard
    deviations, so ``normal_(0, 0.02)`` clamped to [-2, 2] is the same distribution (the truncated mass is
    below 1e-2000) and avoids the slow rejection loop of ``torch.nn.init.trunc_normal_``."""
    init_linear_and_norms(m, weight_init=_normal_clamped_002)


def prepare_input(x: torch.Tensor, in_channels: int, gray_to_rgb: bool, multiple: int, model: str) -> torch.Tensor:
    """Upstream quirk + checks shared by the three networks: a 1-channel batch fed to a 3-channel model is
    repeated to 3 channels when ``gray_to_rgb``; then the shape must be (B, in_channels, H, W) with H, W
    divisible by ``multiple`` (clear ValueError otherwise)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model}: expected a torch.Tensor, got {type(x).__name__}")
    if gray_to_rgb and x.dim() == 4 and x.shape[1] == 1 and in_channels == 3:
        x = x.repeat(1, 3, 1, 1)
    check_input_size(x, in_channels, multiple, model)
    return x


class VSSMEncoder(nn.Module):
    """Upstream ``VSSMEncoder``: ``patch_embed`` (``patch_size`` conv + LayerNorm), ``layers[i]`` (v0 VSS blocks),
    ``downsamples[i]`` (PatchMerging2D, i < 3). forward: (B, in_chans, H, W) -> [input, 96@/p, 192@/2p, 384@/4p,
    768@/8p], channels-first, each stage's output before its merge."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, depths: Sequence[int] = (2, 2, 9, 2),
                 dims: Sequence[int] = (96, 192, 384, 768), d_state: int = 16, drop_path_rate: float = 0.2):
        super().__init__()
        self.dims = list(dims)
        self.patch_embed = PatchEmbed2D(patch_size, in_chans, dims[0])
        rates = stage_drop_path_rates(depths, drop_path_rate)
        self.layers = nn.ModuleList([VSSLayer(dims[i], depths[i], rates[i], d_state) for i in range(len(dims))])
        self.downsamples = nn.ModuleList([PatchMerging2D(dims[i]) for i in range(len(dims) - 1)])
        self.apply(init_vss_weights)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = [x]
        x = self.patch_embed(x)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            outs.append(x.permute(0, 3, 1, 2).contiguous())
            if i < len(self.downsamples):
                x = self.downsamples[i](x)
        return outs
