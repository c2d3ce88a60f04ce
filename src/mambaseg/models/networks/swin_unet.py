"""Swin-UNet baseline.

Paper: H. Cao, Y. Wang, J. Chen, D. Jiang, X. Zhang, Q. Tian, M. Wang, "Swin-Unet: Unet-like Pure Transformer for
Medical Image Segmentation", ECCV Workshops 2022, https://arxiv.org/abs/2105.05537. Written for mambaseg from the
paper; module and parameter names follow HuCaoFighting/Swin-Unet (``patch_embed``, ``layers``, ``layers_up``,
``concat_back_dim``, ``norm``, ``norm_up``, ``up``, ``output``, ``layers.{i}.blocks.{j}.attn.
relative_position_bias_table`` ...). The configuration is the one Mamba-UNet compares against: Swin-T width
(``embed_dim`` 96, heads 3/6/12/24), depths [2, 2, 2, 2] in the encoder, the bottleneck-to-top decoder reusing them
in reverse, window 7 at 224x224, patch 4.

Architecture (C = embed_dim, input H x W, tokens at H/4):
  * encoder: ``patch_embed`` (Conv 4x4/4 + LN) -> ``layers[i]`` = Swin blocks at width C*2**i, then
    ``PatchMerging`` (not after the last); ``norm`` = LN(8C) on the H/32 bottleneck;
  * decoder: ``layers_up[0]`` = ``PatchExpand`` (8C -> 4C, 2x); for i = 1..3: concatenate the encoder stage
    input at that resolution, ``concat_back_dim[i]`` Linear(2c -> c), Swin blocks, ``PatchExpand`` (i < 3);
    ``norm_up`` = LN(C);
  * head: ``up`` = ``FinalPatchExpand_X4`` (4x) then ``output`` = Conv1x1(C -> num_classes, no bias): logits.

Resolution: the relative position tables and shift masks depend on the token grid, so ``img_size`` is fixed at
construction and a forward pass at another size raises a ValueError. Window size: ``window_size=None`` (default)
picks 7 when every stage grid is a multiple of 7 or at most 7 (224: 56/28/14/7) and otherwise 8 when that works
(**256: 64/32/16/8 -> window 8**, 15x15 bias tables instead of 13x13, so a 256 model has slightly more
parameters and cannot load 224 tables without interpolation); any other size raises a ValueError naming sizes
that work. An explicit ``window_size`` is checked the same way. As in Swin, a stage whose grid is no larger than
the window uses one window of the grid's size and no shift (the 7x7 bottleneck at 224).

Deviations from the upstream code: ``in_channels`` feeds the patch embedding directly (upstream repeats a
1-channel input to 3 channels and always embeds 3); ``drop_path_rate`` 0.1 as in its default config; no
absolute position embedding (upstream ``ape=False``); the unused ``depths_decoder`` argument is dropped (upstream
builds the decoder from ``depths`` too).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..blocks.layers import check_input_size, init_linear_and_norms
from ..backbone import BackboneMixin, vss_stage_maps
from ..registry import register_model
from ..blocks.swin_blocks import BasicLayer, BasicLayer_up, FinalPatchExpand_X4, PatchEmbed, PatchExpand, PatchMerging

__all__ = ["SwinUNet", "resolve_window_size"]

_AUTO_WINDOWS = (7, 8)


def _to_2tuple(v) -> Tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"swin_unet: img_size must be an int or (H, W), got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _window_fits(grids: Sequence[int], w: int) -> bool:
    return all(g <= w or g % w == 0 for g in grids)


def resolve_window_size(img_size, patch_size: int = 4, num_layers: int = 4,
                        window_size: Optional[int] = None) -> int:
    """The window side for ``img_size``: ``window_size`` if given and valid, else 7 or 8 (see module docstring).
    Raises ValueError with sizes that work otherwise."""
    H, W = _to_2tuple(img_size)
    mult = patch_size * 2 ** (num_layers - 1)
    if H % mult or W % mult or H < mult or W < mult:
        raise ValueError(f"swin_unet: img_size {H}x{W} must be a positive multiple of {mult} (patch {patch_size} "
                         f"x {num_layers - 1} patch mergings); use e.g. img_size=224 (window 7) or 256 (window 8)")
    grids = [s // patch_size // 2 ** i for s in (H, W) for i in range(num_layers)]
    if window_size is not None:
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f"swin_unet: window_size must be a positive integer, got {window_size!r}")
        if not _window_fits(grids, window_size):
            ok = [w for w in range(2, 17) if _window_fits(grids, w)]
            raise ValueError(f"swin_unet: window_size {window_size} does not tile the token grids "
                             f"{sorted(set(grids), reverse=True)} of img_size {H}x{W}; use window_size in {ok} "
                             f"(or leave it None to choose automatically), or img_size=224 for window 7")
        return window_size
    for w in _AUTO_WINDOWS:
        if _window_fits(grids, w):
            return w
    raise ValueError(f"swin_unet: no window of size 7 or 8 tiles the token grids {sorted(set(grids), reverse=True)} "
                     f"of img_size {H}x{W}; use img_size=224 (window 7) or 256 (window 8), or pass window_size "
                     f"explicitly")


class SwinUNet(BackboneMixin, nn.Module):
    """Swin-Unet (Cao et al., 2022), the configuration Mamba-UNet compares against.

    Input (B, in_channels, img_size, img_size); output: logits (B, num_classes, img_size, img_size).

    Args:
        in_channels: input image channels. Default 3.
        num_classes: output channels. Default 1.
        img_size: input side (int) or (H, W); fixed at construction. Default 224.
        patch_size: patch embedding stride. Default 4.
        embed_dim: width C of the first stage (stage i has C*2**i). Default 96.
        depths: Swin blocks per encoder stage (the decoder mirrors them). Default (2, 2, 2, 2).
        num_heads: heads per stage (must divide the stage width). Default (3, 6, 12, 24).
        window_size: window side; None picks 7 or 8 from ``img_size`` (7 at 224, 8 at 256). Default None.
        mlp_ratio: MLP hidden / width. Default 4.
        qkv_bias: Default True. qk_scale: Default None (1/sqrt(head_dim)).
        drop_rate, attn_drop_rate: dropout. Default 0.
        drop_path_rate: stochastic depth, linearly increasing over encoder blocks. Default 0.1.
        patch_norm: LayerNorm after the patch embedding. Default True.
    """

    default_input_size = 224  # the constructor's img_size default

    @property
    def fixed_input_size(self) -> Tuple[int, int]:
        """The position tables and shift masks are built for ``img_size``: the only size this network takes."""
        return self.img_size

    def __init__(self, in_channels: int = 3, num_classes: int = 1, img_size: Union[int, Tuple[int, int]] = 224,
                 patch_size: int = 4, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 2, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: Optional[int] = None,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 patch_norm: bool = True, norm_layer=nn.LayerNorm):
        super().__init__()
        depths, num_heads = list(depths), list(num_heads)
        if len(depths) != len(num_heads) or len(depths) < 2:
            raise ValueError(f"swin_unet: depths {depths} and num_heads {num_heads} must have the same length >= 2")
        self.num_layers = nl = len(depths)
        for i, h in enumerate(num_heads):
            if (embed_dim * 2 ** i) % h:
                raise ValueError(f"swin_unet: stage {i} width {embed_dim * 2 ** i} (embed_dim={embed_dim} * 2**{i}) "
                                 f"is not divisible by num_heads[{i}]={h}; pick embed_dim a multiple of "
                                 f"{num_heads[0]} (e.g. 96)")
        self.img_size = _to_2tuple(img_size)
        self.window_size = resolve_window_size(self.img_size, patch_size, nl, window_size)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.patch_size, self.embed_dim = patch_size, embed_dim
        self.num_features = embed_dim * 2 ** (nl - 1)
        self.downsample_factor = patch_size * 2 ** (nl - 1)
        grid = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        res = [(grid[0] // 2 ** i, grid[1] // 2 ** i) for i in range(nl)]

        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim, norm_layer if patch_norm else None)
        self.pos_drop = nn.Dropout(p=drop_rate)
        n_blocks = sum(depths)       # linspace(0, rate, n) in plain Python (works under torch.device('meta'))
        dpr = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        common = dict(window_size=self.window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                      drop=drop_rate, attn_drop=attn_drop_rate, norm_layer=norm_layer)

        self.layers = nn.ModuleList([
            BasicLayer(embed_dim * 2 ** i, res[i], depths[i], num_heads[i],
                       drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                       downsample=PatchMerging if i < nl - 1 else None, **common)
            for i in range(nl)])

        self.layers_up, self.concat_back_dim = nn.ModuleList(), nn.ModuleList()
        for i in range(nl):
            s = nl - 1 - i                      # the encoder stage this decoder stage mirrors
            dim = embed_dim * 2 ** s
            self.concat_back_dim.append(nn.Linear(2 * dim, dim) if i > 0 else nn.Identity())
            if i == 0:
                self.layers_up.append(PatchExpand(res[s], dim, dim_scale=2, norm_layer=norm_layer))
            else:
                self.layers_up.append(BasicLayer_up(
                    dim, res[s], depths[s], num_heads[s], drop_path=dpr[sum(depths[:s]):sum(depths[:s + 1])],
                    upsample=PatchExpand if i < nl - 1 else None, **common))

        self.norm = norm_layer(self.num_features)
        self.norm_up = norm_layer(embed_dim)
        self.up = FinalPatchExpand_X4(res[0], embed_dim, dim_scale=patch_size, norm_layer=norm_layer)
        self.output = nn.Conv2d(embed_dim, num_classes, kernel_size=1, bias=False)
        # Backbone: stage outputs after the Swin blocks, before PatchMerging (the last one before ``norm``).
        self.feature_info = [dict(num_chs=embed_dim * 2 ** i, reduction=patch_size * 2 ** i,
                                  module=f"layers.{i}.blocks.{depths[i] - 1}") for i in range(nl)]
        self.encoder_modules = ("patch_embed", "pos_drop", "layers")
        self.apply(init_linear_and_norms)

    def _check_input(self, x: torch.Tensor) -> None:
        check_input_size(x, self.in_channels, self.downsample_factor, "swin_unet")
        if tuple(x.shape[-2:]) != self.img_size:
            h, w = x.shape[-2:]
            raise ValueError(f"swin_unet: this model was built for img_size {self.img_size[0]}x{self.img_size[1]} "
                             f"(its relative position tables and shift masks depend on it) but got a {h}x{w} "
                             f"input; resize the input, or build the model with img_size={h if h == w else (h, w)}")

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The encoder stage maps (B, C_i, H/r_i, W/r_i), channels-first (see ``feature_info``)."""
        self._check_input(x)
        grid = (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)
        return vss_stage_maps(self, x, tokens_hw=grid)

    def _encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Bottleneck tokens (B, H/32 * W/32, 8C) after ``norm``, and the input of each encoder stage (skips)."""
        x = self.pos_drop(self.patch_embed(x))
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        return self.norm(x), skips

    def forward_up_features(self, x: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        for i, layer_up in enumerate(self.layers_up):
            if i > 0:
                x = self.concat_back_dim[i](torch.cat([x, skips[self.num_layers - 1 - i]], -1))
            x = layer_up(x)
        return self.norm_up(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        B = x.shape[0]
        x, skips = self._encode(x)
        x = self.up(self.forward_up_features(x, skips))          # (B, H*W, C)
        H, W = self.img_size
        return self.output(x.view(B, H, W, -1).permute(0, 3, 1, 2))


@register_model("swin_unet", paper="Swin-Unet (Cao et al., ECCV Workshops 2022)",
                family="baseline")
def swin_unet(in_channels: int = 3, num_classes: int = 1, img_size=224, **kwargs) -> SwinUNet:
    """Swin-UNet baseline: Swin-T width (embed_dim 96), depths [2,2,2,2], window 7 at 224 (8 at 256)."""
    return SwinUNet(in_channels=in_channels, num_classes=num_classes, img_size=img_size, **kwargs)
