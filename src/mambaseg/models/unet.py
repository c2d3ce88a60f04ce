"""U-Net baseline.

Paper: O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015, https://arxiv.org/abs/1505.04597. Written from the paper for mambaseg (no upstream code copied).

Deviations from the paper, as the U-Net is commonly used today (and as the seed papers' baselines use it):
  * "same" padding (3x3 convs with padding 1), so the output has the input's size and no cropping of skips;
  * BatchNorm after every 3x3 convolution (those convolutions therefore have no bias);
  * upsampling selectable: ``"transpose"`` (the paper's 2x2 up-conv, default) or ``"bilinear"`` (+ a 1x1 conv with
    the same output width, so both modes have the same decoder widths);
  * no dropout at the end of the contracting path; any number of input channels and classes.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from .conv_blocks import DoubleConv, Down, UpSample, channel_widths, check_base_channels, init_conv_weights
from .layers import check_input_size
from .backbone import BackboneMixin
from .registry import register_model

__all__ = ["UNet"]


class UpBlock(nn.Module):
    """Upsample the decoder feature (``2c -> c``), concatenate the skip (``c``), then DoubleConv(2c -> c)."""

    def __init__(self, in_channels: int, out_channels: int, upsample: str = "transpose"):
        super().__init__()
        self.up = UpSample(in_channels, out_channels, upsample)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(BackboneMixin, nn.Module):
    """U-Net (Ronneberger et al., 2015): 4 down and 4 up levels of double 3x3 convolutions.

    Input (B, in_channels, H, W) with H and W divisible by 16 (224 and 256 both work); output: logits
    (B, num_classes, H, W), no sigmoid/softmax.

    Args:
        in_channels: input image channels. Default 3.
        num_classes: output channels (1 for binary segmentation with a sigmoid loss). Default 1.
        base_channels: width of the first level; level i has ``base_channels * 2**i`` (64..1024 by default).
            Default 64; e.g. 16 gives a small model that trains on a CPU.
        upsample: ``"transpose"`` (ConvTranspose 2x2, default) or ``"bilinear"`` (bilinear x2 + Conv1x1).
    """

    downsample_factor = 16
    arch_name = "unet"          # for error messages
    up_block = UpBlock          # decoder block class: (in_channels, out_channels, upsample) -> module(x, skip)
    encoder_modules = ("inc", "downs")

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base_channels: int = 64,
                 upsample: str = "transpose"):
        super().__init__()
        base_channels = check_base_channels(base_channels, self.arch_name)
        self.in_channels, self.num_classes = in_channels, num_classes
        ch = channel_widths(base_channels)
        self.inc = DoubleConv(in_channels, ch[0])
        self.downs = nn.ModuleList([Down(ch[i], ch[i + 1]) for i in range(4)])
        self.ups = nn.ModuleList([self.up_block(ch[i + 1], ch[i], upsample) for i in reversed(range(4))])
        self.head = nn.Conv2d(ch[0], num_classes, kernel_size=1)
        self.feature_info = [dict(num_chs=c, reduction=2 ** i, module="inc" if i == 0 else f"downs.{i - 1}")
                             for i, c in enumerate(ch)]
        init_conv_weights(self)

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Encoder features at strides 1, 2, 4, 8, 16 (widths ``feature_info``)."""
        check_input_size(x, self.in_channels, self.downsample_factor, self.arch_name)
        return self._encode(x)

    def _encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        feats = [self.inc(x)]
        for down in self.downs:
            feats.append(down(feats[-1]))
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.in_channels, self.downsample_factor, self.arch_name)
        feats = self._encode(x)
        y = feats[-1]
        for up, skip in zip(self.ups, reversed(feats[:-1])):
            y = up(y, skip)
        return self.head(y)


@register_model("unet", paper="U-Net (Ronneberger et al., MICCAI 2015)", default_size=256, family="baseline")
def unet(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UNet:
    """U-Net baseline: double 3x3 conv + BN, 4 levels, base width 64 (``base_channels``), transposed-conv up."""
    return UNet(in_channels=in_channels, num_classes=num_classes, **kwargs)
