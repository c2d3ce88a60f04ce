"""H-vmunet: high-order Vision Mamba UNet.

Paper: R. Wu, Y. Liu, P. Liang, Q. Chang, "H-vmunet: High-order Vision Mamba UNet for Medical Image
Segmentation", arXiv:2403.13642 (Neurocomputing 2025, doi:10.1016/j.neucom.2025.129447). Upstream code:
https://github.com/wurenkai/H-vmunet (``models/H_vmunet.py`` on VM-UNet's v0 SS2D copy ``models/vmamba.py``),
re-written here in our own code on the v0 :class:`~mambaseg.models.blocks.vss.SS2D` (used bare, channels-last, as
upstream) and :class:`~mambaseg.models.blocks.vss_v2.LayerNorm2d`. Module and parameter names equal upstream's
(``encoder1..6``, ``decoder1..5``, ``ebn1..5``, ``dbn1..5``, ``scab.{catt, satt}``, ``final``; each Block's
``gamma1/2``, ``norm1/2``, ``pwconv1/2``, ``H_SS2D.{proj_in, dwconv, pws, ss2d_in, ss2d_k, proj_out}``), so an
upstream ``state_dict`` (1,249 keys) loads with ``strict=True``. 8,972,623 parameters for 3 channels / 1 class
(ISIC 2017), of which 403,392 (the 16 ``complex_weight`` tensors) are never used.

Architecture (c_list [8, 16, 32, 64, 128, 256]): encoder1/2 plain 3x3 convs; encoder3..6 two high-order Blocks
(orders 2, 3, 4, 5) then a 3x3 conv; each of encoder1..5 followed by GroupNorm(4) -> maxpool 2 -> GELU (encoder6:
GELU only); the SC_Att_Bridge (shared dilated 7x7 spatial attention, then channel attention from a Conv1d over
the 248 concatenated channel means and per-level Linear + sigmoid) on t1..t5; decoder1..4 two Blocks (orders
5, 4, 3, 2 at 256..32 channels) + a 3x3 conv, decoder5 a 3x3 conv, each followed by GroupNorm(4) -> bilinear x2
(align_corners; not after decoder1) -> GELU -> + bridged skip; ``final`` 1x1 conv -> bilinear x2.

* **Block** (HorNet style): ``x + DropPath(gamma1 * H_SS2D(LN_cf(x)))`` then ``x + DropPath(gamma2 * MLP(LN_cl(x)))``
  (MLP Linear C->4C, GELU, Linear), layer scales initialised to 1e-6 (so at init the SSM path barely matters).
* **H_SS2D** (order n, widths dims = [C/2^(n-1), ..., C]): 1x1 ``proj_in`` C -> 2C, split into pwa (dims[0]) and
  abc (sum(dims)); abc -> Local_SS2D -> * 1/3 -> split by dims into g0..g_{n-1}; x = ss2d_in(pwa * g0);
  x = ss2d_k(pws[k-1](x) * g_k) for k = 1..n-1; 1x1 ``proj_out``.
* **Local_SS2D**: channel-first LN, halves: depthwise 3x3 on the first, v0 SS2D on the second, re-interleaved
  channel by channel (2i from the conv, 2i+1 from the SS2D), channel-first LN.

Upstream behaviour kept, and deliberate differences:

* **Upstream returns sigmoid probabilities**; this returns the logits (the map before that sigmoid; upstream's
  output is ``torch.sigmoid`` of it, channel-wise also for several classes). mambaseg's losses take logits.
* The unused ``complex_weight`` of every Local_SS2D is kept (state-dict compatibility; it counts in the
  published 8.97 M) and gets no gradient. decoder1's two Blocks both use drop-path index 6 (as upstream).
* LayerNorm eps 1e-6 in Blocks and Local_SS2D (upstream's own LayerNorm), 1e-5 in every SS2D ``out_norm``.
* Init as upstream ``_init_weights``: Linear trunc-normal 0.02 / bias 0, Conv2d N(0, sqrt(2 / fan_out)) / bias 0
  (also the SS2D depthwise convs), Conv1d N(0, sqrt(2 / (k * out))), norms 1 / 0, gamma 1e-6; SS2D dt/A/D as v0.
* No deep supervision (upstream has none). Input sides must be multiples of 32 (ValueError otherwise).
"""

from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbone import BackboneMixin
from ..blocks.layers import DropPath, check_input_size, trunc_normal_
from ..registry import register_model
from ..blocks.vss import SS2D
from ..blocks.vss_v2 import LayerNorm2d

__all__ = ["HVMUNet", "HBlock", "H_SS2D", "Local_SS2D", "SC_Att_Bridge"]

# (h, w) of each stage's unused complex_weight, as upstream hard-codes them
_CW_ENC = {16: (14, 8), 32: (14, 8), 64: (24, 13), 128: (12, 7)}
_CW_DEC = {256: (12, 7), 128: (24, 13), 64: (14, 8), 32: (14, 8)}


class Local_SS2D(nn.Module):  # noqa: N801 (upstream name)
    """Channel-first LN -> [dw3x3(first half), SS2D(second half)] interleaved channel by channel -> LN."""

    def __init__(self, dim: int, h: int = 14, w: int = 8):
        super().__init__()
        half = dim // 2
        self.dw = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.complex_weight = nn.Parameter(torch.empty(half, h, w, 2))   # unused in forward (as upstream)
        trunc_normal_(self.complex_weight, std=0.02)
        self.pre_norm = LayerNorm2d(dim, eps=1e-6)
        self.post_norm = LayerNorm2d(dim, eps=1e-6)
        self.SS2D = SS2D(d_model=half, d_state=16, dropout=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(x)
        x1, x2 = x.chunk(2, dim=1)
        x1 = self.dw(x1)
        x2 = self.SS2D(x2.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        B, C, H, W = x1.shape
        x = torch.stack([x1, x2], dim=2).reshape(B, 2 * C, H, W)       # channel 2i = x1[i], 2i+1 = x2[i]
        return self.post_norm(x)


class H_SS2D(nn.Module):  # noqa: N801 (upstream name)
    """High-order 2-D selective scan of order ``order`` (see the module docstring)."""

    def __init__(self, dim: int, order: int = 5, h: int = 14, w: int = 8, s: float = 1.0 / 3.0):
        super().__init__()
        self.order = order
        self.dims = [dim // 2 ** i for i in range(order)][::-1]
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        self.dwconv = Local_SS2D(sum(self.dims), h, w)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.pws = nn.ModuleList([nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1)])
        self.scale = s
        self.ss2d_in = SS2D(d_model=self.dims[0], d_state=16, dropout=0.0)
        for i in range(1, order):
            setattr(self, f"ss2d_{i}", SS2D(d_model=self.dims[i], d_state=16, dropout=0.0))

    @staticmethod
    def _ss2d(m: SS2D, x: torch.Tensor) -> torch.Tensor:
        return m(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pwa, abc = torch.split(self.proj_in(x), (self.dims[0], sum(self.dims)), dim=1)
        gs = torch.split(self.dwconv(abc) * self.scale, self.dims, dim=1)
        x = self._ss2d(self.ss2d_in, pwa * gs[0])
        for i in range(1, self.order):
            x = self._ss2d(getattr(self, f"ss2d_{i}"), self.pws[i - 1](x) * gs[i])
        return self.proj_out(x)


class HBlock(nn.Module):
    """Upstream ``Block``: HorNet-style block with H_SS2D and an MLP, per-channel layer scales ``gamma1/2``."""

    def __init__(self, dim: int, order: int, h: int, w: int, drop_path: float = 0.0,
                 layer_scale_init_value: float = 1e-6):
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.H_SS2D = H_SS2D(dim, order, h, w)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma1 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.gamma2 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1[:, None, None] * self.H_SS2D(self.norm1(x)))
        y = self.pwconv2(self.act(self.pwconv1(self.norm2(x.permute(0, 2, 3, 1)))))
        return x + self.drop_path((self.gamma2 * y).permute(0, 3, 1, 2))


class Spatial_Att_Bridge(nn.Module):  # noqa: N801
    def __init__(self):
        super().__init__()
        self.shared_conv2d = nn.Sequential(nn.Conv2d(2, 1, 7, stride=1, padding=9, dilation=3), nn.Sigmoid())

    def forward(self, ts: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return [self.shared_conv2d(torch.cat([t.mean(1, keepdim=True), t.amax(1, keepdim=True)], dim=1))
                for t in ts]


class Channel_Att_Bridge(nn.Module):  # noqa: N801
    def __init__(self, c_list: Sequence[int]):
        super().__init__()
        total = sum(c_list[:-1])
        self.get_all_att = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
        for i, c in enumerate(c_list[:-1]):
            setattr(self, f"att{i + 1}", nn.Linear(total, c))
        self.n = len(c_list) - 1

    def forward(self, ts: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        att = torch.cat([t.mean((2, 3)) for t in ts], dim=1)[:, None, :]     # (B, 1, 248)
        att = self.get_all_att(att)
        return [torch.sigmoid(getattr(self, f"att{i + 1}")(att))[:, 0, :, None, None].expand_as(t)
                for i, t in enumerate(ts)]


class SC_Att_Bridge(nn.Module):  # noqa: N801
    """out_i = catt_i(u) * u_i + satt_i * t_i with u_i = t_i + satt_i * t_i."""

    def __init__(self, c_list: Sequence[int]):
        super().__init__()
        self.catt = Channel_Att_Bridge(c_list)
        self.satt = Spatial_Att_Bridge()

    def forward(self, ts: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        sat = [a * t for a, t in zip(self.satt(ts), ts)]
        u = [t + s for t, s in zip(ts, sat)]
        return [a * ui + s for a, ui, s in zip(self.catt(u), u, sat)]


def _init_h_vmunet(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv1d):
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.out_channels)))
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class HVMUNet(BackboneMixin, nn.Module):
    """H-vmunet (Wu et al., 2024, arXiv:2403.13642). Returns logits (B, num_classes, H, W); upstream returns
    ``sigmoid`` of them.

    Args:
        in_channels: input channels. Default: 3.
        num_classes: output channels. Default: 1.
        c_list: widths of the six levels. Default: [8, 16, 32, 64, 128, 256].
        drop_path_rate: stochastic depth (linspace 0 -> rate over 8 Blocks). Default: 0.4.
        bridge: the SC_Att_Bridge on the skips. Default: True.

    H and W must be divisible by 32.
    """

    #: modules the encoder uses (``create_model(..., features_only=True)`` keeps only these)
    encoder_modules = tuple(f"{m}{i}" for m in ("encoder", "ebn") for i in range(1, 6)) + ("encoder6",)
    downsample_factor = 32  # input sides must be multiples of this

    default_input_size = 256

    def __init__(self, in_channels: int = 3, num_classes: int = 1, c_list: Sequence[int] = (8, 16, 32, 64, 128, 256),
                 drop_path_rate: float = 0.4, bridge: bool = True):
        super().__init__()
        c = list(c_list)
        if len(c) != 6:
            raise ValueError(f"H-vmunet: c_list must have 6 widths, got {c!r}")
        self.in_channels, self.num_classes, self.bridge = in_channels, num_classes, bridge
        dpr = torch.linspace(0, drop_path_rate, 8, device="cpu").tolist()

        def blocks(dim, order, cw, idx):
            return [HBlock(dim, order, *cw[dim], drop_path=dpr[i]) for i in idx]

        self.encoder1 = nn.Sequential(nn.Conv2d(in_channels, c[0], 3, padding=1))
        self.encoder2 = nn.Sequential(nn.Conv2d(c[0], c[1], 3, padding=1))
        self.encoder3 = nn.Sequential(*blocks(c[1], 2, _CW_ENC, (0, 1)), nn.Conv2d(c[1], c[2], 3, padding=1))
        self.encoder4 = nn.Sequential(*blocks(c[2], 3, _CW_ENC, (2, 3)), nn.Conv2d(c[2], c[3], 3, padding=1))
        self.encoder5 = nn.Sequential(*blocks(c[3], 4, _CW_ENC, (4, 5)), nn.Conv2d(c[3], c[4], 3, padding=1))
        self.encoder6 = nn.Sequential(*blocks(c[4], 5, _CW_ENC, (6, 7)), nn.Conv2d(c[4], c[5], 3, padding=1))
        if bridge:
            self.scab = SC_Att_Bridge(c)
        self.decoder1 = nn.Sequential(*blocks(c[5], 5, _CW_DEC, (6, 6)), nn.Conv2d(c[5], c[4], 3, padding=1))
        self.decoder2 = nn.Sequential(*blocks(c[4], 4, _CW_DEC, (4, 5)), nn.Conv2d(c[4], c[3], 3, padding=1))
        self.decoder3 = nn.Sequential(*blocks(c[3], 3, _CW_DEC, (2, 3)), nn.Conv2d(c[3], c[2], 3, padding=1))
        self.decoder4 = nn.Sequential(*blocks(c[2], 2, _CW_DEC, (0, 1)), nn.Conv2d(c[2], c[1], 3, padding=1))
        self.decoder5 = nn.Sequential(nn.Conv2d(c[1], c[0], 3, padding=1))
        for i in range(5):
            setattr(self, f"ebn{i + 1}", nn.GroupNorm(4, c[i]))
        for i in range(5):
            setattr(self, f"dbn{i + 1}", nn.GroupNorm(4, c[4 - i]))
        self.final = nn.Conv2d(c[0], num_classes, 1)
        self.apply(_init_h_vmunet)
        # t1..t4 (strides 2..16) and encoder6 (stride 32); t5 (128@H/32, encoder6's input) shares encoder6's
        # stride and is left out so that the reductions increase
        # t_i = gelu(maxpool(ebn_i(encoder_i(x)))) is no module's output: it is the input of encoder_{i+1}, and
        # the deepest map gelu(encoder6(.)) is the input of decoder1 (timm's "forward_pre" hook points)
        self.feature_info = ([{"num_chs": c[i], "reduction": 2 ** (i + 1), "module": f"encoder{i + 2}",
                               "hook_type": "forward_pre"} for i in range(4)]
                             + [{"num_chs": c[5], "reduction": 32, "module": "decoder1", "hook_type": "forward_pre"}])

    def _encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"H-vmunet: expected a torch.Tensor, got {type(x).__name__}")
        check_input_size(x, self.in_channels, 32, "H-vmunet")
        ts = []
        for i in range(5):
            x = F.gelu(F.max_pool2d(getattr(self, f"ebn{i + 1}")(getattr(self, f"encoder{i + 1}")(x)), 2, 2))
            ts.append(x)
        ts.append(F.gelu(self.encoder6(x)))
        return ts

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Encoder maps t1..t4 (8@H/2 .. 64@H/16, before the bridge) and encoder6's output (256@H/32)."""
        ts = self._encode(x)
        return ts[:4] + ts[5:]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *ts, out = self._encode(x)
        if self.bridge:
            ts = self.scab(ts)
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True)  # noqa: E731
        out = F.gelu(self.dbn1(self.decoder1(out))) + ts[4]
        for i, dec in enumerate((self.decoder2, self.decoder3, self.decoder4, self.decoder5)):
            out = F.gelu(up(getattr(self, f"dbn{i + 2}")(dec(out)))) + ts[3 - i]
        return up(self.final(out))


@register_model("h_vmunet", paper="H-vmunet (Wu et al., 2024, arXiv:2403.13642)")
def h_vmunet(in_channels: int = 3, num_classes: int = 1, **kwargs) -> HVMUNet:
    """H-vmunet: high-order 2-D selective scans (H_SS2D) in HorNet-style blocks, SC attention bridge; logits."""
    return HVMUNet(in_channels=in_channels, num_classes=num_classes, **kwargs)
