"""VM-UNetV2: VMamba encoder + Semantics and Detail Infusion (SDI) decoder.

Paper: M. Zhang, Y. Yu, S. Jin, L. Gu, T. Ling, X. Tao, "VM-UNET-V2: Rethinking Vision Mamba UNet for Medical
Image Segmentation", arXiv:2403.09157 (2024). Upstream code: https://github.com/nobodyplayer1/VM-UNetV2
(``models/vmunet/vmunet_v2.py``), re-written here in our own code on the shared VMamba v0 blocks of
:mod:`mambaseg.models.blocks.vss`. Module and parameter names equal upstream's (the encoder sits in ``.vmunet``), so an
upstream VM-UNetV2 ``state_dict`` loads with ``strict=True``.

Architecture: VMamba v0 encoder (patch embedding + 4 stages, default depths [2, 2, 9, 2]) giving
f1 = patch-embedding output 96@H/4 (no VSS block applied), f2 192@H/8, f3 384@H/16, f4 768@H/32 (the outputs of
stages 1-3 after their patch merging). Per level: channel attention (avg- and max-pool, shared 1x1 convs
C -> C/16 -> C, sigmoid), spatial attention (7x7 conv on channel mean/max, sigmoid), ``Translayer`` (1x1 conv +
BatchNorm to 48 channels). SDI per level: each of the 4 features is resized to that level (adaptive average
pooling down, bilinear align_corners=True up), passed through its own 3x3 conv and multiplied in (Hadamard).
Decoder: y = f4''; y = ConvT(y) + f3''; y = ConvT(y) + f2''; y = ConvT(y) + f1'' (4x4 stride-2 transposed
convs); 1x1 ``seg_outs`` heads; bilinear x4 upsampling.

Upstream quirks kept by default (so upstream weights behave the same), each with a switch:

* **Unused encoder stage 4.** Upstream runs the 4th VMamba stage (2 VSS blocks at 768 channels, 8.91 M
  parameters) and discards its output: its parameters never receive gradients (DDP needs
  ``find_unused_parameters=True``). ``use_last_stage=False`` does not build or run it (13.86 M parameters
  instead of 22.77 M for [2, 2, 9, 2]; upstream state dicts then load with ``strict=False`` only).
* **"Deep supervision" is one output.** With ``deep_supervision=True`` (upstream default) the output is
  ``seg3 + deconv6(seg2)`` (the H/4 head upsampled x4 plus the H/8 head upsampled x4 and by a 3x3 stride-2
  transposed conv), not several supervised outputs. ``deconv5`` and ``seg_outs[0]``/``seg_outs[1]`` exist (and
  are in the state dict) but are never used; we do not compute them. With ``deep_supervision=False`` the output
  is ``seg3`` upsampled. Upstream's ``deconv6`` is 1 -> 1 channel, so its deep-supervision path only works for
  one class; here ``deconv6`` is ``num_classes -> num_classes`` (identical for one class).
* Grayscale: a 1-channel input fed to a 3-channel model is repeated to 3 channels (``gray_to_rgb=True``);
  ``in_channels=1`` builds a real 1-channel patch embedding.

Other differences: returns **logits** (upstream applies a sigmoid for one class); the attention and
``Translayer`` input widths follow the encoder widths (upstream hard-codes 2/4/8/16 x ``mid_channel``, the
same numbers for the default ``mid_channel=48``); SDI resizes to the anchor's full (H, W) (upstream assumes
square maps); input sizes not divisible by 32 raise a ValueError.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..pretrained import register_pretrained_loader
from ..pretrained_vmamba import load_vmamba_into_vmunet_v2
from ..backbone import BackboneMixin
from ..registry import register_model
from ..blocks.vss import VSSEncoder, init_vss_weights, prepare_input

__all__ = ["VMUNetV2", "ChannelAttention", "SpatialAttention", "BasicConv2d", "SDI"]


class ChannelAttention(nn.Module):
    """CBAM channel attention map: sigmoid(fc2(relu(fc1(avgpool x))) + fc2(relu(fc1(maxpool x)))), (B, C, 1, 1).
    ``fc1``/``fc2`` are 1x1 convs without bias, C -> C//16 -> C."""

    def __init__(self, in_planes: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(in_planes, in_planes // 16, 1, bias=False)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Conv2d(in_planes // 16, in_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(self.relu1(self.fc1(self.avg_pool(x))))
        mx = self.fc2(self.relu1(self.fc1(self.max_pool(x))))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention map: sigmoid(conv7x7([mean_c x, max_c x])), (B, 1, H, W); ``conv1`` has no bias."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size not in (3, 7):
            raise ValueError(f"SpatialAttention: kernel_size must be 3 or 7, got {kernel_size}")
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv1(x))


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm. Upstream also builds a ReLU that its forward never applies; so do we
    (``relu`` is kept as an unused attribute only for the module layout)."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SDI(nn.Module):
    """Semantics and Detail Infusion: product over the 4 levels of conv3x3_i(resize(f_i -> anchor size)).

    Larger maps are adaptive-average-pooled, smaller ones bilinearly upsampled (align_corners=True); the running
    product starts from ones.
    """

    def __init__(self, channel: int):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(channel, channel, kernel_size=3, padding=1) for _ in range(4)])

    def forward(self, xs: Sequence[torch.Tensor], anchor: torch.Tensor) -> torch.Tensor:
        size = (int(anchor.shape[-2]), int(anchor.shape[-1]))   # static under ONNX tracing
        ans = torch.ones_like(anchor)
        for conv, x in zip(self.convs, xs):
            if x.shape[-1] > size[-1]:
                x = F.adaptive_avg_pool2d(x, size)
            elif x.shape[-1] < size[-1]:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
            ans = ans * conv(x)
        return ans


class VMUNetV2(BackboneMixin, nn.Module):
    """VM-UNetV2 (Zhang et al., 2024, arXiv:2403.09157). Returns logits (B, num_classes, H, W).

    Args:
        in_channels: input channels. Default: 3.
        num_classes: output channels (logits). Default: 1.
        mid_channel: width of the SDI decoder. Default: 48.
        depths: VSS blocks per encoder stage. Default: [2, 2, 9, 2] (the repository's config).
        drop_path_rate: maximum stochastic-depth rate of the encoder. Default: 0.2.
        deep_supervision: output ``seg3 + deconv6(seg2)`` (upstream default) instead of ``seg3``. Default: True.
        use_last_stage: build and run encoder stage 4 whose output upstream discards. Default: True
            (upstream layout; its parameters get no gradient). False drops it.
        embed_dim: channels of the first encoder stage. Default: 96.
        d_state: SSM state size. Default: 16.
        gray_to_rgb: repeat a 1-channel input to 3 channels when ``in_channels == 3`` (upstream quirk).
            Default: True.

    H and W must be divisible by 32.

    Backbone: ``feature_info`` / ``forward_intermediates`` are the four maps f1..f4 the SDI decoder takes (the
    patch embedding at H/4, then the outputs of encoder stages 1-3 after their PatchMerging2D: 96@4, 192@8,
    384@16, 768@32); stage 4, whose output upstream discards, is not run.
    """

    default_input_size = 256

    downsample_factor = 32  # input H and W must be multiples of it (read by the engine's size check)

    def __init__(self, in_channels: int = 3, num_classes: int = 1, mid_channel: int = 48,
                 depths: Sequence[int] = (2, 2, 9, 2), drop_path_rate: float = 0.2, deep_supervision: bool = True,
                 use_last_stage: bool = True, embed_dim: int = 96, d_state: int = 16, gray_to_rgb: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        self.use_last_stage = use_last_stage
        self.gray_to_rgb = gray_to_rgb
        dims = [embed_dim * 2 ** i for i in range(4)]               # 96, 192, 384, 768 = 2/4/8/16 x 48

        self.ca_1, self.sa_1 = ChannelAttention(dims[0]), SpatialAttention()
        self.ca_2, self.sa_2 = ChannelAttention(dims[1]), SpatialAttention()
        self.ca_3, self.sa_3 = ChannelAttention(dims[2]), SpatialAttention()
        self.ca_4, self.sa_4 = ChannelAttention(dims[3]), SpatialAttention()
        self.Translayer_1 = BasicConv2d(dims[0], mid_channel, 1)
        self.Translayer_2 = BasicConv2d(dims[1], mid_channel, 1)
        self.Translayer_3 = BasicConv2d(dims[2], mid_channel, 1)
        self.Translayer_4 = BasicConv2d(dims[3], mid_channel, 1)
        self.sdi_1, self.sdi_2 = SDI(mid_channel), SDI(mid_channel)
        self.sdi_3, self.sdi_4 = SDI(mid_channel), SDI(mid_channel)
        self.seg_outs = nn.ModuleList([nn.Conv2d(mid_channel, num_classes, 1, 1) for _ in range(4)])
        up = dict(kernel_size=4, stride=2, padding=1, bias=False)
        self.deconv2 = nn.ConvTranspose2d(mid_channel, mid_channel, **up)
        self.deconv3 = nn.ConvTranspose2d(mid_channel, mid_channel, **up)
        self.deconv4 = nn.ConvTranspose2d(mid_channel, mid_channel, **up)
        self.deconv5 = nn.ConvTranspose2d(mid_channel, mid_channel, **up)   # unused upstream too
        self.deconv6 = nn.ConvTranspose2d(num_classes, num_classes, 3, stride=2, padding=1, output_padding=1)

        self.vmunet = VSSEncoder(in_channels, depths, embed_dim, d_state, drop_path_rate,
                                 num_stages=4 if use_last_stage else 3)
        self.vmunet.apply(init_vss_weights)
        mods = ["vmunet.patch_embed"] + [f"vmunet.layers.{i}.downsample" for i in range(3)]
        self.feature_info = [dict(num_chs=dims[i], reduction=4 * 2 ** i, module=mods[i]) for i in range(4)]
        self.encoder_modules = ("vmunet.patch_embed", "vmunet.layers.0", "vmunet.layers.1", "vmunet.layers.2")

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """f1..f4 (B, C_i, H/r_i, W/r_i), channels-first, as the decoder uses them (see ``feature_info``)."""
        x = self.vmunet.patch_embed(prepare_input(x, self.in_channels, self.gray_to_rgb, 32, "VM-UNetV2"))
        feats = [x]
        for layer in list(self.vmunet.layers)[:3]:
            x = layer(x)
            feats.append(x)
        return [f.permute(0, 3, 1, 2) for f in feats]

    def forward_encoder(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The four features f1..f4 (channels-first) the decoder uses."""
        last, skips = self.vmunet.forward_features(x)
        feats = skips if self.use_last_stage else skips + [last]      # stage-4 output `last` is discarded
        return [f.permute(0, 3, 1, 2) for f in feats]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = prepare_input(x, self.in_channels, self.gray_to_rgb, 32, "VM-UNetV2")
        f = self.forward_encoder(x)
        att = [(self.ca_1, self.sa_1, self.Translayer_1), (self.ca_2, self.sa_2, self.Translayer_2),
               (self.ca_3, self.sa_3, self.Translayer_3), (self.ca_4, self.sa_4, self.Translayer_4)]
        for i, (ca, sa, trans) in enumerate(att):
            fi = ca(f[i]) * f[i]
            fi = sa(fi) * fi
            f[i] = trans(fi)
        f11 = self.sdi_1(f, f[0])
        f21 = self.sdi_2(f, f[1])
        f31 = self.sdi_3(f, f[2])
        f41 = self.sdi_4(f, f[3])
        y = self.deconv2(f41) + f31
        y = self.deconv3(y) + f21
        seg2 = self.seg_outs[2](y)
        y = self.deconv4(y) + f11
        seg3 = F.interpolate(self.seg_outs[3](y), scale_factor=4, mode="bilinear")
        if self.deep_supervision:
            return seg3 + self.deconv6(F.interpolate(seg2, scale_factor=4, mode="bilinear"))
        return seg3


@register_model("vmunet_v2", paper="VM-UNetV2 (Zhang et al., 2024, arXiv:2403.09157)")
def vmunet_v2(in_channels: int = 3, num_classes: int = 1, **kwargs) -> VMUNetV2:
    """VM-UNetV2, repository config (encoder [2,2,9,2], SDI decoder width 48, deep supervision), 256x256."""
    return VMUNetV2(in_channels=in_channels, num_classes=num_classes, **kwargs)


register_pretrained_loader(VMUNetV2)(load_vmamba_into_vmunet_v2)
