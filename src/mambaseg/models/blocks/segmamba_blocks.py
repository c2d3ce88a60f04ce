"""Pieces SegMamba (``networks/segmamba.py``) and SegMamba-V2 (``networks/segmamba_v2.py``) share: the encoder's
1^3-conv MLP (``MlpChannel``) and the UNETR-style head built on :mod:`.unetr_blocks` (``encoder1..5``,
``decoder5..1``, ``out``; spec ``upstream_3d_models.md`` §1.4 and §2: identical in both networks)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .unetr_blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock

__all__ = ["MlpChannel", "add_unetr_head", "run_unetr_head"]


class MlpChannel(nn.Module):
    """1^3 conv MLP: ``fc1`` (C -> hidden) -> exact GELU -> ``fc2`` (hidden -> C)."""

    def __init__(self, hidden_size: int, mlp_dim: int):
        super().__init__()
        self.fc1 = nn.Conv3d(hidden_size, mlp_dim, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv3d(mlp_dim, hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def add_unetr_head(net: nn.Module, in_channels: int, num_classes: int, feat: Sequence[int], hidden_size: int) -> None:
    """Register upstream's head on ``net`` in upstream's order: ``encoder1`` (in -> feat[0], on the raw image),
    ``encoder2..4`` (on encoder outputs 0..2), ``encoder5`` (feat[3] -> hidden_size), ``decoder5..2`` (up blocks),
    ``decoder1`` (feat[0] -> feat[0]) and ``out`` (48 -> num_classes, 1^3 conv with bias; 48 hard-coded upstream)."""
    net.encoder1 = UnetrBasicBlock(in_channels, feat[0], spatial_dims=3)
    net.encoder2 = UnetrBasicBlock(feat[0], feat[1], spatial_dims=3)
    net.encoder3 = UnetrBasicBlock(feat[1], feat[2], spatial_dims=3)
    net.encoder4 = UnetrBasicBlock(feat[2], feat[3], spatial_dims=3)
    net.encoder5 = UnetrBasicBlock(feat[3], hidden_size, spatial_dims=3)
    net.decoder5 = UnetrUpBlock(hidden_size, feat[3], spatial_dims=3)
    net.decoder4 = UnetrUpBlock(feat[3], feat[2], spatial_dims=3)
    net.decoder3 = UnetrUpBlock(feat[2], feat[1], spatial_dims=3)
    net.decoder2 = UnetrUpBlock(feat[1], feat[0], spatial_dims=3)
    net.decoder1 = UnetrBasicBlock(feat[0], feat[0], spatial_dims=3)
    net.out = UnetOutBlock(48, num_classes, spatial_dims=3)


def run_unetr_head(net: nn.Module, enc1: torch.Tensor, outs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Logits from ``enc1`` (= ``net.encoder1(image)``) and the four encoder outputs."""
    enc2, enc3, enc4 = net.encoder2(outs[0]), net.encoder3(outs[1]), net.encoder4(outs[2])
    hidden = net.encoder5(outs[3])
    dec3 = net.decoder5(hidden, enc4)
    dec2 = net.decoder4(dec3, enc3)
    dec1 = net.decoder3(dec2, enc2)
    dec0 = net.decoder2(dec1, enc1)
    return net.out(net.decoder1(dec0))
