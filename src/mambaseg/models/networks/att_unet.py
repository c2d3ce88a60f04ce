"""Attention U-Net baseline.

Paper: O. Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018,
https://arxiv.org/abs/1804.03999. Written from the paper for mambaseg (no upstream code copied).

The network is mambaseg's :class:`~mambaseg.models.networks.unet.UNet` (same encoder, decoder and widths) with an additive
attention gate on each of the four skip connections (paper Eq. 1-2)::

    q     = psi^T ReLU(W_x^T x + W_g^T g + b_g) + b_psi
    alpha = sigmoid(q)          # one coefficient in [0, 1] per pixel
    out   = alpha * x           # the gated skip

``W_x`` has no bias, ``W_g`` and ``psi`` do, as in the equation; the intermediate width is ``F_int = F_l // 2``.

Deviations from the paper:
  * the gating signal ``g`` is the decoder feature *after* upsampling, at the skip's resolution (the form used by
    most PyTorch re-implementations that the seed papers compare against), so ``W_x`` is a 1x1 convolution and the
    coefficients need no resampling; the paper computes ``W_x`` with a stride-2 convolution at the coarser scale
    and upsamples ``alpha``;
  * single-scale gates without the paper's deep supervision; 2-D (the paper is 3-D); BatchNorm after each 3x3
    conv; any number of input channels and classes.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from ..blocks.conv_blocks import ConvUNet, DoubleConv, UpSample
from ..blocks.layers import check_input_size
from ..backbone import BackboneMixin
from ..registry import register_model

__all__ = ["AttentionGate", "AttentionUNet"]


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al., Eq. 1-2) on a skip connection.

    Args:
        skip_channels: channels ``F_l`` of the skip feature ``x``.
        gate_channels: channels ``F_g`` of the gating signal ``g`` (same spatial size as ``x``).
        inter_channels: ``F_int``; default ``skip_channels // 2`` (at least 1).
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int | None = None):
        super().__init__()
        inter_channels = inter_channels or max(1, skip_channels // 2)
        self.W_x = nn.Conv2d(skip_channels, inter_channels, kernel_size=1, bias=False)
        self.W_g = nn.Conv2d(gate_channels, inter_channels, kernel_size=1, bias=True)
        self.psi = nn.Conv2d(inter_channels, 1, kernel_size=1, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def attention(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The coefficients ``alpha`` (B, 1, H, W), each in [0, 1]."""
        if x.shape[-2:] != g.shape[-2:]:
            raise ValueError(f"AttentionGate: skip {tuple(x.shape)} and gating signal {tuple(g.shape)} must have "
                             f"the same spatial size")
        return torch.sigmoid(self.psi(self.relu(self.W_x(x) + self.W_g(g))))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x, g)


class AttUpBlock(nn.Module):
    """Upsample (``2c -> c``), gate the skip with the upsampled feature, concatenate, DoubleConv(2c -> c)."""

    def __init__(self, in_channels: int, out_channels: int, upsample: str = "transpose"):
        super().__init__()
        self.up = UpSample(in_channels, out_channels, upsample)
        self.gate = AttentionGate(out_channels, out_channels)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        g = self.up(x)
        return self.conv(torch.cat([self.gate(skip, g), g], dim=1))


class AttentionUNet(ConvUNet, BackboneMixin):
    """Attention U-Net (Oktay et al., 2018): U-Net with additive attention gates on the skips.

    The same network as :class:`~mambaseg.models.networks.unet.UNet` (same encoder, widths and parameter names) with an
    :class:`AttUpBlock` at every decoder level.

    Input (B, in_channels, H, W) with H and W divisible by 16 (224 and 256 both work); output: logits
    (B, num_classes, H, W).

    Args:
        in_channels: input image channels. Default 3.
        num_classes: output channels. Default 1.
        base_channels: width of the first level; level i has ``base_channels * 2**i``. Default 64.
        upsample: ``"transpose"`` (default) or ``"bilinear"``, as in :class:`~mambaseg.models.networks.unet.UNet`.
    """

    arch_name = "att_unet"
    up_block = AttUpBlock

    def attention_maps(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The gates' coefficients for input ``x``, coarsest first: (B, 1, H/8, W/8) ... (B, 1, H, W)."""
        check_input_size(x, self.in_channels, self.downsample_factor, "att_unet")
        feats = self._encode(x)
        y, maps = feats[-1], []
        for up, skip in zip(self.ups, reversed(feats[:-1])):
            maps.append(up.gate.attention(skip, up.up(y)))
            y = up(y, skip)
        return maps


@register_model("att_unet", paper="Attention U-Net (Oktay et al., MIDL 2018)", family="baseline")
def att_unet(in_channels: int = 3, num_classes: int = 1, **kwargs) -> AttentionUNet:
    """Attention U-Net baseline: U-Net with additive attention gates on the skips (``base_channels`` 64)."""
    return AttentionUNet(in_channels=in_channels, num_classes=num_classes, **kwargs)
