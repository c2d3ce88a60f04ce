"""UNet++ baseline.

Paper: Z. Zhou, M. M. Rahman Siddiquee, N. Tajbakhsh, J. Liang, "UNet++: A Nested U-Net Architecture for Medical
Image Segmentation", DLMIA 2018, https://arxiv.org/abs/1807.10165. Written from the paper for mambaseg.

Nodes ``X^{i,j}`` (level i = 0..4, column j = 0..4-i). The backbone column is ``X^{i,0}`` (double conv, max-pool
between levels); every other node is a double conv on the concatenation of all earlier nodes of its level and the
upsampled node below it (the dense skip pathway, paper Eq. 1)::

    X^{i,j} = DoubleConv(cat[X^{i,0}, ..., X^{i,j-1}, Up(X^{i+1,j-1})])      (in: j*F_i + F_{i+1}, out: F_i)

with widths ``F_i = base_channels * 2**i``. A 1x1 head maps ``X^{0,4}`` to the logits; with ``deep_supervision``
there are four heads, on ``X^{0,1}`` .. ``X^{0,4}``.

Outputs:
  * ``deep_supervision=False``: logits (B, num_classes, H, W) in train and eval mode.
  * ``deep_supervision=True`` in **train** mode: a list of four logits tensors, ``[head(X^{0,1}), ...,
    head(X^{0,4})]`` (shallowest first), for a loss summed/averaged over them.
  * ``deep_supervision=True`` in **eval** mode: one logits tensor; ``ds_eval="mean"`` (default) is the mean of the
    four logits (the paper's "accurate mode" averages the branches), ``ds_eval="last"`` is ``head(X^{0,4})``.

Deviations: upsampling is bilinear x2 without parameters (the widely used PyTorch form; the paper's code uses a
transposed convolution), BatchNorm after every 3x3 conv, no model pruning at inference (use ``ds_eval="last"`` for
the full-depth branch).
"""

from __future__ import annotations

from typing import List, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..blocks.conv_blocks import DoubleConv, channel_widths, check_base_channels, init_conv_weights
from ..blocks.layers import check_input_size
from ..backbone import BackboneMixin
from ..registry import register_model

__all__ = ["UNetPlusPlus"]

DS_EVAL_MODES = ("mean", "last")


class UNetPlusPlus(BackboneMixin, nn.Module):
    """UNet++ (Zhou et al., 2018): nested dense skip pathways, optional deep supervision.

    Input (B, in_channels, H, W) with H and W divisible by 16 (224 and 256 both work). Output: see the module
    docstring (logits, or a list of logits in train mode with deep supervision).

    Args:
        in_channels: input image channels. Default 3.
        num_classes: output channels. Default 1.
        base_channels: width ``F_0``; level i has ``base_channels * 2**i``. Default 64 (the paper's 32 is
            ``base_channels=32``).
        deep_supervision: four heads on ``X^{0,1..4}``. Default False.
        ds_eval: with deep supervision, what eval mode returns: ``"mean"`` of the four logits (default) or
            ``"last"`` (``X^{0,4}`` head).
    """

    downsample_factor = 16
    default_input_size = 256

    def returns_list(self) -> bool:  # the model contract's output kind
        return bool(self.deep_supervision) and self.training

    def __init__(self, in_channels: int = 3, num_classes: int = 1, base_channels: int = 64,
                 deep_supervision: bool = False, ds_eval: str = "mean"):
        super().__init__()
        base_channels = check_base_channels(base_channels, "unet_pp")
        if ds_eval not in DS_EVAL_MODES:
            raise ValueError(f"unet_pp: ds_eval must be one of {DS_EVAL_MODES}, got {ds_eval!r}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.deep_supervision, self.ds_eval = bool(deep_supervision), ds_eval
        ch = self.channels = channel_widths(base_channels)
        self.pool = nn.MaxPool2d(2)
        # nodes["i_j"] = X^{i,j}
        nodes = {}
        for i in range(5):
            nodes[f"{i}_0"] = DoubleConv(in_channels if i == 0 else ch[i - 1], ch[i])
        for j in range(1, 5):
            for i in range(5 - j):
                nodes[f"{i}_{j}"] = DoubleConv(j * ch[i] + ch[i + 1], ch[i])
        self.nodes = nn.ModuleDict(nodes)
        n_heads = 4 if self.deep_supervision else 1
        self.heads = nn.ModuleList([nn.Conv2d(ch[0], num_classes, kernel_size=1) for _ in range(n_heads)])
        # Backbone: the first column X^{i,0} (the encoder), strides 1..16.
        self.feature_info = [dict(num_chs=c, reduction=2 ** i, module=f"nodes.{i}_0") for i, c in enumerate(ch)]
        self.encoder_modules = ("pool",) + tuple(f"nodes.{i}_0" for i in range(5))
        init_conv_weights(self)

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The encoder column X^{0,0}..X^{4,0} (B, C_i, H/2^i, W/2^i)."""
        check_input_size(x, self.in_channels, self.downsample_factor, "unet_pp")
        feats = [self.nodes["0_0"](x)]
        for i in range(1, 5):
            feats.append(self.nodes[f"{i}_0"](self.pool(feats[-1])))
        return feats

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward_nodes(self, x: torch.Tensor) -> List[List[torch.Tensor]]:
        """All node features: ``X[i][j]`` for level i, column j."""
        X: List[List[torch.Tensor]] = [[] for _ in range(5)]
        for i in range(5):
            X[i].append(self.nodes[f"{i}_0"](x if i == 0 else self.pool(X[i - 1][0])))
        for j in range(1, 5):
            for i in range(5 - j):
                X[i].append(self.nodes[f"{i}_{j}"](torch.cat(X[i][:j] + [self._up(X[i + 1][j - 1], X[i][0])], 1)))
        return X

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        check_input_size(x, self.in_channels, self.downsample_factor, "unet_pp")
        top = self.forward_nodes(x)[0]
        if not self.deep_supervision:
            return self.heads[0](top[4])
        outs = [head(top[j]) for head, j in zip(self.heads, range(1, 5))]
        if self.training:
            return outs
        return outs[-1] if self.ds_eval == "last" else torch.stack(outs, 0).mean(0)


@register_model("unet_pp", paper="UNet++ (Zhou et al., DLMIA 2018)", family="baseline")
def unet_pp(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UNetPlusPlus:
    """UNet++ baseline: nested dense skips, optional deep supervision (``base_channels`` 64)."""
    return UNetPlusPlus(in_channels=in_channels, num_classes=num_classes, **kwargs)
