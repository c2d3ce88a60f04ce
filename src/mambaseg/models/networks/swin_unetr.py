"""Swin UNETR (MONAI's ``SwinUNETR``) registered as a 3-D baseline.

Paper: A. Hatamizadeh, V. Nath, Y. Tang, D. Yang, H. Roth, D. Xu, "Swin UNETR: Swin Transformers for Semantic
Segmentation of Brain Tumors in MRI Images", arXiv:2201.01266 (BrainLes 2021). Implementation: MONAI's
``monai.networks.nets.SwinUNETR`` itself (optional dependency ``monai``; registered only when it is installed),
wrapped by :mod:`mambaseg.models.blocks.monai_adapter` so that the parameter names are MONAI's (a MONAI
``state_dict`` loads with ``strict=True``) and the forward is MONAI's. Constructor arguments are MONAI's names (those
listed below); ``num_classes`` is MONAI's ``out_channels``.

Added: the model contract attributes, ``forward_intermediates`` (the four encoder maps the decoder's ``encoder2``,
``encoder3``, ``encoder4`` and ``encoder10`` consume: feature_size @/2, 2x @/4, 4x @/8, 16x @/32, after MONAI's
normalisation; the 8x @/16 map reaches the decoder only as ``decoder5``'s skip and is not listed), and an input check
(5-D, channels, sides divisible by 32) with one clear error before any work.
"""

from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn as nn

from ..backbone import BackboneMixin
from ..blocks.monai_adapter import adopt, monai_available, require_monai
from ..registry import register_model

__all__ = ["SwinUNETR"]


class SwinUNETR(BackboneMixin, nn.Module):
    """MONAI's SwinUNETR (Hatamizadeh et al., 2021). Input (B, in_channels, D, H, W), sides divisible by 32;
    output logits (B, num_classes, D, H, W).

    Args (MONAI's): in_channels, num_classes (``out_channels``), feature_size (default 48, the paper's BraTS and
    BTCV setting; MONAI's default is 24), depths, num_heads, window_size, drop_rate, attn_drop_rate,
    dropout_path_rate, normalize, use_checkpoint, use_v2.
    """

    spatial_dims = 3
    downsample_factor = 32
    default_input_size = (128, 128, 128)
    encoder_modules = ("swinViT",)

    def __init__(self, in_channels: int = 4, num_classes: int = 3, feature_size: int = 48,
                 depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: Union[int, Sequence[int]] = 7, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 dropout_path_rate: float = 0.0, normalize: bool = True, use_checkpoint: bool = False,
                 use_v2: bool = False):
        super().__init__()
        nets = require_monai("swin_unetr")
        net = nets.SwinUNETR(in_channels=in_channels, out_channels=num_classes, feature_size=feature_size,
                             depths=tuple(depths), num_heads=tuple(num_heads), window_size=window_size,
                             drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                             dropout_path_rate=dropout_path_rate, normalize=normalize,
                             use_checkpoint=use_checkpoint, spatial_dims=3, use_v2=use_v2)
        adopt(self, net)
        self.in_channels, self.num_classes, self.normalize = in_channels, num_classes, normalize
        f = feature_size
        self.feature_info = [{"num_chs": c, "reduction": r, "module": m, "hook_type": "forward_pre"}
                             for c, r, m in ((f, 2, "encoder2"), (2 * f, 4, "encoder3"), (4 * f, 8, "encoder4"),
                                             (16 * f, 32, "encoder10"))]

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            raise ValueError(f"SwinUNETR: expected a 5-D input (B, C, D, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"SwinUNETR: expected {self.in_channels} input channel(s), got {x.shape[1]}; build the "
                             f"model with in_channels={x.shape[1]}")
        if any(s % 32 for s in x.shape[2:]):
            ok = "x".join(str(max(32, round(s / 32) * 32)) for s in x.shape[2:])
            raise ValueError(f"SwinUNETR: input size {'x'.join(map(str, x.shape[2:]))} is not divisible by 32 (patch "
                             f"2 and four 2x merges); crop or pad to e.g. {ok}")

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """[feature_size @/2, 2f @/4, 4f @/8, 16f @/32]: MONAI's ``swinViT`` outputs 0, 1, 2, 4 (normalised)."""
        self._check(x)
        h = self.swinViT(x, self.normalize)
        return [h[0], h[1], h[2], h[4]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self._monai_net(x)


if monai_available():
    @register_model("swin_unetr", paper="Swin UNETR (Hatamizadeh et al., 2021, arXiv:2201.01266), MONAI",
                    default_size=128, family="baseline", spatial_dims=3)
    def swin_unetr(in_channels: int = 4, num_classes: int = 3, **kwargs) -> SwinUNETR:
        """MONAI's SwinUNETR (3-D baseline; feature_size 48)."""
        return SwinUNETR(in_channels=in_channels, num_classes=num_classes, **kwargs)
