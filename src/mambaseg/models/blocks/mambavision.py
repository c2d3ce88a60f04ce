"""MambaVision building blocks (shared by HMT-UNet and any MambaVision backbone).

Paper: "MambaVision: A Hybrid Mamba-Transformer Vision Backbone", Hatamizadeh & Kautz, CVPR 2025
(arXiv:2407.08083). Written from the description of NVlabs/MambaVision ``mambavision/models/mamba_vision.py``
and of the copy in simzhangbest/HMT-Unet (``models/mamba_vision.py``) in our spec (``upstream_models.md`` §4);
module and parameter names follow upstream so that MambaVision checkpoints and HMT-UNet state dicts load by
name. No timm, no mamba_ssm: the selective scan is ``mambaseg.ops.selective_scan``.

Blocks (all feature maps channels-first (B, C, H, W) except inside windows, where tokens are (B*, L, C)):

* ``MambaVisionStem``: two stride-2 3x3 convs (no bias) each followed by BatchNorm(eps 1e-4) and ReLU
  (upstream ``PatchEmbed``; parameters ``conv_down.{0,1,3,4}``).
* ``ConvBlock``: conv3x3 -> BN -> GELU(tanh) -> conv3x3 -> BN, optional layer scale, residual.
* ``Downsample``: conv3x3 stride 2, dim -> 2*dim, no bias, no norm (``reduction.0``).
* ``MambaVisionMixer``: the token mixer of the hybrid stages (see its docstring: double dt bias).
* ``Attention``: multi-head self-attention inside a window with ``F.scaled_dot_product_attention`` (no relative
  position bias, no shift, no mask).
* ``Block``: ``x + DropPath(g1 * mixer(LN(x)))``, ``x + DropPath(g2 * Mlp(LN(x)))``; the mixer is a
  ``MambaVisionMixer`` or an ``Attention`` (``attention_block_indices`` gives the upstream rule).
* ``window_partition`` / ``window_reverse`` / ``MambaVisionLayer`` (a stage: optional upsample, blocks inside
  zero-padded windows, optional downsample).
* ``PatchExpand2D`` (2x2 patch expansion, channels halve) and ``FinalPatchExpand2D`` (the x4 expansion of the head).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.ops import selective_scan

from .layers import DropPath, Mlp, pixel_shuffle_channels_last
from .ssm_init import dt_bias, init_dt_weight_, s4d_real_a_log

__all__ = ["MambaVisionStem", "ConvBlock", "Downsample", "MambaVisionMixer", "Attention", "Block",
           "attention_block_indices", "window_partition", "window_reverse", "pad_to_window", "MambaVisionLayer",
           "PatchExpand2D", "FinalPatchExpand2D"]


def _is_layer_scale(value) -> bool:
    # Upstream turns layer scale on only for a number (``type(v) in [int, float]``); None/False mean off.
    return value is not None and not isinstance(value, bool) and isinstance(value, (int, float))


class MambaVisionStem(nn.Module):
    """Stem: (B, in_chans, H, W) -> (B, dim, H/4, W/4).

    Conv3x3 s2 (no bias) -> BN(eps 1e-4) -> ReLU -> Conv3x3 s2 (no bias) -> BN(eps 1e-4) -> ReLU.

    Args:
        in_chans: input channels (upstream hard-wires 3; here any number). Default 3.
        in_dim: channels after the first conv. Default 64.
        dim: output channels. Default 96.
    """

    def __init__(self, in_chans: int = 3, in_dim: int = 64, dim: int = 96):
        super().__init__()
        self.conv_down = nn.Sequential(
            nn.Conv2d(in_chans, in_dim, 3, 2, 1, bias=False),
            nn.BatchNorm2d(in_dim, eps=1e-4),
            nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, 2, 1, bias=False),
            nn.BatchNorm2d(dim, eps=1e-4),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_down(x)


class ConvBlock(nn.Module):
    """Residual conv block of MambaVision's first two stages (channels-first).

    ``x + DropPath(gamma * BN(conv(GELU_tanh(BN(conv(x))))))``; convs are 3x3 with bias, BN eps 1e-5.

    Args:
        dim: channels.
        drop_path: stochastic-depth rate. Default 0.
        layer_scale: initial value of a per-channel scale ``gamma`` (None: no scale). Default None.
        kernel_size: conv kernel size (padding ``kernel_size // 2``). Default 3.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale: Optional[float] = None,
                 kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(dim, dim, kernel_size, 1, pad)
        self.norm1 = nn.BatchNorm2d(dim, eps=1e-5)
        self.act1 = nn.GELU(approximate="tanh")
        self.conv2 = nn.Conv2d(dim, dim, kernel_size, 1, pad)
        self.norm2 = nn.BatchNorm2d(dim, eps=1e-5)
        self.gamma = nn.Parameter(float(layer_scale) * torch.ones(dim)) if _is_layer_scale(layer_scale) else None
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return x + self.drop_path(y)


class Downsample(nn.Module):
    """Conv3x3 stride 2 without bias or norm: (B, dim, H, W) -> (B, 2*dim (or dim), H/2, W/2).

    Args:
        dim: input channels.
        keep_dim: keep ``dim`` output channels instead of doubling. Default False.
    """

    def __init__(self, dim: int, keep_dim: bool = False):
        super().__init__()
        self.reduction = nn.Sequential(nn.Conv2d(dim, dim if keep_dim else 2 * dim, 3, 2, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(x)


class MambaVisionMixer(nn.Module):
    """MambaVision's token mixer on (B, L, d_model) tokens (one window per batch row).

    ``in_proj`` (d_model -> d_inner, no bias) splits into x and z (d_inner/2 each). Both get their own depthwise
    conv1d (kernel ``d_conv``, ``padding="same"`` i.e. non-causal and symmetric for odd kernels, no bias) and
    SiLU. x feeds the selective scan (``x_proj`` -> dt, B, C; ``dt_proj``; A = -exp(A_log); skip D); z is a
    symmetric non-SSM branch (no gating). ``out_proj(cat([scan(x), z]))`` (no bias).

    **Double dt bias (kept on purpose).** ``dt = dt_proj(dt)`` already includes ``dt_proj.bias`` and the same bias
    is passed again as ``delta_bias``, so the scan's step is ``softplus(W dt + 2 b)``. Upstream NVlabs code does
    this, so MambaVision checkpoints were trained with it; removing it would change what they compute.

    The scan is ``mambaseg.ops.selective_scan`` (process-default backend) with ungrouped 3-D B/C (B*, d_state, L).

    Args:
        d_model: token channels (must be even when ``expand`` is 1).
        d_state: SSM state size N. Default 8 (as MambaVision's ``Block`` configures it).
        d_conv: depthwise conv1d kernel size. Default 3.
        expand: d_inner = expand * d_model. Default 1.
        dt_rank: rank of the dt projection, ``"auto"`` = ceil(d_model / 16). Default "auto".
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: Mamba's dt initialisation (dt ~ logU[dt_min, dt_max],
            bias = softplus^-1(dt); weight U(+-dt_rank^-0.5 * dt_scale) or constant). Defaults 1e-3, 0.1,
            "random", 1.0, 1e-4. (HMT-UNet/MambaVision re-initialise every Linear afterwards, see
            ``hmt_unet.HMTUNet``.)
        conv_bias: upstream passes ``bias=conv_bias // 2``, which is 0 for the default True; kept: no conv bias.
        bias: bias of in_proj/out_proj. Default False.
    """

    def __init__(self, d_model: int, d_state: int = 8, d_conv: int = 3, expand: int = 1,
                 dt_rank: Union[int, str] = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        if self.d_inner % 2:
            raise ValueError(f"MambaVisionMixer: expand * d_model = {self.d_inner} must be even (it is split into "
                             f"an SSM half and a conv half)")
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        half = self.d_inner // 2
        self.in_proj = nn.Linear(d_model, self.d_inner, bias=bias)
        self.x_proj = nn.Linear(half, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, half, bias=True)
        if dt_init not in ("random", "constant"):
            raise ValueError(f"MambaVisionMixer: dt_init must be 'random' or 'constant', got {dt_init!r}")
        with torch.no_grad():
            init_dt_weight_(self.dt_proj.weight, self.dt_rank, dt_scale, dt_init)
            self.dt_proj.bias.copy_(dt_bias(half, dt_min, dt_max, dt_init_floor))  # inverse softplus
        self.A_log = nn.Parameter(s4d_real_a_log(half, d_state))
        self.D = nn.Parameter(torch.ones(half))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        conv_has_bias = bool(int(conv_bias) // 2)
        self.conv1d_x = nn.Conv1d(half, half, kernel_size=d_conv, groups=half, bias=conv_has_bias)
        self.conv1d_z = nn.Conv1d(half, half, kernel_size=d_conv, groups=half, bias=conv_has_bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model)."""
        half = self.d_inner // 2
        xz = self.in_proj(hidden_states).transpose(1, 2)          # (B, d_inner, L)
        x, z = xz.chunk(2, dim=1)
        x = F.silu(F.conv1d(x, self.conv1d_x.weight, self.conv1d_x.bias, padding="same", groups=half))
        z = F.silu(F.conv1d(z, self.conv1d_z.weight, self.conv1d_z.bias, padding="same", groups=half))
        x_dbl = self.x_proj(x.transpose(1, 2))                    # (B, L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj(dt).transpose(1, 2).contiguous()        # includes dt_proj.bias (first time)
        B = B.transpose(1, 2).contiguous()                        # (B, N, L)
        C = C.transpose(1, 2).contiguous()
        # A, D and the bias in (at least) fp32, as upstream's ``.float()``; fp64 stays fp64
        f = torch.promote_types(self.A_log.dtype, torch.float32)
        A = -torch.exp(self.A_log.to(f))
        y = selective_scan(x.contiguous(), dt, A, B, C, D=self.D.to(f), z=None,
                           delta_bias=self.dt_proj.bias.to(f),  # second time: upstream's double bias
                           delta_softplus=True)
        y = torch.cat([y, z], dim=1).transpose(1, 2)              # (B, L, d_inner)
        return self.out_proj(y)


class Attention(nn.Module):
    """Multi-head self-attention over the tokens of a window: (B*, L, dim) -> (B*, L, dim).

    ``qkv`` Linear (bias ``qkv_bias``) -> ``F.scaled_dot_product_attention`` (scale head_dim^-0.5, no relative
    position bias, no mask) -> ``proj`` Linear (bias). Attention dropout is applied in training only (upstream
    passes its rate also in eval; every MambaVision config uses 0).

    Args:
        dim: channels; must be divisible by ``num_heads``.
        num_heads: heads. Default 8.
        qkv_bias: bias of the qkv projection. Default False.
        qk_norm: LayerNorm on q and k per head (upstream receives ``qk_scale=None`` here: off). Default False.
        attn_drop: attention dropout. Default 0.
        proj_drop: dropout after ``proj``. Default 0.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Bw, N, C = x.shape
        qkv = self.qkv(x).reshape(Bw, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(Bw, N, C)
        return self.proj_drop(self.proj(x))


def attention_block_indices(depth: int) -> list:
    """Block indices of a hybrid stage that use attention (the rest use the mixer): the second half, with the
    middle block of an odd depth going to the mixer: ``range(ceil(depth / 2), depth)``. depth 8 -> 4..7,
    4 -> 2..3, 3 -> [2], 1 -> []."""
    return list(range(depth // 2 + depth % 2, depth))


class Block(nn.Module):
    """Hybrid block on window tokens (B*, L, dim): mixer (MambaVisionMixer or Attention) then MLP.

    ``x = x + DropPath(gamma_1 * mixer(norm1(x)))``; ``x = x + DropPath(gamma_2 * mlp(norm2(x)))``.

    Args:
        dim: channels.
        num_heads: attention heads (unused by a mixer block).
        use_attention: ``Attention`` if True, else ``MambaVisionMixer(d_state=8, d_conv=3, expand=1)``.
        mlp_ratio: MLP hidden = ``int(dim * mlp_ratio)``. Default 4.
        qkv_bias: bias of qkv. Default False (HMT-UNet/MambaVision pass True).
        drop: dropout in the MLP and after attention proj. Default 0.
        attn_drop: attention dropout. Default 0.
        drop_path: stochastic depth rate. Default 0.
        layer_scale: initial value of per-channel ``gamma_1``/``gamma_2`` (None: off). Default None.
    """

    def __init__(self, dim: int, num_heads: int, use_attention: bool, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 layer_scale: Optional[float] = None, act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.use_attention = bool(use_attention)
        self.norm1 = norm_layer(dim)
        if self.use_attention:
            self.mixer = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                   proj_drop=drop, norm_layer=norm_layer)
        else:
            self.mixer = MambaVisionMixer(d_model=dim, d_state=8, d_conv=3, expand=1)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        if _is_layer_scale(layer_scale):
            self.gamma_1 = nn.Parameter(float(layer_scale) * torch.ones(dim))
            self.gamma_2 = nn.Parameter(float(layer_scale) * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mixer(self.norm1(x))
        x = x + self.drop_path(y if self.gamma_1 is None else self.gamma_1 * y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(y if self.gamma_2 is None else self.gamma_2 * y)


def pad_to_window(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) on the right/bottom to multiples of ``window_size`` (upstream behaviour: the padded
    tokens then take part in the mixer and attention unmasked)."""
    H, W = x.shape[-2:]
    pad_b = (window_size - H % window_size) % window_size
    pad_r = (window_size - W % window_size) % window_size
    return F.pad(x, (0, pad_r, 0, pad_b)) if (pad_r or pad_b) else x


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, C, H, W) with H, W multiples of ``window_size`` -> (B * nH * nW, window_size**2, C).

    Windows are ordered row-major over the grid (batch outermost); tokens row-major inside a window."""
    B, C, H, W = x.shape
    if H % window_size or W % window_size:
        raise ValueError(f"window_partition: {H}x{W} is not a multiple of window {window_size}; pad_to_window first")
    x = x.view(B, C, H // window_size, window_size, W // window_size, window_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window_size * window_size, C)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of ``window_partition``: (B * nH * nW, window_size**2, C) -> (B, C, H, W)."""
    nh, nw = H // window_size, W // window_size
    B = windows.shape[0] // (nh * nw)
    C = windows.shape[-1]
    x = windows.reshape(B, nh, nw, window_size, window_size, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)


class MambaVisionLayer(nn.Module):
    """One stage: [upsample] -> blocks -> [downsample], channels-first in and out.

    Conv stages run ``ConvBlock``s on the map. Hybrid stages zero-pad the map right/bottom to multiples of
    ``window_size``, run ``Block``s on each window's tokens (mixer for the first half, attention for
    ``attention_block_indices(depth)``), reverse the windows and crop the padding after the whole stage.

    Args:
        dim: channels of the blocks.
        depth: number of blocks.
        num_heads: attention heads.
        window_size: window side (hybrid stages).
        conv: ConvBlocks instead of hybrid Blocks. Default False.
        downsample: append a ``Downsample`` (dim -> 2*dim, stride 2) after the blocks. Default False.
        upsample: prepend a ``PatchExpand2D(dim)`` (2*dim -> dim, x2) before the blocks. Default False.
        mlp_ratio, qkv_bias, drop, attn_drop: passed to ``Block``. Defaults 4, True, 0, 0.
        drop_path: one rate or a list with one rate per block. Default 0.
        layer_scale: layer scale of hybrid blocks (None: off). Default None.
        layer_scale_conv: layer scale of conv blocks (None: off). Default None.
        attention_blocks: indices of attention blocks; default ``attention_block_indices(depth)``.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, conv: bool = False,
                 downsample: bool = False, upsample: bool = False, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: Union[float, Sequence[float]] = 0.0,
                 layer_scale: Optional[float] = None, layer_scale_conv: Optional[float] = None,
                 attention_blocks: Optional[Sequence[int]] = None):
        super().__init__()
        dpr = list(drop_path) if isinstance(drop_path, (list, tuple)) else [float(drop_path)] * depth
        if len(dpr) != depth:
            raise ValueError(f"MambaVisionLayer: {len(dpr)} drop-path rates for {depth} blocks")
        self.conv = bool(conv)
        self.window_size = int(window_size)
        self.upsample = PatchExpand2D(dim) if upsample else None
        if self.conv:
            self.attention_blocks = []
            self.blocks = nn.ModuleList([ConvBlock(dim, drop_path=dpr[i], layer_scale=layer_scale_conv)
                                         for i in range(depth)])
        else:
            att = attention_block_indices(depth) if attention_blocks is None else list(attention_blocks)
            self.attention_blocks = att
            self.blocks = nn.ModuleList([
                Block(dim, num_heads=num_heads, use_attention=i in att, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                      drop=drop, attn_drop=attn_drop, drop_path=dpr[i], layer_scale=layer_scale)
                for i in range(depth)])
        self.downsample = Downsample(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Everything but the trailing downsample: the stage's own output map (the backbone feature)."""
        if self.upsample is not None:
            x = self.upsample(x)
        if self.conv:
            for blk in self.blocks:
                x = blk(x)
        else:
            H, W = x.shape[-2:]
            xp = pad_to_window(x, self.window_size)
            Hp, Wp = xp.shape[-2:]
            t = window_partition(xp, self.window_size)
            for blk in self.blocks:
                t = blk(t)
            x = window_reverse(t, self.window_size, Hp, Wp)
            if (Hp, Wp) != (H, W):
                x = x[:, :, :H, :W].contiguous()
        return x


class PatchExpand2D(nn.Module):
    """x2 patch expansion, channels-first: (B, 2*dim, H, W) -> (B, dim, 2H, 2W).

    Linear(2*dim -> 4*dim, no bias) per pixel, rearranged to 2x2 pixels of dim channels, LayerNorm(dim).
    (Upstream ``PatchExpand2D_sim``; parameters ``expand.weight``, ``norm.{weight,bias}``.)

    Args:
        dim: output channels (input has ``2 * dim``).
        dim_scale: spatial factor. Default 2.
    """

    def __init__(self, dim: int, dim_scale: int = 2, norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = 2 * dim
        self.dim_scale = dim_scale
        self.expand = nn.Linear(self.dim, dim_scale * self.dim, bias=False)
        self.norm = norm_layer(self.dim // dim_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.expand(x.permute(0, 2, 3, 1))
        x = self.norm(pixel_shuffle_channels_last(x, self.dim_scale))
        return x.permute(0, 3, 1, 2)


class FinalPatchExpand2D(nn.Module):
    """x4 patch expansion of the head, channels-first: (B, dim, H, W) -> (B, dim/4, 4H, 4W).

    Linear(dim -> 4*dim, no bias), rearranged to 4x4 pixels of dim/4 channels, LayerNorm(dim/4).

    Args:
        dim: input channels (divisible by ``dim_scale``).
        dim_scale: spatial factor. Default 4.
    """

    def __init__(self, dim: int, dim_scale: int = 4, norm_layer=nn.LayerNorm):
        super().__init__()
        if dim % dim_scale:
            raise ValueError(f"FinalPatchExpand2D: dim {dim} is not divisible by dim_scale {dim_scale}")
        self.dim = dim
        self.dim_scale = dim_scale
        self.expand = nn.Linear(dim, dim_scale * dim, bias=False)
        self.norm = norm_layer(dim // dim_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.expand(x.permute(0, 2, 3, 1))
        x = self.norm(pixel_shuffle_channels_last(x, self.dim_scale))
        return x.permute(0, 3, 1, 2)
