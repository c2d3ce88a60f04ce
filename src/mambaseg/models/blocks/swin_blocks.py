"""Swin Transformer pieces, written once: window partition/reverse, relative position bias, shifted-window mask,
``WindowAttention``, ``SwinTransformerBlock``, ``PatchEmbed``, ``PatchMerging``, ``PatchExpand``,
``FinalPatchExpand_X4`` and the two stage containers ``BasicLayer`` / ``BasicLayer_up``.

Papers: Z. Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021
(https://arxiv.org/abs/2103.14030); H. Cao et al., "Swin-Unet: Unet-like Pure Transformer for Medical Image
Segmentation", ECCV Workshops 2022 (https://arxiv.org/abs/2105.05537) for the patch expanding layers.
Written for mambaseg from the papers; module and parameter names follow the Swin-Unet code
(HuCaoFighting/Swin-Unet) so its checkpoints map by name.

Token layout everywhere: (B, L, C) with L = H * W in row-major order.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .layers import DropPath, Mlp, pixel_shuffle_channels_last, trunc_normal_

__all__ = ["window_partition", "window_reverse", "relative_position_index", "shifted_window_mask",
           "WindowAttention", "SwinTransformerBlock", "PatchEmbed", "PatchMerging", "PatchExpand",
           "FinalPatchExpand_X4", "BasicLayer", "BasicLayer_up", "MASK_VALUE"]

# Added to the attention logits of pairs that must not attend (the Swin code's value; exp(-100) ~ 4e-44).
MASK_VALUE = -100.0


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/ws * W/ws, ws, ws, C); windows in row-major order, batch outermost."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, ws, ws, C) -> (B, H, W, C)."""
    B = windows.shape[0] // ((H // window_size) * (W // window_size))
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, -1)


def relative_position_index(window_size: int) -> torch.Tensor:
    """(N, N) long, N = ws*ws: row of the bias table for the query/key pair (p, q) of one window.

    With token p at (hp, wp) and q at (hq, wq) (row-major inside the window), the index is
    ``(hp - hq + ws - 1) * (2*ws - 1) + (wp - wq + ws - 1)``, in ``[0, (2*ws - 1)**2)``.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)                                   # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]) + (window_size - 1)   # (2, N, N), each in [0, 2ws-2]
    return rel[0] * (2 * window_size - 1) + rel[1]


def shifted_window_mask(H: int, W: int, window_size: int, shift_size: int) -> Optional[torch.Tensor]:
    """Additive attention mask (nW, N, N) for shifted windows, or None when ``shift_size == 0``.

    After the cyclic shift by ``-shift_size``, the last row/column band of windows holds tokens that were not
    neighbours in the image. Each token gets a region label (3 bands along H x 3 along W: ``[0, H-ws)``,
    ``[H-ws, H-shift)``, ``[H-shift, H)``); a pair inside one window may attend only when the labels match. Entry
    is 0 for allowed pairs and :data:`MASK_VALUE` otherwise.
    """
    if shift_size == 0:
        return None
    if not 0 < shift_size < window_size:
        raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}")

    def bands(n):
        lab = torch.zeros(n, dtype=torch.long)
        lab[n - window_size:n - shift_size] = 1
        lab[n - shift_size:] = 2
        return lab

    region = (bands(H)[:, None] * 3 + bands(W)[None, :]).float()          # (H, W)
    win = window_partition(region[None, :, :, None], window_size).flatten(1)   # (nW, N)
    allowed = win[:, :, None] == win[:, None, :]
    return torch.zeros(allowed.shape).masked_fill(~allowed, MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows, with a learned relative position bias.

    Args:
        dim: token channels.
        window_size: window side ``ws`` (square windows, N = ws*ws tokens).
        num_heads: attention heads (must divide ``dim``).
        qkv_bias: bias in the qkv projection. Default True.
        qk_scale: override of the 1/sqrt(head_dim) scale. Default None.
        attn_drop, proj_drop: dropout rates. Default 0.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"WindowAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.softmax = nn.Softmax(dim=-1)

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, N, N) bias added to the attention logits."""
        N = self.window_size ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(N, N, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B * nW, N, C); mask: (nW, N, N) additive or None. Returns (B * nW, N, C)."""
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.relative_position_bias().unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask[None, :, None].to(attn.dtype)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(self.softmax(attn))
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


class SwinTransformerBlock(nn.Module):
    """Swin block: ``x + DropPath(W-MSA/SW-MSA(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``.

    As in Swin, when the feature map is no larger than the window the window shrinks to the map and the shift is
    dropped (one window covers everything).

    Args:
        dim: token channels.
        input_resolution: (H, W) of the token grid.
        num_heads: attention heads.
        window_size: window side. Default 7.
        shift_size: cyclic shift (0 for W-MSA, ``window_size // 2`` for SW-MSA). Default 0.
        mlp_ratio: MLP hidden width / dim. Default 4.
        qkv_bias, qk_scale, drop, attn_drop, drop_path: as in :class:`WindowAttention` / stochastic depth.
        norm_layer: Default ``nn.LayerNorm``.
    """

    def __init__(self, dim: int, input_resolution: Tuple[int, int], num_heads: int, window_size: int = 7,
                 shift_size: int = 0, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim, self.input_resolution, self.num_heads = dim, tuple(input_resolution), num_heads
        self.window_size, self.shift_size, self.mlp_ratio = window_size, shift_size, mlp_ratio
        H, W = self.input_resolution
        if min(H, W) <= self.window_size:
            self.shift_size, self.window_size = 0, min(H, W)
        if H % self.window_size or W % self.window_size:
            raise ValueError(f"SwinTransformerBlock: token grid {H}x{W} is not divisible by window size "
                             f"{self.window_size}")
        if not 0 <= self.shift_size < self.window_size:
            raise ValueError(f"shift_size must be in [0, window_size={self.window_size}), got {self.shift_size}")
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.register_buffer("attn_mask", shifted_window_mask(H, W, self.window_size, self.shift_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.input_resolution
        B, L, C = x.shape
        if L != H * W:
            raise ValueError(f"SwinTransformerBlock: expected {H}*{W}={H * W} tokens, got {L}")
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        if self.shift_size:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        windows = window_partition(x, self.window_size).reshape(-1, self.window_size ** 2, C)
        windows = self.attn(windows, mask=self.attn_mask)
        x = window_reverse(windows.view(-1, self.window_size, self.window_size, C), self.window_size, H, W)
        if self.shift_size:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(B, H * W, C))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, input_resolution={self.input_resolution}, num_heads={self.num_heads}, "
                f"window_size={self.window_size}, shift_size={self.shift_size}, mlp_ratio={self.mlp_ratio}")


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` x ``patch_size`` patches -> tokens: Conv2d(k=s=patch) then LayerNorm.
    (B, C_in, H, W) -> (B, H/p * W/p, embed_dim)."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, norm_layer=nn.LayerNorm):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class PatchMerging(nn.Module):
    """2x downsampling: concatenate each 2x2 neighbourhood (order (0,0), (1,0), (0,1), (1,1)) -> LN(4C) ->
    Linear(4C -> 2C, no bias). (B, H*W, C) -> (B, H/2*W/2, 2C)."""

    def __init__(self, input_resolution: Tuple[int, int], dim: int, norm_layer=nn.LayerNorm):
        super().__init__()
        self.input_resolution, self.dim = tuple(input_resolution), dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.input_resolution
        B, L, C = x.shape
        x = x.view(B, H, W, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


def _pixel_unshuffle_tokens(x: torch.Tensor, H: int, W: int, scale: int) -> torch.Tensor:
    """(B, H*W, s*s*c) with channels ordered (p1, p2, c) -> (B, sH*sW, c): token (h, w)'s chunk (p1, p2) goes to
    pixel (h*s + p1, w*s + p2)."""
    B, L, C = x.shape
    x = pixel_shuffle_channels_last(x.view(B, H, W, C), scale)
    return x.reshape(B, H * scale * W * scale, x.shape[-1])


class PatchExpand(nn.Module):
    """2x upsampling (Swin-Unet): Linear(C -> 2C, no bias), rearrange each token's 2C channels into a 2x2 block of
    C/2 channels, LN(C/2). (B, H*W, C) -> (B, 2H*2W, C/2). ``dim_scale=1`` skips the linear and the rearrange."""

    def __init__(self, input_resolution: Tuple[int, int], dim: int, dim_scale: int = 2, norm_layer=nn.LayerNorm):
        super().__init__()
        self.input_resolution, self.dim, self.dim_scale = tuple(input_resolution), dim, dim_scale
        self.expand = nn.Linear(dim, 2 * dim, bias=False) if dim_scale == 2 else nn.Identity()
        self.norm = norm_layer(dim // dim_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.input_resolution
        x = self.expand(x)
        if self.dim_scale == 2:
            x = _pixel_unshuffle_tokens(x, H, W, 2)
        return self.norm(x)


class FinalPatchExpand_X4(nn.Module):
    """4x upsampling before the head (Swin-Unet): Linear(C -> 16C, no bias), rearrange into 4x4 blocks of C
    channels, LN(C). (B, H*W, C) -> (B, 4H*4W, C)."""

    def __init__(self, input_resolution: Tuple[int, int], dim: int, dim_scale: int = 4, norm_layer=nn.LayerNorm):
        super().__init__()
        self.input_resolution, self.dim, self.dim_scale = tuple(input_resolution), dim, dim_scale
        self.expand = nn.Linear(dim, dim_scale * dim_scale * dim, bias=False)
        self.output_dim = dim
        self.norm = norm_layer(self.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.input_resolution
        return self.norm(_pixel_unshuffle_tokens(self.expand(x), H, W, self.dim_scale))


def _blocks(dim, input_resolution, depth, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop,
            drop_path, norm_layer):
    dp = list(drop_path) if isinstance(drop_path, Sequence) else [drop_path] * depth
    return nn.ModuleList([
        SwinTransformerBlock(dim, input_resolution, num_heads, window_size,
                             0 if i % 2 == 0 else window_size // 2, mlp_ratio, qkv_bias, qk_scale, drop,
                             attn_drop, dp[i], norm_layer)
        for i in range(depth)])


class BasicLayer(nn.Module):
    """Encoder stage: ``depth`` Swin blocks (alternating W-MSA / SW-MSA), then optional ``downsample``."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio=4.0, qkv_bias=True,
                 qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm, downsample=None):
        super().__init__()
        self.dim, self.input_resolution, self.depth = dim, tuple(input_resolution), depth
        self.blocks = _blocks(dim, input_resolution, depth, num_heads, window_size, mlp_ratio, qkv_bias,
                              qk_scale, drop, attn_drop, drop_path, norm_layer)
        self.downsample = downsample(input_resolution, dim=dim, norm_layer=norm_layer) if downsample else None

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class BasicLayer_up(nn.Module):
    """Decoder stage (Swin-Unet): ``depth`` Swin blocks, then optional 2x ``PatchExpand``."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio=4.0, qkv_bias=True,
                 qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm, upsample=None):
        super().__init__()
        self.dim, self.input_resolution, self.depth = dim, tuple(input_resolution), depth
        self.blocks = _blocks(dim, input_resolution, depth, num_heads, window_size, mlp_ratio, qkv_bias,
                              qk_scale, drop, attn_drop, drop_path, norm_layer)
        self.upsample = (upsample(input_resolution, dim=dim, dim_scale=2, norm_layer=norm_layer)
                         if upsample else None)

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.upsample(x) if self.upsample is not None else x
