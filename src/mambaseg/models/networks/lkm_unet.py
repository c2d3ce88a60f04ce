"""LKM-UNet (2-D and 3-D): nnU-Net residual U-Net with bidirectional pixel-level and window-level Mamba layers.

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

3-D (``spatial_dims=3``, registered as ``lkm_unet_3d``, default plan ``"abd40"``; ``upstream_3d_models.md`` §6): the
same class with Conv3d / InstanceNorm3d / ConvTranspose3d and per-axis kernels and strides; the Mamba layers switch
to their 3-D grouping: BiPixel windows are (5p, 7p, 6p) along (D, H, W) -- each sequence holds the voxels of one
offset (r1, r2, r3) inside the p1 x p2 x p3 blocks, a dilated grid ordered row-major over the block indices -- used
only when all three axes are divisible, else one global sequence; BiWindow average-pools by p on all three axes
when divisible. The (5, 7, 6) multipliers fit the 40 x 224 x 192 abd40 patch (every stage windowed); at 128^3
(brats128) every BiPixel layer is a global scan (2,097,152 tokens at stage 0), as upstream. abd40 (1 -> 14):
63,782,246 parameters, as upstream.

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
from ..blocks.nnunet_blocks import (NNUNetPlan, StackedConvBlocks, StackedResidualBlocks, UNetDecoder,
                                    init_last_norm_before_add_to_zero, init_weights_he, nnunet_plan)
from ..backbone import BackboneMixin
from ..registry import register_model
from ..blocks.umamba import NNUNetMambaBase, mamba_fp32, nnunet_feature_info

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
        """(B, C, *spatial) -> same: row-major tokens, bidirectional Mamba, shared projection."""
        b, c = x.shape[:2]
        n = self.norm(x.reshape(b, c, -1).transpose(1, 2))
        y = self.mamba_forw(n) + self.mamba_backw(n.flip(1)).flip(1)
        return self.out_proj(y).transpose(1, 2).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, p={self.p}"


#: BiPixel window multipliers per spatial axis (upstream: 5 p in 2-D, (5 p, 7 p, 6 p) in 3-D)
PIXEL_WINDOW = {2: (5, 5), 3: (5, 7, 6)}


def pixel_windows(p: int, spatial_dims: int):
    return tuple(m * p for m in PIXEL_WINDOW[spatial_dims])


class BiPixelMambaLayer(_BiMamba):
    """Pixel-level bidirectional Mamba: on the dilated grids of step w (2-D: (5p, 5p); 3-D: (5p, 7p, 6p)) when
    every axis is divisible by its window (one sequence per offset inside the blocks, row-major over the block
    indices), else on the whole map; plus the input (residual)."""

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        size = tuple(x.shape[2:])
        win = pixel_windows(self.p, len(size))
        if all(s % w == 0 for s, w in zip(size, win)):
            nb = tuple(s // w for s, w in zip(size, win))
            k = len(size)
            # (B, C, n1, w1, n2, w2, ...) -> (B, w1, w2, ..., C, n1, n2, ...)
            split = [b, c] + [v for pair in zip(nb, win) for v in pair]
            perm = [0] + [3 + 2 * i for i in range(k)] + [1] + [2 + 2 * i for i in range(k)]
            g = x.reshape(split).permute(perm)
            groups = 1
            for w in win:
                groups *= w
            y = self.scan(g.reshape((b * groups, c) + nb)).reshape(g.shape)
            inv = [0] * len(perm)
            for i, q in enumerate(perm):
                inv[q] = i
            y = y.permute(inv).reshape(x.shape)
        else:
            y = self.scan(x)
        return y + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mamba_fp32(x, self._run)


class BiWindowMambaLayer(_BiMamba):
    """Window-level bidirectional Mamba: average-pool by p (when every axis is divisible), scan the pooled map,
    nearest-upsample back; plus the input (residual)."""

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        p = self.p
        if p > 1 and all(s % p == 0 for s in size):
            pool = F.avg_pool2d if len(size) == 2 else F.avg_pool3d
            y = F.interpolate(self.scan(pool(x, p, p)), scale_factor=p, mode="nearest")
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
        f, k, s, n, sd = plan.features, plan.kernel_sizes, plan.strides, plan.n_stages, plan.spatial_dims
        self.stem = StackedConvBlocks(1, in_channels, f[0], k[0], 1, spatial_dims=sd)
        stages = [StackedResidualBlocks(plan.n_conv_encoder[i], f[i - 1] if i else f[0], f[i], k[i], s[i],
                                        spatial_dims=sd) for i in range(n)]
        # upstream: Sequential in 2-D, ModuleList in 3-D (same keys)
        self.stages = nn.Sequential(*stages) if sd == 2 else nn.ModuleList(stages)
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


class LKMUNetResDecoder(UNetDecoder):
    """LKM-UNet's ``UNetResDecoder``: nnU-Net's :class:`UNetDecoder` with residual stages. Stage i:
    ConvTranspose (C_below -> C_skip, kernel = stride, bias), concat the skip, StackedResidualBlocks
    (2 C_skip -> C_skip), seg head; holds ``encoder`` as a child."""

    def __init__(self, encoder: nn.Module, num_classes: int, plan: NNUNetPlan,
                 deep_supervision: Union[bool, str] = False):
        super().__init__(encoder, num_classes, plan, plan.n_conv_decoder, deep_supervision, residual=True)


class LKMUNet(NNUNetMambaBase, BackboneMixin):
    """LKM-UNet (Wang et al., 2024, arXiv:2403.07332). Input (B, in_channels, H, W) or, with ``spatial_dims=3``,
    (B, in_channels, D, H, W), every axis divisible by the product of the strides along it (64 for the 2-D 256
    plan; 8 x 32 x 32 for abd40, 32 for brats128); output logits of the input's size, or with
    ``deep_supervision`` a list of logits, full resolution first.

    Args:
        in_channels: image channels. Default 3.
        num_classes: output channels (nnU-Net: segmentation heads incl. background). Default 1.
        patch_size: nnU-Net plan: 2-D 256 (7 stages, default), 512 (8 stages), 64 (5 stages), ...; 3-D
            ``"abd40"`` (default), ``"brats128"``, an int (cube) or a (D, H, W) tuple. The window sizes of the Mamba
            layers follow the number of stages.
        features_per_stage, strides, kernel_sizes, n_conv_per_stage, n_conv_per_stage_decoder: explicit plan
            lists instead of the canonical ones.
        deep_supervision: return every decoder stage's logits: True (always, upstream's builder default), False
            (default), or ``"train"`` (in training mode only, as nnU-Net trains and then validates).
        spatial_dims: 2 (default) or 3.
    """

    arch_name = "LKM-UNet"

    def __init__(self, in_channels: int = 3, num_classes: int = 1, patch_size=None,
                 features_per_stage: Optional[Sequence[int]] = None, strides: Optional[Sequence] = None,
                 kernel_sizes: Optional[Sequence] = None, n_conv_per_stage: Optional[Sequence[int]] = None,
                 n_conv_per_stage_decoder: Optional[Sequence[int]] = None, deep_supervision: Union[bool, str] = False,
                 spatial_dims: int = 2):
        super().__init__()
        if patch_size is None:
            patch_size = 256 if spatial_dims == 2 else "abd40"
        plan = nnunet_plan(patch_size, spatial_dims, features_per_stage, strides, kernel_sizes, n_conv_per_stage,
                           n_conv_per_stage_decoder, model=self.arch_name)
        self._setup(in_channels, num_classes, plan)
        self.encoder = ResidualBiMambaEncoder(in_channels, plan)
        self.decoder = LKMUNetResDecoder(self.encoder, num_classes, plan, deep_supervision)
        self.feature_info = nnunet_feature_info(plan, [f"encoder.w_mamba_layers.{i}" for i in range(plan.n_stages)])
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


@register_model("lkm_unet_3d", paper="LKM-UNet (Wang et al., 2024, arXiv:2403.07332)", default_size=128,
                spatial_dims=3)
def lkm_unet_3d(in_channels: int = 1, num_classes: int = 14, **kwargs) -> LKMUNet:
    """LKM-UNet 3-D, nnU-Net 3d_fullres plan (default abd40: 40x224x192, 6 stages), (5p, 7p, 6p) pixel windows."""
    return LKMUNet(in_channels=in_channels, num_classes=num_classes, **_three_d(kwargs))


def _three_d(kwargs: dict) -> dict:
    if kwargs.get("spatial_dims", 3) != 3:
        raise ValueError("lkm_unet_3d is a 3-D network (spatial_dims=3); use lkm_unet for 2-D")
    return {**kwargs, "spatial_dims": 3}
