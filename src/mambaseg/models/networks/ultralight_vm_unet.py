"""UltraLight VM-UNet: a 0.049 M-parameter skin-lesion U-Net with parallel Vision Mamba (PVM) layers.

Paper: R. Wu, Y. Liu, G. Ning, P. Liang, Q. Chang, "UltraLight VM-UNet: Parallel Vision Mamba significantly reduces
parameters for skin lesion segmentation", Patterns (Cell Press) 2025, doi:10.1016/j.patter.2025.101298,
arXiv:2403.20035. Upstream: https://github.com/wurenkai/UltraLight-VM-UNet (commit d7648e4,
``models/UltraLight_VM_UNet.py``, ``configs/config_setting.py``), described in ``upstream_mamba1_models.md`` §6;
re-written here in our own code on :class:`mambaseg.models.blocks.mamba1.Mamba`. Module names equal upstream's
(``encoder1..6``, ``decoder1..5``, ``ebn1..5``, ``dbn1..5``, ``scab.{catt,satt}``, ``final``), so an upstream
``best.pth`` state dict loads with ``strict=True``.

Architecture (c_list [8, 16, 24, 32, 48, 64], split_att "fc", bridge on): encoder1..3 3x3 convs, encoder4..6 PVM
layers; each of encoder1..5 is followed by GroupNorm(4), MaxPool 2, GELU; the SC-Att bridge (shared 7x7 dilated
spatial attention over the five skips, then a Conv1d channel attention over their pooled concatenation with a
per-scale Linear + sigmoid) rewrites the five skips; encoder6 + GELU; decoder1..3 PVM, decoder4..5 3x3 convs, each
followed by GroupNorm(4), bilinear x2 (align_corners=True, not after decoder1), GELU, + skip; final 1x1 conv and
bilinear x2. ``PVMLayer``: LayerNorm, split the channels in 4 chunks, ONE Mamba (d_model = C/4) run on each chunk
(+ skip_scale * chunk), concat, the same LayerNorm again, Linear. Input H, W divisible by 32; C divisible by 4.

Upstream quirks, all kept:

* Upstream's ``_init_weights`` is applied to every module, the Mamba internals included: every Linear (in_proj,
  x_proj, out_proj, dt_proj) gets trunc-normal(0.02) weights and a zero bias -- so ``dt_proj.bias`` is 0
  (softplus -> ln 2 instead of Mamba's [1e-3, 0.1] step sizes); Conv1d weights N(0, sqrt(2 / (k * out))) with
  the bias at PyTorch's default; Conv2d N(0, sqrt(2 / fan_out)) and zero bias.
* The PVM layer's residual is on the normalised chunk, and its one LayerNorm is used twice.
* encoder6 runs on the un-bridged fifth skip; the bridge is used only by the decoder.

Differences, each deliberate:

* Returns **logits**. Upstream returns ``sigmoid(logits)`` (even for several classes); ``output="probabilities"``
  restores that.
* The Mamba layers run in float32 under any autocast (upstream: fp16 -> fp32 cast only).
* Input sizes not divisible by 32, and ``c_list`` entries of the PVM layers not divisible by 4, raise a ValueError.
"""

from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbone import BackboneMixin
from ..blocks.layers import check_input_size, trunc_normal_
from ..blocks.mamba1 import Mamba
from ..registry import register_model
from ..blocks.umamba import mamba_fp32

__all__ = ["UltraLightVMUNet", "PVMLayer", "SCAttBridge"]


class PVMLayer(nn.Module):
    """Parallel Vision Mamba layer: (B, C_in, H, W) -> (B, C_out, H, W); one Mamba shared by 4 channel chunks."""

    def __init__(self, input_dim: int, output_dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        if input_dim % 4:
            raise ValueError(f"UltraLight VM-UNet: a PVM layer needs input channels divisible by 4, got {input_dim}")
        self.input_dim, self.output_dim = input_dim, output_dim
        self.norm = nn.LayerNorm(input_dim)
        self.mamba = Mamba(d_model=input_dim // 4, d_state=d_state, d_conv=d_conv, expand=expand)
        self.proj = nn.Linear(input_dim, output_dim)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x.reshape(b, c, h * w).transpose(1, 2))             # (B, L, C), row-major
        chunks = [self.mamba(p) + self.skip_scale * p for p in torch.chunk(n, 4, dim=2)]
        y = self.proj(self.norm(torch.cat(chunks, dim=2)))
        return y.transpose(1, 2).reshape(b, self.output_dim, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mamba_fp32(x, self._run)


class ChannelAttBridge(nn.Module):
    """Channel part of the bridge: GAP of each skip, concat (B, sum C), Conv1d(1, 1, 3) along it, one Linear per
    skip + sigmoid -> per-channel weights."""

    def __init__(self, c_list: Sequence[int], split_att: str = "fc"):
        super().__init__()
        if split_att not in ("fc", "conv"):
            raise ValueError(f"UltraLight VM-UNet: split_att must be 'fc' or 'conv', got {split_att!r}")
        total = sum(c_list)
        self.split_att = split_att
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.get_all_att = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
        for i, c in enumerate(c_list, 1):
            setattr(self, f"att{i}", nn.Linear(total, c) if split_att == "fc" else nn.Conv1d(total, c, 1))
        self.sigmoid = nn.Sigmoid()
        self.n = len(c_list)

    def forward(self, ts: List[torch.Tensor]) -> List[torch.Tensor]:
        att = torch.cat([self.avgpool(t) for t in ts], dim=1)                # (B, sum C, 1, 1)
        att = self.get_all_att(att.squeeze(-1).transpose(-1, -2))           # (B, 1, sum C)
        if self.split_att != "fc":
            att = att.transpose(-1, -2)
        out = []
        for i, t in enumerate(ts, 1):
            a = self.sigmoid(getattr(self, f"att{i}")(att))
            a = a.transpose(-1, -2).unsqueeze(-1) if self.split_att == "fc" else a.unsqueeze(-1)
            out.append(a.expand_as(t))
        return out


class SpatialAttBridge(nn.Module):
    """Spatial part of the bridge: one 7x7 conv (dilation 3) + sigmoid on [channel mean, channel max], shared by
    all skips."""

    def __init__(self):
        super().__init__()
        self.shared_conv2d = nn.Sequential(nn.Conv2d(2, 1, 7, stride=1, padding=9, dilation=3), nn.Sigmoid())

    def forward(self, ts: List[torch.Tensor]) -> List[torch.Tensor]:
        return [self.shared_conv2d(torch.cat([t.mean(1, keepdim=True), t.amax(1, keepdim=True)], 1)) for t in ts]


class SCAttBridge(nn.Module):
    """Spatial-channel attention bridge: a_i = s_i * t_i, b_i = a_i + t_i, out_i = c_i(b) * b_i + a_i."""

    def __init__(self, c_list: Sequence[int], split_att: str = "fc"):
        super().__init__()
        self.catt = ChannelAttBridge(c_list, split_att)
        self.satt = SpatialAttBridge()

    def forward(self, ts: List[torch.Tensor]) -> List[torch.Tensor]:
        a = [s * t for s, t in zip(self.satt(ts), ts)]
        b = [ai + t for ai, t in zip(a, ts)]
        return [c * bi + ai for c, bi, ai in zip(self.catt(b), b, a)]


def _upstream_init(m: nn.Module) -> None:
    """Upstream ``_init_weights`` (applied to every module, Mamba internals included)."""
    if getattr(getattr(m, "weight", None), "is_meta", False):   # structure-only build
        return
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv1d):
        fan_out = m.kernel_size[0] * m.out_channels
        m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            m.bias.data.zero_()


class UltraLightVMUNet(BackboneMixin, nn.Module):
    """UltraLight VM-UNet (Wu et al., Patterns 2025, arXiv:2403.20035). Input (B, in_channels, H, W), H and W
    divisible by 32; output logits (B, num_classes, H, W) (upstream: sigmoid probabilities).

    Args:
        in_channels: image channels. Default 3.
        num_classes: output channels. Default 1.
        c_list: the six widths. Default [8, 16, 24, 32, 48, 64].
        split_att: channel-attention heads, ``"fc"`` (Linear, default) or ``"conv"`` (Conv1d).
        bridge: use the SC-Att bridge. Default True (``False``: 32,843 parameters).
        output: ``"logits"`` (default) or ``"probabilities"`` (upstream's sigmoid).
    """

    #: modules the encoder uses (``create_model(..., features_only=True)`` keeps only these)
    encoder_modules = tuple(f"{m}{i}" for m in ("encoder", "ebn") for i in range(1, 6)) + ("encoder6",)
    downsample_factor = 32  # input sides must be multiples of this

    default_input_size = 256

    def __init__(self, in_channels: int = 3, num_classes: int = 1, c_list: Sequence[int] = (8, 16, 24, 32, 48, 64),
                 split_att: str = "fc", bridge: bool = True, output: str = "logits"):
        super().__init__()
        if len(c_list) != 6:
            raise ValueError(f"UltraLight VM-UNet: c_list needs 6 widths, got {list(c_list)}")
        if output not in ("logits", "probabilities"):
            raise ValueError(f"UltraLight VM-UNet: output must be 'logits' or 'probabilities', got {output!r}")
        c = list(c_list)
        self.in_channels, self.num_classes, self.c_list, self.bridge, self.output = \
            in_channels, num_classes, c, bridge, output
        self.encoder1 = nn.Sequential(nn.Conv2d(in_channels, c[0], 3, 1, 1))
        self.encoder2 = nn.Sequential(nn.Conv2d(c[0], c[1], 3, 1, 1))
        self.encoder3 = nn.Sequential(nn.Conv2d(c[1], c[2], 3, 1, 1))
        self.encoder4 = nn.Sequential(PVMLayer(c[2], c[3]))
        self.encoder5 = nn.Sequential(PVMLayer(c[3], c[4]))
        self.encoder6 = nn.Sequential(PVMLayer(c[4], c[5]))
        if bridge:
            self.scab = SCAttBridge(c[:5], split_att)
        self.decoder1 = nn.Sequential(PVMLayer(c[5], c[4]))
        self.decoder2 = nn.Sequential(PVMLayer(c[4], c[3]))
        self.decoder3 = nn.Sequential(PVMLayer(c[3], c[2]))
        self.decoder4 = nn.Sequential(nn.Conv2d(c[2], c[1], 3, 1, 1))
        self.decoder5 = nn.Sequential(nn.Conv2d(c[1], c[0], 3, 1, 1))
        for i in range(5):
            setattr(self, f"ebn{i + 1}", nn.GroupNorm(4, c[i]))
        for i in range(5):
            setattr(self, f"dbn{i + 1}", nn.GroupNorm(4, c[4 - i]))
        self.final = nn.Conv2d(c[0], num_classes, kernel_size=1)
        # each map is gelu(maxpool(ebn_i(encoder_i(x)))), no module's output: the input of encoder_{i+1}; the deepest,
        # gelu(encoder6(.)), is the input of decoder1 (timm's "forward_pre" hook points)
        self.feature_info = [dict(num_chs=c[i], reduction=2 ** (i + 1), module=f"encoder{i + 2}", hook_type="forward_pre")
                             for i in range(4)]
        self.feature_info.append(dict(num_chs=c[5], reduction=32, module="decoder1", hook_type="forward_pre"))
        self.apply(_upstream_init)

    def _encode(self, x: torch.Tensor):
        check_input_size(x, self.in_channels, 32, "UltraLight VM-UNet")
        skips = []
        for i in range(1, 6):
            x = F.gelu(F.max_pool2d(getattr(self, f"ebn{i}")(getattr(self, f"encoder{i}")(x)), 2, 2))
            skips.append(x)
        return skips, F.gelu(self.encoder6(x))

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Encoder maps at strides 2, 4, 8, 16 (after encoder1..4, norm, pool, GELU) and the encoder6 output
        (stride 32, 64 channels). The fifth skip (48 channels, also stride 32) is not listed."""
        skips, x = self._encode(x)
        return skips[:4] + [x]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, out = self._encode(x)
        if self.bridge:
            skips = self.scab(skips)
        t1, t2, t3, t4, t5 = skips
        up = lambda y: F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)  # noqa: E731
        out = F.gelu(self.dbn1(self.decoder1(out))) + t5
        out = F.gelu(up(self.dbn2(self.decoder2(out)))) + t4
        out = F.gelu(up(self.dbn3(self.decoder3(out)))) + t3
        out = F.gelu(up(self.dbn4(self.decoder4(out)))) + t2
        out = F.gelu(up(self.dbn5(self.decoder5(out)))) + t1
        out = up(self.final(out))
        return torch.sigmoid(out) if self.output == "probabilities" else out


@register_model("ultralight_vm_unet", paper="UltraLight VM-UNet (Wu et al., Patterns 2025, arXiv:2403.20035)")
def ultralight_vm_unet(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UltraLightVMUNet:
    """UltraLight VM-UNet, c_list [8,16,24,32,48,64], SC-Att bridge, 49,457 parameters; logits."""
    return UltraLightVMUNet(in_channels=in_channels, num_classes=num_classes, **kwargs)
