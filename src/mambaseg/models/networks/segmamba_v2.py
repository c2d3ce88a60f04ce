"""SegMamba-V2: SegMamba's UNETR-style network with large-kernel SE conv stages and tri-ordered plain Mamba layers.

Paper: SegMamba-V2 (Z. Xing et al., IEEE TMI 2025; not read here). Upstream: https://github.com/ge-xing/SegMamba-V2
(commit 7b81976; ``brats23/models_segmamba/segmambav2.py``, trainer ``brats23/3_train.py``, inference
``brats23/4_predict.py``), described in ``upstream_3d_models.md`` §2 and re-written here in our own code on the
Mamba-1 block :class:`mambaseg.models.blocks.mamba1.Mamba` and the head of
:mod:`mambaseg.models.blocks.segmamba_blocks`. Module and parameter names equal upstream's (``vit.{downsample_layers,
stages, gscs, mlps}``, ``encoder1..5``, ``decoder5..1``, ``out``), so an upstream ``state_dict`` (215 keys) loads with
``strict=True``. 138,776,824 parameters for 4 channels / 4 classes (BraTS 2023), 138,772,694 for 1 / 2 (colorectal).

Differences from SegMamba (V1): ``encoder1`` runs first and the encoder ``vit`` runs on its 48-channel output;
``downsample_layers.i`` = one Conv3d 3^3 stride 2 (bias, no norm); ``gscs.i`` = ``depths[i]`` LargeKernelConv blocks
(deep path conv 5^3, 3^3, 3^3 dilation 2; shortcut path 3^3, 1^3; each conv -> InstanceNorm -> ReLU; the sum of both
paths and the input, scaled by a squeeze-excitation vector with reduction 8); ``stages.0`` and ``stages.1`` are empty
(``None``, no keys); ``stages.2``/``stages.3`` are ``depths[i]`` MambaLayers with the plain Mamba: the same LayerNorm +
Mamba on three token orders of the (D, H, W) map -- row-major (W fastest), with D and H swapped (H slowest, then D,
then W), with the spatial axes reversed (W slowest, then H, D fastest) -- each put back, summed, + input. Outputs
``mlps[i](norm{i}(x))`` as V1; same decoder.

Paper protocol (spec §2; not a config file here yet): identical to SegMamba's (BraTS 2023, 128^3 patches, batch 2,
CE, SGD 1e-2, 1000 epochs, sliding window 0.5 Gaussian with 8 mirror flips); the colorectal setting is ``(1, 2)``.

Differences from upstream, each deliberate: bad inputs (not 5-D, wrong channels, a side not divisible by 16) raise
one ValueError; the stored-but-unused constructor arguments are not offered; ``feat_size[0]`` must be 48 (upstream
hard-codes it in ``out``). The Mamba runs on :func:`mambaseg.ops.selective_scan` (no mamba-ssm build needed).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn

from ..backbone import BackboneMixin
from ..blocks.mamba1 import Mamba
from ..blocks.segmamba_blocks import MlpChannel, add_unetr_head, run_unetr_head
from ..registry import register_model

__all__ = ["SegMambaV2", "LargeKernelConv", "TriOrderMambaLayer", "TOKEN_ORDERS"]

#: the three token orders of :class:`TriOrderMambaLayer` as permutations of (B, C, D, H, W) (each is its own inverse)
TOKEN_ORDERS = ((0, 1, 2, 3, 4), (0, 1, 3, 2, 4), (0, 1, 4, 3, 2))


class ConvBlock(nn.Module):
    """``block``: Conv3d (bias) -> InstanceNorm3d (affine False) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int, dilation: int = 1):
        super().__init__()
        self.block = nn.Sequential(nn.Conv3d(in_channels, out_channels, kernel_size, 1, padding, dilation),
                                   nn.InstanceNorm3d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class SEBlock(nn.Module):
    """x * sigmoid(fc(global average of x)); ``fc`` = Linear(C -> C/r) -> ReLU -> Linear -> Sigmoid."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        return x * self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1, 1)


class LargeKernelConv(nn.Module):
    """se(deep_path(x) + shortcut_path(x) + x)."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.deep_path = nn.Sequential(ConvBlock(c, c, 5, 2), ConvBlock(c, c, 3, 1), ConvBlock(c, c, 3, 2, 2))
        self.shortcut_path = nn.Sequential(ConvBlock(c, c, 3, 1), ConvBlock(c, c, 1, 0))
        self.se = SEBlock(c, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.deep_path(x) + self.shortcut_path(x) + x)


class TriOrderMambaLayer(nn.Module):
    """SegMamba-V2's ``MambaLayer``: the same ``norm`` + ``mamba`` on the tokens of the map permuted by each of
    :data:`TOKEN_ORDERS` (row-major over the permuted axes), each result permuted back; their sum + x."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        out = x
        for perm in TOKEN_ORDERS:
            xp = x.permute(perm)
            t = xp.reshape(b, c, -1).transpose(1, 2)
            y = self.mamba(self.norm(t)).transpose(1, 2).reshape(xp.shape)
            out = out + y.permute(perm)
        return out


class MambaEncoderV2(nn.Module):
    """SegMamba-V2's encoder (``vit``), on the 48-channel ``encoder1`` map."""

    def __init__(self, depths: Sequence[int] = (2, 2, 2, 2), dims: Sequence[int] = (48, 96, 192, 384)):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv3d(dims[0], dims[0], 3, 2, 1))])
        for i in range(1, 4):
            self.downsample_layers.append(nn.Sequential(nn.Conv3d(dims[i - 1], dims[i], 3, 2, 1)))
        self.stages = nn.ModuleList([None, None] + [nn.Sequential(*[TriOrderMambaLayer(dims[i])
                                                                    for _ in range(depths[i])]) for i in (2, 3)])
        self.gscs = nn.ModuleList([nn.Sequential(*[LargeKernelConv(dims[i]) for _ in range(depths[i])])
                                   for i in range(4)])
        self.mlps = nn.ModuleList()
        for i in range(4):
            self.add_module(f"norm{i}", nn.InstanceNorm3d(dims[i]))
            self.mlps.append(MlpChannel(dims[i], 2 * dims[i]))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = []
        for i in range(4):
            x = self.gscs[i](self.downsample_layers[i](x))
            if self.stages[i] is not None:
                x = self.stages[i](x)
            outs.append(self.mlps[i](getattr(self, f"norm{i}")(x)))
        return outs


class SegMambaV2(BackboneMixin, nn.Module):
    """SegMamba-V2 (Xing et al., IEEE TMI 2025). Input (B, in_channels, D, H, W), sides divisible by 16; output
    logits (B, num_classes, D, H, W).

    Args:
        in_channels: image channels (upstream ``in_chans``). Default 1.
        num_classes: output channels (upstream ``out_chans``). Default 13 (upstream's constructor default).
        depths: LargeKernelConv blocks per stage, and Mamba layers in stages 2 and 3. Default [2, 2, 2, 2].
        feat_size: encoder widths; the first must be 48. Default [48, 96, 192, 384].
        hidden_size: bottleneck width of ``encoder5``. Default 768.
    """

    spatial_dims = 3
    downsample_factor = 16
    default_input_size = (128, 128, 128)
    encoder_modules = ("encoder1", "vit")

    def __init__(self, in_channels: int = 1, num_classes: int = 13, depths: Sequence[int] = (2, 2, 2, 2),
                 feat_size: Sequence[int] = (48, 96, 192, 384), hidden_size: int = 768):
        super().__init__()
        depths, feat = [int(d) for d in depths], [int(f) for f in feat_size]
        if len(depths) != 4 or len(feat) != 4 or min(depths) < 1:
            raise ValueError(f"SegMamba-V2: depths and feat_size need 4 entries (depths >= 1), got {depths}, {feat}")
        if feat[0] != 48:
            raise ValueError(f"SegMamba-V2: feat_size[0] must be 48 (upstream builds its output head for 48 "
                             f"channels), got {feat[0]}")
        if min(feat) < 8:
            raise ValueError(f"SegMamba-V2: every feat_size must be >= 8 (the SE blocks squeeze by 8), got {feat}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.vit = MambaEncoderV2(depths, feat)
        add_unetr_head(self, in_channels, num_classes, feat, hidden_size)
        self.feature_info = [{"num_chs": c, "reduction": 2 ** (i + 1), "module": f"vit.mlps.{i}"}
                             for i, c in enumerate(feat)]

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"SegMamba-V2: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 5:
            raise ValueError(f"SegMamba-V2: expected a 5-D input (B, C, D, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"SegMamba-V2: expected {self.in_channels} input channel(s), got {x.shape[1]} (input "
                             f"shape {tuple(x.shape)}); build the model with in_channels={x.shape[1]}")
        if any(s % 16 for s in x.shape[2:]):
            ok = "x".join(str(max(16, round(s / 16) * 16)) for s in x.shape[2:])
            raise ValueError(f"SegMamba-V2: input size {'x'.join(map(str, x.shape[2:]))} is not divisible by 16, "
                             f"which its four stride-2 stages need; crop or pad to e.g. {ok}")

    def _encode(self, x: torch.Tensor):
        self._check(x)
        enc1 = self.encoder1(x)
        return enc1, self.vit(enc1)

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Encoder maps [48@/2, 96@/4, 192@/8, 384@/16] (``vit`` outputs on ``encoder1``'s map), channels-first."""
        return self._encode(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc1, outs = self._encode(x)
        return run_unetr_head(self, enc1, outs)


@register_model("segmamba_v2", paper="SegMamba-V2 (Xing et al., IEEE TMI 2025)", default_size=128, spatial_dims=3)
def segmamba_v2(in_channels: int = 4, num_classes: int = 4, **kwargs) -> SegMambaV2:
    """SegMamba-V2 3-D: large-kernel SE conv stages, tri-ordered Mamba in stages 3-4, UNETR decoder (BraTS 2023)."""
    return SegMambaV2(in_channels=in_channels, num_classes=num_classes, **kwargs)
