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

from ..blocks.conv_blocks import ConvUNet, UpBlock
from ..backbone import BackboneMixin
from ..registry import register_model

__all__ = ["UNet"]


class UNet(ConvUNet, BackboneMixin):
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

    arch_name = "unet"          # for error messages
    up_block = UpBlock


@register_model("unet", paper="U-Net (Ronneberger et al., MICCAI 2015)", family="baseline")
def unet(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UNet:
    """U-Net baseline: double 3x3 conv + BN, 4 levels, base width 64 (``base_channels``), transposed-conv up."""
    return UNet(in_channels=in_channels, num_classes=num_classes, **kwargs)
