"""LightM-UNet (2-D and 3-D): a lightweight U-Net whose encoder is built of Mamba layers (residual "ResMambaBlocks").

Paper: W. Liao, Y. Zhu, X. Wang, C. Pan, Y. Wang, L. Ma, "LightM-UNet: Mamba Assists in Lightweight UNet for
Medical Image Segmentation", arXiv:2403.05246 (2024). Upstream: https://github.com/MrBlankness/LightM-UNet (commit
6b72e27, ``lightm-unet/nnunetv2/nets/LightMUNet.py``, trainer ``nnUNetTrainerLightMUNet``), described in
``upstream_mamba1_models.md`` §5; re-written here in our own code (no MONAI) on :class:`mambaseg.models.blocks.mamba1.Mamba`.
Module names equal upstream's, including the ``.conv`` level MONAI's ``Convolution`` adds (``convInit.0.conv``,
``up_samples.i.0.conv``, ``conv_final.2.j.conv``), so an upstream state dict loads with ``strict=True``.

Architecture (built as the trainer does: init_filters 32, blocks_down [1, 2, 2, 4], blocks_up [1, 1, 1],
GroupNorm(8), ReLU): ``convInit`` depthwise-separable 3x3 (in -> 32, no bias) -> ``down_layers[i]`` =
[Identity (i = 0) or MambaLayer(16*2^i -> 32*2^i) + MaxPool 2, then blocks_down[i] x ResMambaBlock] ->
``up_samples[i]`` = 1x1 conv (C -> C/2, no bias) + bilinear x2 -> ``+ skip`` (added, not concatenated) ->
``up_layers[i]`` = ResUpBlock -> ``conv_final`` = GroupNorm, ReLU, depthwise-separable 1x1 (32 -> classes, bias).
PyTorch default init (upstream applies none). Returns logits. Input H, W divisible by 8.

Upstream quirks, all kept:

* ``MambaLayer`` applies the SAME LayerNorm twice: ``proj(norm(mamba(norm(t)) + skip_scale * t))``, the
  residual on the raw tokens.
* The down-sampling MambaLayer runs at the pre-pool resolution (65,536 tokens at stage 1 for a 256 input).
* ``convInit``/``conv_final`` are depthwise-separable with the stride on both convs; the ReLU module of
  ``conv_final`` is the top-level ``act_mod`` (one module used in two places).
* The paper's 1.09 M parameters are not what the code builds: 5.01 M (in 3, 2 classes), as upstream issue #30.

3-D (``spatial_dims=3``, registered as ``lightm_unet_3d``; ``upstream_3d_models.md`` §4): upstream's own class with
``spatial_dims = len(patch_size) = 3``, so only the op types change: Conv3d (depthwise 3^3), MaxPool3d(2),
trilinear x2 upsampling (align_corners False), Mamba tokens = the D*H*W voxels in row-major order. Mamba, LayerNorm,
Linear and GroupNorm are dimension-free, so the encoder has the same parameters as in 2-D. Input edges divisible
by 8; (1 -> 3, LiTS): 5,015,766 parameters, as upstream.

Differences, each deliberate: the Mamba layers run in float32 under any autocast (upstream: only an fp16 -> fp32
cast, no autocast guard); input sizes not divisible by 8 raise a ValueError; ``dropout_prob`` is not offered
(the trainer never sets it).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn

from ..backbone import BackboneMixin
from ..blocks.mamba1 import Mamba
from ..blocks.nnunet_blocks import check_input_nd, check_spatial_dims, conv_nd, max_pool_nd
from ..registry import register_model
from ..blocks.umamba import mamba_fp32

__all__ = ["LightMUNet", "LightMMambaLayer", "ResMambaBlock", "ResUpBlock"]


class _Conv(nn.Module):
    """MONAI ``Convolution(conv_only=True)``: a conv wrapped as ``.conv`` (same padding)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 bias: bool = False, spatial_dims: int = 2):
        super().__init__()
        self.conv = conv_nd(spatial_dims)(in_ch, out_ch, kernel_size, stride, padding=(kernel_size - 1) // 2,
                                          groups=groups, bias=bias)

    def forward(self, x):
        return self.conv(x)


def dwconv(in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, bias: bool = False,
           spatial_dims: int = 2) -> nn.Sequential:
    """``get_dwconv_layer``: depthwise k x k (in -> in) then pointwise 1x1 (in -> out), both with the stride."""
    return nn.Sequential(_Conv(in_ch, in_ch, kernel_size, stride, groups=in_ch, bias=bias, spatial_dims=spatial_dims),
                         _Conv(in_ch, out_ch, 1, stride, bias=bias, spatial_dims=spatial_dims))


class LightMMambaLayer(nn.Module):
    """LightM-UNet ``MambaLayer``: tokens t (B, H*W, C_in) (3-D: D*H*W) row-major; ``proj(norm(mamba(norm(t)) +
    skip_scale * t))`` with ONE LayerNorm used twice; (B, C_out, H, W) out."""

    def __init__(self, input_dim: int, output_dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.input_dim, self.output_dim = input_dim, output_dim
        self.norm = nn.LayerNorm(input_dim)
        self.mamba = Mamba(d_model=input_dim, d_state=d_state, d_conv=d_conv, expand=expand)
        self.proj = nn.Linear(input_dim, output_dim)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        t = x.reshape(b, c, -1).transpose(1, 2)
        y = self.mamba(self.norm(t)) + self.skip_scale * t
        y = self.proj(self.norm(y))
        return y.transpose(1, 2).reshape((b, self.output_dim) + tuple(x.shape[2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mamba_fp32(x, self._run)


class ResMambaBlock(nn.Module):
    """Pre-activation residual block of two Mamba layers: ``conv2(act(norm2(conv1(act(norm1(x)))))) + x``."""

    def __init__(self, channels: int, num_groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, channels)
        self.norm2 = nn.GroupNorm(num_groups, channels)
        self.act = nn.ReLU(inplace=True)
        self.conv1 = LightMMambaLayer(channels, channels)
        self.conv2 = LightMMambaLayer(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.act(self.norm1(x)))
        return self.conv2(self.act(self.norm2(y))) + x


class ResUpBlock(nn.Module):
    """``act(norm2(conv(act(norm1(x))) + skip_scale * x))`` with a depthwise-separable 3x3 conv (no bias)."""

    def __init__(self, channels: int, num_groups: int = 8, spatial_dims: int = 2):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, channels)
        self.norm2 = nn.GroupNorm(num_groups, channels)
        self.act = nn.ReLU(inplace=True)
        self.conv = dwconv(channels, channels, 3, spatial_dims=spatial_dims)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.act(self.norm1(x))) + self.skip_scale * x
        return self.act(self.norm2(y))


class LightMUNet(BackboneMixin, nn.Module):
    """LightM-UNet (Liao et al., 2024, arXiv:2403.05246). Input (B, in_channels, H, W) or, with
    ``spatial_dims=3``, (B, in_channels, D, H, W), every axis divisible by 8; output logits of the input's size.

    Args:
        in_channels: image channels. Default 3.
        num_classes: output channels (upstream ``out_channels`` = segmentation heads incl. background). Default 1.
        init_filters: width of the first stage. Default 32.
        blocks_down: ResMambaBlocks per encoder stage. Default [1, 2, 2, 4].
        blocks_up: ResUpBlocks per decoder stage. Default [1, 1, 1].
        num_groups: GroupNorm groups. Default 8.
        spatial_dims: 2 (default) or 3 (upstream builds it with ``spatial_dims = len(patch_size)``).
    """

    #: modules the encoder uses (``create_model(..., features_only=True)`` keeps only these)
    encoder_modules = ("convInit", "down_layers")

    default_input_size = 256

    def __init__(self, in_channels: int = 3, num_classes: int = 1, init_filters: int = 32,
                 blocks_down: Sequence[int] = (1, 2, 2, 4), blocks_up: Sequence[int] = (1, 1, 1),
                 num_groups: int = 8, spatial_dims: int = 2):
        super().__init__()
        sd = self.spatial_dims = check_spatial_dims(spatial_dims)
        if sd == 3:
            self.default_input_size = (128, 128, 128)
        if len(blocks_up) != len(blocks_down) - 1:
            raise ValueError(f"LightM-UNet: blocks_up needs len(blocks_down) - 1 = {len(blocks_down) - 1} entries, "
                             f"got {list(blocks_up)}")
        self.in_channels, self.num_classes, self.init_filters = in_channels, num_classes, init_filters
        self.blocks_down, self.blocks_up = list(blocks_down), list(blocks_up)
        self.act_mod = nn.ReLU(inplace=True)
        f = init_filters
        self.convInit = dwconv(in_channels, f, 3, spatial_dims=sd)
        downs = []
        for i, n in enumerate(self.blocks_down):
            c = f * 2 ** i
            pre = nn.Identity() if i == 0 else nn.Sequential(LightMMambaLayer(c // 2, c), max_pool_nd(sd)(2))
            downs.append(nn.Sequential(pre, *[ResMambaBlock(c, num_groups) for _ in range(n)]))
        self.down_layers = nn.ModuleList(downs)
        n_up = len(self.blocks_up)
        ups, samples = [], []
        for i in range(n_up):
            c = f * 2 ** (n_up - i)
            ups.append(nn.Sequential(*[ResUpBlock(c // 2, num_groups, sd) for _ in range(self.blocks_up[i])]))
            samples.append(nn.Sequential(_Conv(c, c // 2, 1, spatial_dims=sd),
                                         nn.Upsample(scale_factor=2, mode="bilinear" if sd == 2 else "trilinear",
                                                     align_corners=False)))
        self.up_layers = nn.ModuleList(ups)
        self.up_samples = nn.ModuleList(samples)
        self.conv_final = nn.Sequential(nn.GroupNorm(num_groups, f), self.act_mod,
                                        dwconv(f, num_classes, 1, bias=True, spatial_dims=sd))
        self.divisor = self.downsample_factor = 2 ** (len(self.blocks_down) - 1)
        self.feature_info = [dict(num_chs=f * 2 ** i, reduction=2 ** i, module=f"down_layers.{i}")
                             for i in range(len(self.blocks_down))]

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Output of every ``down_layers`` stage (widths 32, 64, 128, 256 at strides 1, 2, 4, 8)."""
        check_input_nd(x, self.in_channels, self.divisor, "LightM-UNet", self.spatial_dims)
        x = self.convInit(x)
        feats = []
        for down in self.down_layers:
            x = down(x)
            feats.append(x)
        return feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.forward_intermediates(x)
        x = feats[-1]
        for i, (up, layer) in enumerate(zip(self.up_samples, self.up_layers)):
            x = layer(up(x) + feats[-(i + 2)])
        return self.conv_final(x)


@register_model("lightm_unet", paper="LightM-UNet (Liao et al., 2024, arXiv:2403.05246)", default_size=256)
def lightm_unet(in_channels: int = 3, num_classes: int = 1, **kwargs) -> LightMUNet:
    """LightM-UNet 2-D as its nnU-Net trainer builds it (32 filters, blocks [1,2,2,4] / [1,1,1]), 5.01 M params."""
    return LightMUNet(in_channels=in_channels, num_classes=num_classes, **kwargs)


@register_model("lightm_unet_3d", paper="LightM-UNet (Liao et al., 2024, arXiv:2403.05246)", default_size=128,
                spatial_dims=3)
def lightm_unet_3d(in_channels: int = 1, num_classes: int = 3, **kwargs) -> LightMUNet:
    """LightM-UNet 3-D as its nnU-Net trainer builds it for 3-D patches (32 filters, blocks [1,2,2,4] / [1,1,1]);
    5.02 M params (1 -> 3)."""
    return LightMUNet(in_channels=in_channels, num_classes=num_classes, **_three_d(kwargs))


def _three_d(kwargs: dict) -> dict:
    if kwargs.get("spatial_dims", 3) != 3:
        raise ValueError("lightm_unet_3d is a 3-D network (spatial_dims=3); use lightm_unet for 2-D")
    return {**kwargs, "spatial_dims": 3}
