"""UNETR-style decoder blocks (the MONAI 1.3.0 blocks Swin-UMamba (2-D) and SegMamba (3-D) use), re-written
without MONAI, for 2 or 3 spatial axes (``spatial_dims``, default 2; keyword-only so the 2-D calls read as before).

Module names equal MONAI's, so the state-dict keys are upstream's: each conv sits in a ``Convolution`` wrapper as
``.conv`` (``conv1.conv.weight``), the residual block's modules are ``conv1``, ``conv2``, ``conv3`` (the 1x1
residual projection, only when the widths differ), ``norm1..3`` and ``lrelu``; the up block has ``transp_conv``
and ``conv_block``; the output block ``conv``. Settings as Swin-UMamba builds them (``norm_name="instance"``,
``res_block=True``, kernel 3, up kernel 2): every conv bias-free except the output 1x1; InstanceNorm without
affine or running stats (eps 1e-5, so no norm keys); LeakyReLU(0.01).

* :class:`UnetResBlock`: conv3x3 -> IN -> LReLU -> conv3x3 -> IN -> + residual (conv1x1 -> IN when cin != cout)
  -> LReLU.
* :class:`UnetrBasicBlock`: one ``layer`` = UnetResBlock (stride 1).
* :class:`UnetrUpBlock`: ``transp_conv`` ConvTranspose(k2, s2, no bias) -> concat [upsampled, skip] ->
  ``conv_block`` UnetResBlock(2*out -> out).
* :class:`UnetOutBlock`: 1x1 conv with bias.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["Convolution", "UnetResBlock", "UnetrBasicBlock", "UnetrUpBlock", "UnetOutBlock"]


class Convolution(nn.Module):
    """MONAI's ``Convolution`` wrapper reduced to what these blocks use: the conv lives at ``.conv``."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONVT = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_INORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


def _check_dims(spatial_dims: int) -> int:
    if spatial_dims not in _CONV:
        raise ValueError(f"UNETR blocks: spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def _instance_norm(c: int, spatial_dims: int = 2) -> nn.Module:
    return _INORM[spatial_dims](c, eps=1e-5, affine=False, track_running_stats=False)


class UnetResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, *,
                 spatial_dims: int = 2):
        super().__init__()
        conv, nd = _CONV[_check_dims(spatial_dims)], spatial_dims
        pad = kernel_size // 2
        self.conv1 = Convolution(conv(in_channels, out_channels, kernel_size, stride, pad, bias=False))
        self.conv2 = Convolution(conv(out_channels, out_channels, kernel_size, 1, pad, bias=False))
        self.lrelu = nn.LeakyReLU(0.01, inplace=True)
        self.norm1 = _instance_norm(out_channels, nd)
        self.norm2 = _instance_norm(out_channels, nd)
        self.downsample = in_channels != out_channels or stride != 1
        if self.downsample:
            self.conv3 = Convolution(conv(in_channels, out_channels, 1, stride, bias=False))
            self.norm3 = _instance_norm(out_channels, nd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lrelu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        res = self.norm3(self.conv3(x)) if self.downsample else x
        return self.lrelu(out + res)


class UnetrBasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, *,
                 spatial_dims: int = 2):
        super().__init__()
        self.layer = UnetResBlock(in_channels, out_channels, kernel_size, stride, spatial_dims=spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class UnetrUpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, upsample_kernel_size: int = 2, *,
                 spatial_dims: int = 2):
        super().__init__()
        k = upsample_kernel_size
        self.transp_conv = Convolution(_CONVT[_check_dims(spatial_dims)](in_channels, out_channels, k, k, bias=False))
        self.conv_block = UnetResBlock(2 * out_channels, out_channels, kernel_size, 1, spatial_dims=spatial_dims)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat([self.transp_conv(x), skip], dim=1))


class UnetOutBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, *, spatial_dims: int = 2):
        super().__init__()
        self.conv = Convolution(_CONV[_check_dims(spatial_dims)](in_channels, out_channels, 1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
