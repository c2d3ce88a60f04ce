"""VM-UNet: Vision Mamba UNet for medical image segmentation.

Paper: J. Ruan, S. Xiang, "VM-UNet: Vision Mamba UNet for Medical Image Segmentation", arXiv:2402.02491 (2024).
Upstream code: https://github.com/JCruan519/VM-UNet (``models/vmunet/{vmamba,vmunet}.py``), re-written here
in our own code on the shared VMamba v0 blocks of :mod:`mambaseg.models.blocks.vss`. Module and parameter names equal
upstream's (the network sits in ``.vmunet``), so an upstream VM-UNet ``state_dict`` loads with ``strict=True``.

Architecture (``VSSM`` in upstream): patch embedding (4x4, 96 channels) -> 4 encoder stages of VSS blocks, each
followed by PatchMerging2D except the last (96@H/4 -> 192@H/8 -> 384@H/16 -> 768@H/32) -> decoder stages
``layers_up`` (stage 0: VSS blocks at 768; stages 1-3: ``x + skip`` (additive skip, before upsampling), then
PatchExpand2D, then VSS blocks at 384/192/96) -> ``final_up`` (Linear 96->384, 4x4 pixel shuffle to 24
channels, LayerNorm) -> ``final_conv`` (1x1, 24 -> num_classes). Stochastic depth: linspace(0, 0.2) over the
encoder blocks, and a reversed linspace over the decoder blocks.

Differences from upstream, each deliberate:

* Returns **logits**. Upstream returns ``sigmoid(logits)`` when ``num_classes == 1``; losses and metrics in
  mambaseg take logits.
* Default depths are the paper's configuration (``depths=[2, 2, 2, 2]``, ``depths_decoder=[2, 2, 2, 1]``,
  27,427,561 parameters at 3 input channels and 1 class), which every upstream config file sets; upstream's
  class defaults ([2, 2, 9, 2] / [2, 9, 2, 2], 44,273,833 parameters) are available through the kwargs.
* Quirk kept: a 1-channel input fed to a 3-channel model is repeated to 3 channels inside ``forward``
  (``gray_to_rgb=True``, as upstream); ``gray_to_rgb=False`` turns that off. Unlike upstream,
  ``in_channels=1`` builds a real 1-channel patch embedding (upstream would crash after the repeat).
* Quirk kept: the skip of the patch embedding (H/4) is computed but never used (upstream's ``skip_list[0]``).
* Input sizes not divisible by 32 raise a ValueError instead of failing deep inside.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..pretrained import register_pretrained_loader
from ..pretrained_vmamba import load_vmamba_into_vmunet
from ..backbone import BackboneMixin, vss_stage_maps
from ..registry import register_model
from ..blocks.vss import (FinalPatchExpand2D, PatchExpand2D, VSSEncoder, VSSLayerUp, _check_depths, init_vss_weights,
                  prepare_input, stage_drop_path_rates)

__all__ = ["VMUNet", "VMUNetVSSM"]


class VMUNetVSSM(VSSEncoder):
    """Upstream's VM-UNet ``VSSM``: encoder (``patch_embed``, ``layers``) + decoder (``layers_up``,
    ``final_up``, ``final_conv``). Input (B, C, H, W) -> logits (B, num_classes, H, W)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, depths: Sequence[int] = (2, 2, 2, 2),
                 depths_decoder: Sequence[int] = (2, 2, 2, 1), embed_dim: int = 96, d_state: int = 16,
                 drop_path_rate: float = 0.2):
        super().__init__(in_channels, depths, embed_dim, d_state, drop_path_rate)
        depths_decoder = _check_depths(depths_decoder, what="depths_decoder")
        self.depths_decoder = depths_decoder
        dims_dec = self.dims[::-1]                                   # 768, 384, 192, 96
        # Upstream: linspace over the decoder blocks, reversed (deepest decoder stage gets the largest rates).
        flat = [r for stage in stage_drop_path_rates(depths_decoder, drop_path_rate) for r in stage][::-1]
        rates, start = [], 0
        for d in depths_decoder:
            rates.append(flat[start:start + d])
            start += d
        self.layers_up = nn.ModuleList([
            VSSLayerUp(dims_dec[i], depths_decoder[i], rates[i], d_state,
                       upsample=PatchExpand2D(dims_dec[i]) if i > 0 else None, upsample_first=True)
            for i in range(len(dims_dec))])
        self.final_up = FinalPatchExpand2D(dims_dec[-1], dim_scale=4)
        self.final_conv = nn.Conv2d(dims_dec[-1] // 4, num_classes, kernel_size=1)
        self.apply(init_vss_weights)

    def forward_features_up(self, x: torch.Tensor, skips) -> torch.Tensor:
        for i, layer_up in enumerate(self.layers_up):
            x = layer_up(x if i == 0 else x + skips[-i])            # additive skip before the upsampling
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.forward_features(x)
        x = self.forward_features_up(x, skips)
        x = self.final_up(x).permute(0, 3, 1, 2)
        return self.final_conv(x)


class VMUNet(BackboneMixin, nn.Module):
    """VM-UNet (Ruan & Xiang, 2024, arXiv:2402.02491). Returns logits (B, num_classes, H, W).

    Args:
        in_channels: input channels. Default: 3.
        num_classes: output channels (logits; 1 for binary segmentation). Default: 1.
        depths: VSS blocks per encoder stage. Default: [2, 2, 2, 2] (paper config; upstream class default
            [2, 2, 9, 2]).
        depths_decoder: VSS blocks per decoder stage (768, 384, 192, 96 channels). Default: [2, 2, 2, 1]
            (paper config; upstream class default [2, 9, 2, 2]).
        drop_path_rate: maximum stochastic-depth rate. Default: 0.2.
        embed_dim: channels of the first stage (upstream: 96). Default: 96.
        d_state: SSM state size (upstream: 16). Default: 16.
        gray_to_rgb: repeat a 1-channel input to 3 channels when ``in_channels == 3`` (upstream quirk).
            Default: True.

    H and W must be divisible by 32.

    Backbone (:mod:`mambaseg.models.backbone`): ``feature_info`` / ``forward_intermediates`` are the four encoder
    stage outputs after their VSS blocks, before the PatchMerging2D (96@4, 192@8, 384@16, 768@32), VMamba's
    backbone convention; the deepest is the bottleneck the decoder starts from.
    """

    default_input_size = 256
    encoder_modules = ("vmunet.patch_embed", "vmunet.layers")

    downsample_factor = 32  # input H and W must be multiples of it (read by the engine's size check)

    def __init__(self, in_channels: int = 3, num_classes: int = 1, depths: Sequence[int] = (2, 2, 2, 2),
                 depths_decoder: Sequence[int] = (2, 2, 2, 1), drop_path_rate: float = 0.2, embed_dim: int = 96,
                 d_state: int = 16, gray_to_rgb: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.gray_to_rgb = gray_to_rgb
        self.vmunet = VMUNetVSSM(in_channels, num_classes, depths, depths_decoder, embed_dim, d_state,
                                 drop_path_rate)
        self.feature_info = [dict(num_chs=c, reduction=4 * 2 ** i, module=f"vmunet.layers.{i}.blocks.{d - 1}")
                             for i, (c, d) in enumerate(zip(self.vmunet.dims, self.vmunet.depths))]

    def forward_intermediates(self, x: torch.Tensor):
        """The four encoder stage maps (B, C_i, H/r_i, W/r_i), channels-first (see ``feature_info``)."""
        return vss_stage_maps(self.vmunet, prepare_input(x, self.in_channels, self.gray_to_rgb, 32, "VM-UNet"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = prepare_input(x, self.in_channels, self.gray_to_rgb, 32, "VM-UNet")
        return self.vmunet(x)


@register_model("vmunet", paper="VM-UNet (Ruan & Xiang, 2024, arXiv:2402.02491)")
def vmunet(in_channels: int = 3, num_classes: int = 1, **kwargs) -> VMUNet:
    """VM-UNet, paper config (encoder [2,2,2,2], decoder [2,2,2,1], VMamba v0 blocks), 256x256."""
    return VMUNet(in_channels=in_channels, num_classes=num_classes, **kwargs)


register_pretrained_loader(VMUNet)(load_vmamba_into_vmunet)
