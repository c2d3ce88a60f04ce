"""LKM-UNet (2-D): nnU-Net residual U-Net with bidirectional pixel-level and window-level Mamba layers.

Paper: J. Wang, J. Chen, D. Chen, J. Wu, "Large Kernel Vision Mamba UNet for Medical Image Segmentation",
arXiv:2403.07332 (2024). Upstream: https://github.com/wjh892521292/LKM-UNet (commit 6615775,
``lkmunet/nnunetv2/nets/LKMUNet.py``, trainer ``nnUNetTrainerLKMUNet`` = nnU-Net's default trainer), described in
``upstream_mamba1_models.md`` §7; our own code on :mod:`mambaseg.models.blocks.nnunet_blocks` and
:class:`mambaseg.models.blocks.mamba1.Mamba`. Module names equal upstream's (``encoder.{stem,stages,mamba_layers,
w_mamba_layers}``, ``decoder.{encoder,stages,transpconvs,seg_layers}``, Mamba sub-modules without ``out_proj`` keys
and one layer-level ``out_proj``), so an upstream state dict loads with ``strict=True``.

Architecture (default = nnU-Net's 2-D plan for 256x256, 7 stages, widths 32..512): ``stem`` (one 3x3 conv + IN +
LeakyReLU) -> stage s: 2 x BasicBlockD (first strided; AvgPool + 1x1 conv skip where needed), then
``mamba_layers[s]`` (BiPixelMambaLayer) and ``w_mamba_layers[s]`` (BiWindowMambaLayer) -> decoder stage i:
ConvTranspose2d (kernel = stride), concat the skip (every skip, stage 0 included), 2 x BasicBlockD (first with a
1x1 projection), seg head. Both Mamba layers: LayerNorm, a forward and a backward Mamba (tokens flipped) whose
outputs (d_inner wide) are summed and projected by one shared ``out_proj``, plus a residual. He init (0.01) on
the convs, and every BasicBlockD's last norm starts at 0. Returns logits.

Upstream quirks, all kept:

* BiPixel regroups the map into a dilated grid of step w = 5 p (p = 2^((n - s + 1)//2 - 1)) only when H and W are
  divisible by w -- the multiplier fits 320x320 patches; for the 256 and 512 plans no stage is divisible, so the
  pixel layer is a global bidirectional scan at every stage (65,536 tokens at stage 0).
* BiWindow average-pools by p = 2^((n - s + 1)//2) // 2 (1 if 0) when divisible, scans globally, and upsamples
  (nearest) back; plan256: p = [8, 4, 4, 2, 2, 1, 1].
* Each Mamba's own ``out_proj`` is replaced by an identity; the layer's ``out_proj`` is a copy of the forward
  Mamba's (so its initial weights equal the forward Mamba's original projection).
* The decoder holds the encoder as a child (duplicated ``decoder.encoder.*`` keys).

Differences, each deliberate: ``deep_supervision`` defaults to False (upstream builder: True); the Mamba layers run
in float32 under any autocast (upstream: ``autocast(enabled=False)`` on CUDA); inputs not divisible by the
product of the strides raise a ValueError.
"""

from __future__ import annotations

import copy
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..blocks.mamba1 import Mamba
from ..blocks.nnunet_blocks import (NNUNetPlan, StackedConvBlocks, StackedResidualBlocks, check_deep_supervision,
                            deep_supervision_active, init_last_norm_before_add_to_zero, init_weights_he, nnunet_plan_2d)
from ..backbone import BackboneMixin
from ..registry import register_model
from ..blocks.umamba import NNUNetMambaBase, mamba_fp32

__all__ = ["LKMUNet", "BiPixelMambaLayer", "BiWindowMambaLayer", "ResidualBiMambaEncoder", "LKMUNetResDecoder"]


class _BiMamba(nn.Module):
    """LayerNorm + forward/backward Mamba (no own out_proj) + one shared ``out_proj``, on (B, L, C) tokens."""

    def __init__(self, dim: int, p: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.dim, self.p = dim, p
        self.norm = nn.LayerNorm(dim)
        self.mamba_forw = Mamba(d_model=dim, d_state=d_state, d_conv=d_conv, expand=expand, use_fast_path=False)
        self.out_proj = copy.deepcopy(self.mamba_forw.out_proj)
        self.mamba_backw = Mamba(d_model=dim, d_state=d_state, d_conv=d_conv, expand=expand, use_fast_path=False)
        self.mamba_forw.out_proj = nn.Identity()
        self.mamba_backw.out_proj = nn.Identity()

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, h, w): row-major tokens, bidirectional Mamba, shared projection."""
        b, c, h, w = x.shape
        n = self.norm(x.reshape(b, c, h * w).transpose(1, 2))
        y = self.mamba_forw(n) + self.mamba_backw(n.flip(1)).flip(1)
        return self.out_proj(y).transpose(1, 2).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, p={self.p}"


class BiPixelMambaLayer(_BiMamba):
    """Pixel-level bidirectional Mamba: on the dilated grids of step w = 5 p when H, W are divisible by w (one
    sequence per offset inside the w x w blocks), else on the whole map; plus the input (residual)."""

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        win = 5 * self.p
        if h % win == 0 and w % win == 0:
            hh, ww = h // win, w // win
            g = x.reshape(b, c, hh, win, ww, win).permute(0, 3, 5, 1, 2, 4).reshape(b * win * win, c, hh, ww)
            y = self.scan(g).reshape(b, win, win, c, hh, ww).permute(0, 3, 4, 1, 5, 2).reshape(b, c, h, w)
        else:
            y = self.scan(x)
        return y + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mamba_fp32(x, self._run)


class BiWindowMambaLayer(_BiMamba):
    """Window-level bidirectional Mamba: average-pool by p (when H, W are divisible), scan the pooled map,
    nearest-upsample back; plus the input (residual)."""

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p = self.p
        if p > 1 and h % p == 0 and w % p == 0:
            y = F.interpolate(self.scan(F.avg_pool2d(x, p, p)), scale_factor=p, mode="nearest")
        else:
            y = self.scan(x)
        return y + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mamba_fp32(x, self._run)


def lkm_pixel_p(n_stages: int, s: int) -> int:
    return 2 ** (((n_stages - s + 1) // 2) - 1)


def lkm_window_p(n_stages: int, s: int) -> int:
    return max(1, 2 ** ((n_stages - s + 1) // 2) // 2)


class ResidualBiMambaEncoder(nn.Module):
    """``stem``, ``stages`` (StackedResidualBlocks), ``mamba_layers`` (BiPixel), ``w_mamba_layers`` (BiWindow)."""

    def __init__(self, in_channels: int, plan: NNUNetPlan):
        super().__init__()
        f, k, s, n = plan.features, plan.kernel_sizes, plan.strides, plan.n_stages
        self.stem = StackedConvBlocks(1, in_channels, f[0], k[0], 1)
        self.stages = nn.Sequential(*[StackedResidualBlocks(plan.n_conv_encoder[i], f[i - 1] if i else f[0], f[i],
                                                            k[i], s[i]) for i in range(n)])
        self.mamba_layers = nn.ModuleList([BiPixelMambaLayer(f[i], lkm_pixel_p(n, i)) for i in range(n)])
        self.w_mamba_layers = nn.ModuleList([BiWindowMambaLayer(f[i], lkm_window_p(n, i)) for i in range(n)])
        self.output_channels = list(f)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage, pix, win in zip(self.stages, self.mamba_layers, self.w_mamba_layers):
            x = win(pix(stage(x)))
            skips.append(x)
        return skips


class LKMUNetResDecoder(nn.Module):
    """Stage i: ConvTranspose2d (C_below -> C_skip, kernel = stride, bias), concat the skip, StackedResidualBlocks
    (2 C_skip -> C_skip), seg head; holds ``encoder`` as a child."""

    def __init__(self, encoder: nn.Module, num_classes: int, plan: NNUNetPlan, deep_supervision: Union[bool, str] = False):
        super().__init__()
        self.deep_supervision = check_deep_supervision(deep_supervision)
        self.encoder = encoder
        self.num_classes = num_classes
        f, k, st, n = plan.features, plan.kernel_sizes, plan.strides, plan.n_stages
        stages, tconvs, segs = [], [], []
        for i in range(n - 1):
            below, skip, stride = f[n - 1 - i], f[n - 2 - i], st[n - 1 - i]
            tconvs.append(nn.ConvTranspose2d(below, skip, stride, stride, bias=True))
            stages.append(StackedResidualBlocks(plan.n_conv_decoder[i], 2 * skip, skip, k[n - 2 - i], 1))
            segs.append(nn.Conv2d(skip, num_classes, 1))
        self.stages = nn.ModuleList(stages)
        self.transpconvs = nn.ModuleList(tconvs)
        self.seg_layers = nn.ModuleList(segs)

    def forward(self, skips: List[torch.Tensor]) -> Union[torch.Tensor, List[torch.Tensor]]:
        x = skips[-1]
        outs = []
        ds = deep_supervision_active(self.deep_supervision, self.training)
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            x = stage(torch.cat((self.transpconvs[i](x), skips[-(i + 2)]), 1))
            if ds:
                outs.append(self.seg_layers[i](x))
            elif i == last:
                outs.append(self.seg_layers[-1](x))
        outs = outs[::-1]
        return outs if ds else outs[0]


class LKMUNet(NNUNetMambaBase, BackboneMixin):
    """LKM-UNet 2-D (Wang et al., 2024, arXiv:2403.07332). Input (B, in_channels, H, W), H and W divisible by the
    product of the strides (64 for the 256 plan); output logits (B, num_classes, H, W), or with
    ``deep_supervision`` a list of logits, full resolution first.

    Args:
        in_channels: image channels. Default 3.
        num_classes: output channels (nnU-Net: segmentation heads incl. background). Default 1.
        patch_size: nnU-Net plan: 256 (7 stages, default), 512 (8 stages), 64 (5 stages), ... The window sizes of
            the Mamba layers follow the number of stages.
        features_per_stage, strides, kernel_sizes, n_conv_per_stage, n_conv_per_stage_decoder: explicit plan
            lists instead of the canonical ones.
        deep_supervision: return every decoder stage's logits: True (always, upstream's builder default), False
            (default), or ``"train"`` (in training mode only, as nnU-Net trains and then validates).
    """

    arch_name = "LKM-UNet"

    def __init__(self, in_channels: int = 3, num_classes: int = 1, patch_size: int = 256,
                 features_per_stage: Optional[Sequence[int]] = None, strides: Optional[Sequence[int]] = None,
                 kernel_sizes: Optional[Sequence[int]] = None, n_conv_per_stage: Optional[Sequence[int]] = None,
                 n_conv_per_stage_decoder: Optional[Sequence[int]] = None, deep_supervision: Union[bool, str] = False):
        super().__init__()
        plan = nnunet_plan_2d(patch_size, features_per_stage, strides, kernel_sizes, n_conv_per_stage,
                              n_conv_per_stage_decoder, model=self.arch_name)
        self._setup(in_channels, num_classes, plan)
        self.encoder = ResidualBiMambaEncoder(in_channels, plan)
        self.decoder = LKMUNetResDecoder(self.encoder, num_classes, plan, deep_supervision)
        self.feature_info = [dict(num_chs=c, reduction=r, module=f"encoder.w_mamba_layers.{i}")
                             for i, (c, r) in enumerate(zip(plan.features, plan.reductions))]
        self.apply(init_weights_he)
        self.apply(init_last_norm_before_add_to_zero)

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The skips: each stage's output after its two Mamba layers."""
        self.check_input(x)
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        return self.decoder(self.forward_intermediates(x))


@register_model("lkm_unet", paper="LKM-UNet (Wang et al., 2024, arXiv:2403.07332)", default_size=256)
def lkm_unet(in_channels: int = 3, num_classes: int = 1, **kwargs) -> LKMUNet:
    """LKM-UNet 2-D, nnU-Net 256 plan (7 stages, 32..512), BiPixel + BiWindow Mamba after every stage."""
    return LKMUNet(in_channels=in_channels, num_classes=num_classes, **kwargs)
