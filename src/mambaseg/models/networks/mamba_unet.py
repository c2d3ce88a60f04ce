"""Mamba-UNet: a UNet-like pure Visual Mamba network with a Swin-UNet-style decoder.

Paper: Z. Wang, J.-Q. Zheng, Y. Zhang, G. Cui, L. Li, "Mamba-UNet: UNet-Like Pure Visual Mamba for Medical Image
Segmentation", arXiv:2402.05079 (2024). Upstream code: https://github.com/ziyangwang007/Mamba-UNet
(``code/networks/mamba_sys.py::VSSM`` wrapped by ``vision_mamba.py::MambaUnet``), re-written here in our own code
on the shared VMamba v0 blocks of :mod:`mambaseg.models.blocks.vss`. Module and parameter names equal upstream's (the
network sits in ``.mamba_unet``), so an upstream Mamba-UNet ``state_dict`` loads with ``strict=True``.

Architecture (VMamba-tiny widths 96/192/384/768, depth 2 everywhere by default): patch embedding -> 4 encoder
stages (VSS blocks, then PatchMerging2D except the last) -> ``norm`` LayerNorm(768) (bottleneck) -> decoder
``layers_up``: stage 0 = PatchExpand(768) only (-> 384@H/16); stages 1-3: ``concat([x, skip])`` at the
upsampled resolution -> ``concat_back_dim`` Linear(2c -> c) -> VSS blocks at c -> PatchExpand(c) (stages 1, 2)
-> ``norm_up`` LayerNorm(96) -> ``up`` (Linear 96 -> 1536, 4x4 pixel shuffle to 96, LayerNorm) -> ``output``
1x1 conv without bias. Decoder stage i re-uses the stochastic-depth rates of encoder stage 3 - i.

Differences from upstream:

* Quirk kept: a 1-channel input fed to a 3-channel model is repeated to 3 channels inside ``forward``
  (``gray_to_rgb=True``, as ``MambaUnet.forward``); ``gray_to_rgb=False`` turns that off, and
  ``in_channels=1`` builds a real 1-channel patch embedding.
* Upstream's wrapper takes a yacs config; here the numbers are plain arguments with the paper's values as
  defaults (``depths=[2, 2, 2, 2]``, ``drop_path_rate=0.2``). Output is logits, as upstream.
* Input sizes not divisible by 32 raise a ValueError.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..pretrained import register_pretrained_loader
from ..pretrained_vmamba import load_vmamba_into_mamba_unet
from ..backbone import BackboneMixin, vss_stage_maps
from ..registry import register_model
from ..blocks.vss import (FinalPatchExpandX4, PatchExpand, VSSEncoder, VSSLayerUp, init_vss_weights, prepare_input,
                  stage_drop_path_rates)

__all__ = ["MambaUNet", "MambaUNetVSSM"]


class MambaUNetVSSM(VSSEncoder):
    """Upstream's Mamba-UNet ``VSSM``: encoder (``patch_embed``, ``layers``, ``norm``) + decoder
    (``layers_up``, ``concat_back_dim``, ``norm_up``, ``up``, ``output``). (B, C, H, W) -> logits."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, depths: Sequence[int] = (2, 2, 2, 2),
                 embed_dim: int = 96, d_state: int = 16, drop_path_rate: float = 0.2):
        super().__init__(in_channels, depths, embed_dim, d_state, drop_path_rate)
        n = len(self.depths)
        rates = stage_drop_path_rates(self.depths, drop_path_rate)
        self.layers_up = nn.ModuleList()
        self.concat_back_dim = nn.ModuleList()
        for i in range(n):
            s = n - 1 - i                                            # mirrored encoder stage
            c = self.dims[s]
            self.concat_back_dim.append(nn.Linear(2 * c, c) if i > 0 else nn.Identity())
            if i == 0:
                self.layers_up.append(PatchExpand(c))
            else:
                self.layers_up.append(VSSLayerUp(c, self.depths[s], rates[s], d_state,
                                                 upsample=PatchExpand(c) if i < n - 1 else None,
                                                 upsample_first=False))
        self.norm = nn.LayerNorm(self.dims[-1])
        self.norm_up = nn.LayerNorm(embed_dim)
        self.up = FinalPatchExpandX4(embed_dim, dim_scale=4)
        self.output = nn.Conv2d(embed_dim, num_classes, kernel_size=1, bias=False)
        self.apply(init_vss_weights)

    def forward_up_features(self, x: torch.Tensor, skips) -> torch.Tensor:
        n = len(self.layers_up)
        for i, layer_up in enumerate(self.layers_up):
            if i > 0:
                x = self.concat_back_dim[i](torch.cat([x, skips[n - 1 - i]], dim=-1))
            x = layer_up(x)
        return self.norm_up(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.forward_features(x)
        x = self.forward_up_features(self.norm(x), skips)
        x = self.up(x).permute(0, 3, 1, 2)
        return self.output(x)


class MambaUNet(BackboneMixin, nn.Module):
    """Mamba-UNet (Wang et al., 2024, arXiv:2402.05079). Returns logits (B, num_classes, H, W).

    Args:
        in_channels: input channels. Default: 3 (upstream feeds 1-channel slices repeated to 3).
        num_classes: output channels (logits). Default: 1 (the paper's ACDC setting is 4).
        depths: VSS blocks per encoder stage; the decoder mirrors them. Default: [2, 2, 2, 2].
        drop_path_rate: maximum stochastic-depth rate. Default: 0.2.
        embed_dim: channels of the first stage. Default: 96.
        d_state: SSM state size. Default: 16.
        gray_to_rgb: repeat a 1-channel input to 3 channels when ``in_channels == 3`` (upstream quirk).
            Default: True.

    H and W must be divisible by 32 (the paper uses 224).
    """

    default_input_size = 224
    encoder_modules = ("mamba_unet.patch_embed", "mamba_unet.layers")

    downsample_factor = 32  # input H and W must be multiples of it (read by the engine's size check)

    def __init__(self, in_channels: int = 3, num_classes: int = 1, depths: Sequence[int] = (2, 2, 2, 2),
                 drop_path_rate: float = 0.2, embed_dim: int = 96, d_state: int = 16, gray_to_rgb: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.gray_to_rgb = gray_to_rgb
        self.mamba_unet = MambaUNetVSSM(in_channels, num_classes, depths, embed_dim, d_state, drop_path_rate)
        # Backbone: stage outputs after the VSS blocks, before PatchMerging2D (the last one before ``norm``).
        self.feature_info = [dict(num_chs=c, reduction=4 * 2 ** i, module=f"mamba_unet.layers.{i}.blocks.{d - 1}")
                             for i, (c, d) in enumerate(zip(self.mamba_unet.dims, self.mamba_unet.depths))]

    def forward_intermediates(self, x: torch.Tensor):
        """The four encoder stage maps (B, C_i, H/r_i, W/r_i), channels-first (see ``feature_info``)."""
        return vss_stage_maps(self.mamba_unet, prepare_input(x, self.in_channels, self.gray_to_rgb, 32,
                                                             "Mamba-UNet"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = prepare_input(x, self.in_channels, self.gray_to_rgb, 32, "Mamba-UNet")
        return self.mamba_unet(x)


@register_model("mamba_unet", paper="Mamba-UNet (Wang et al., 2024, arXiv:2402.05079)")
def mamba_unet(in_channels: int = 3, num_classes: int = 1, **kwargs) -> MambaUNet:
    """Mamba-UNet, paper config (VMamba-tiny widths, depth 2 in every encoder/decoder stage), 224x224."""
    return MambaUNet(in_channels=in_channels, num_classes=num_classes, **kwargs)


register_pretrained_loader(MambaUNet)(load_vmamba_into_mamba_unet)
