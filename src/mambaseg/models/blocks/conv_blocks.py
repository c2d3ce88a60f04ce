"""Convolutional building blocks shared by the CNN baselines (``unet``, ``att_unet``, ``unet_pp``).

Every 3x3 convolution here is followed by BatchNorm, so it carries no bias (the BN shift makes a conv bias
redundant); 1x1 heads, transposed convolutions and the 1x1 convolution after bilinear upsampling do carry a bias.
The parameter counts in the tests follow from exactly these choices.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from .layers import check_input_size

__all__ = ["ConvUNet", "UpBlock", "DoubleConv", "Down", "UpSample", "UPSAMPLE_MODES", "channel_widths", "check_base_channels",
           "init_conv_weights"]

UPSAMPLE_MODES = ("transpose", "bilinear")


def check_base_channels(base_channels, model: str) -> int:
    if isinstance(base_channels, bool) or not isinstance(base_channels, int) or base_channels < 1:
        raise ValueError(f"{model}: base_channels must be a positive integer (64 in the paper; e.g. 16 for a "
                         f"small CPU model), got {base_channels!r}")
    return base_channels


def channel_widths(base_channels: int, levels: int = 5):
    """Widths of the encoder levels: ``base * 2**i`` for ``i < levels`` (64..1024 at the default 64)."""
    return [base_channels * 2 ** i for i in range(levels)]


class DoubleConv(nn.Sequential):
    """(Conv3x3 -> BN -> ReLU) x 2, padding 1 so the spatial size is kept (the U-Net "double conv").

    Args:
        in_channels: input channels.
        out_channels: output channels of both convolutions (the middle width equals ``out_channels``).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """MaxPool 2x2 (stride 2) then :class:`DoubleConv`."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class UpSample(nn.Module):
    """Doubles the spatial size and maps ``in_channels`` to ``out_channels``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        mode: ``"transpose"``: ConvTranspose2d(k=2, s=2, bias) (the paper's "up-conv 2x2");
            ``"bilinear"``: bilinear x2 (align_corners=False) then Conv1x1 (bias), so both modes give the same
            decoder widths.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str = "transpose"):
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {mode!r}")
        self.mode = mode
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        else:
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(in_channels, out_channels, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


def init_conv_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) for convolutions, zero biases, BN weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class UpBlock(nn.Module):
    """Upsample the decoder feature (``2c -> c``), concatenate the skip (``c``), then DoubleConv(2c -> c)."""

    def __init__(self, in_channels: int, out_channels: int, upsample: str = "transpose"):
        super().__init__()
        self.up = UpSample(in_channels, out_channels, upsample)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class ConvUNet(nn.Module):
    """The plain U-Net body U-Net and Attention U-Net share: ``inc`` + 4 ``downs`` (DoubleConv, max-pool), 4 ``ups``
    of ``up_block`` (a class attribute: (in_channels, out_channels, upsample) -> module(x, skip)), a 1x1 ``head``.
    Networks subclass it and name ``arch_name`` and ``up_block``; see :class:`mambaseg.models.networks.unet.UNet`
    for the arguments."""

    downsample_factor = 16
    default_input_size = 256    # the model contract (mambaseg.models.contract); U-Net and Attention U-Net
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
