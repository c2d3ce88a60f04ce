"""UNETR (MONAI's ``UNETR``) registered as a 3-D baseline.

Paper: A. Hatamizadeh, Y. Tang, V. Nath, D. Yang, A. Myronenko, B. Landman, H. Roth, D. Xu, "UNETR: Transformers for
3D Medical Image Segmentation", arXiv:2103.10504 (WACV 2022). Implementation: MONAI's ``monai.networks.nets.UNETR``
itself (optional dependency ``monai``; registered only when it is installed), wrapped by
:mod:`mambaseg.models.blocks.monai_adapter` so that the parameter names are MONAI's (a MONAI ``state_dict`` loads with
``strict=True``) and the forward is MONAI's. Constructor arguments are MONAI's names (those listed below);
``num_classes`` is MONAI's ``out_channels``. The ViT has learned position embeddings for ``img_size``: the input must
have exactly that size (default 96^3, the paper's BTCV patch).

Added: the model contract attributes, ``forward_intermediates`` ([2f @/2, 4f @/4, 8f @/8] = the outputs of
``encoder2..4``, which project ViT layers 3, 6, 9 back to those resolutions, and the last ViT layer's normalised
tokens as a hidden_size @/16 map, i.e. the input of ``decoder5.transp_conv``) and an input check with one clear
error before any work.
"""

from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn as nn

from ..backbone import BackboneMixin
from ..blocks.monai_adapter import adopt, monai_available, require_monai
from ..registry import register_model

__all__ = ["UNETR"]


class UNETR(BackboneMixin, nn.Module):
    """MONAI's UNETR (Hatamizadeh et al., WACV 2022). Input (B, in_channels, *img_size); output logits
    (B, num_classes, *img_size).

    Args (MONAI's): in_channels, num_classes (``out_channels``), img_size (default (96, 96, 96)), feature_size,
    hidden_size, mlp_dim, num_heads, proj_type, norm_name, conv_block, res_block, dropout_rate, qkv_bias.
    """

    spatial_dims = 3
    downsample_factor = 16
    encoder_modules = ("vit", "encoder2", "encoder3", "encoder4")

    def __init__(self, in_channels: int = 1, num_classes: int = 14, img_size: Union[int, Sequence[int]] = (96, 96, 96),
                 feature_size: int = 16, hidden_size: int = 768, mlp_dim: int = 3072, num_heads: int = 12,
                 proj_type: str = "conv", norm_name: str = "instance", conv_block: bool = True,
                 res_block: bool = True, dropout_rate: float = 0.0, qkv_bias: bool = False):
        super().__init__()
        nets = require_monai("unetr")
        size = (int(img_size),) * 3 if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        net = nets.UNETR(in_channels=in_channels, out_channels=num_classes, img_size=size, feature_size=feature_size,
                         hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads, proj_type=proj_type,
                         norm_name=norm_name, conv_block=conv_block, res_block=res_block, dropout_rate=dropout_rate,
                         spatial_dims=3, qkv_bias=qkv_bias)
        adopt(self, net)
        self.in_channels, self.num_classes, self.img_size = in_channels, num_classes, size
        self.default_input_size = size
        f = feature_size
        self.feature_info = [{"num_chs": 2 * f, "reduction": 2, "module": "encoder2"},
                             {"num_chs": 4 * f, "reduction": 4, "module": "encoder3"},
                             {"num_chs": 8 * f, "reduction": 8, "module": "encoder4"},
                             {"num_chs": hidden_size, "reduction": 16, "module": "decoder5.transp_conv",
                              "hook_type": "forward_pre"}]

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            raise ValueError(f"UNETR: expected a 5-D input (B, C, D, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"UNETR: expected {self.in_channels} input channel(s), got {x.shape[1]}; build the model "
                             f"with in_channels={x.shape[1]}")
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"UNETR: input size {'x'.join(map(str, x.shape[2:]))} differs from the img_size "
                             f"{'x'.join(map(str, self.img_size))} its position embeddings were built for; use that "
                             f"size (sliding window) or build the model with img_size={tuple(x.shape[2:])}")

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """[encoder2 (2f @/2), encoder3 (4f @/4), encoder4 (8f @/8), last ViT tokens (hidden @/16)]."""
        self._check(x)
        net = self._monai_net
        last, hidden = self.vit(x)
        feats = [self.encoder2(net.proj_feat(hidden[3])), self.encoder3(net.proj_feat(hidden[6])),
                 self.encoder4(net.proj_feat(hidden[9]))]
        return feats + [net.proj_feat(last)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self._monai_net(x)


if monai_available():
    @register_model("unetr", paper="UNETR (Hatamizadeh et al., WACV 2022, arXiv:2103.10504), MONAI",
                    default_size=96, family="baseline", spatial_dims=3)
    def unetr(in_channels: int = 1, num_classes: int = 14, **kwargs) -> UNETR:
        """MONAI's UNETR (3-D baseline; ViT-B/16 on a fixed 96^3 patch)."""
        return UNETR(in_channels=in_channels, num_classes=num_classes, **kwargs)
