"""U-Mamba Bot (2-D): nnU-Net residual U-Net with one Mamba layer at the bottleneck.

Paper: J. Ma, F. Li, B. Wang, "U-Mamba: Enhancing Long-range Dependency for Biomedical Image Segmentation",
arXiv:2401.04722 (2024). Upstream: https://github.com/bowang-lab/U-Mamba (commit 28459e3,
``umamba/nnunetv2/nets/UMambaBot_2d.py``, trainer ``nnUNetTrainerUMambaBot``), described in
``upstream_mamba1_models.md`` §3; re-written here in our own code on :mod:`mambaseg.models.nnunet_blocks` and the
Mamba-1 block :class:`mambaseg.models.mamba1.Mamba`. Module names equal upstream's (``encoder.stem``,
``encoder.stages``, ``mamba_layer.{norm,mamba}``, ``decoder.{encoder,stages,upsample_layers,seg_layers}``), so an
upstream ``network_weights`` state dict (``decoder.encoder.*`` duplicates included) loads with ``strict=True``.

This file also holds the blocks U-Mamba Enc shares: :class:`BasicResBlock`, :class:`UpsampleLayer`,
:class:`MambaLayer`, :class:`UNetResEncoder` and :class:`UNetResDecoder`.

Architecture (default = nnU-Net's 2-D plan for 256x256 patches, 7 stages, widths 32..512, spec §2.1):
stem [BasicResBlock(in -> 32, 1x1 projection) + BasicBlockD] -> stage s: [BasicResBlock (stride, 1x1
projection), (n_s - 1) x BasicBlockD] -> ``mamba_layer`` on the deepest map (row-major tokens, LayerNorm, Mamba)
-> decoder stage i: nearest upsample + 1x1 conv, concat the skip, [BasicResBlock, (m_i - 1) x BasicBlockD],
1x1 seg head. He init (slope 0.01) on every conv; the Mamba keeps its own init. Returns logits.

Upstream quirks, all kept:

* Block counts are overridden: encoder stages ``s >= ceil(n/2)`` and decoder stages ``i >= ceil(n/2)`` (up to
  the last) get one block (plan256: encoder [2,2,2,2,1,1,1], decoder [2,2,2,2,1,1]).
* No residual around the Mamba layer: its output replaces the bottleneck feature.
* The last (full-resolution) decoder stage does not concatenate the stage-0 skip (a 32 -> 32 BasicResBlock).
* The decoder holds the encoder as a child, so every ``encoder.*`` key also exists as ``decoder.encoder.*``.
* ``BasicResBlock`` always has its 1x1 conv (``conv3``), even when widths and stride are unchanged.

Differences, each deliberate:

* ``deep_supervision`` defaults to False (a single logits tensor, as every mambaseg model); upstream's builder
  default is True (list of logits, full resolution first). ``model.deep_supervision`` can be flipped as
  nnU-Net's ``set_deep_supervision_enabled`` does; ``"train"`` returns the list in training mode only (what the
  nnU-Net trainer does; the engine then applies nnU-Net's deep-supervision loss weights).
* The Mamba layer runs in float32 under any autocast (upstream disables CUDA autocast and casts fp16 only; we
  also cast bf16, and disable autocast on CPU too).
* Input sizes not divisible by the product of the strides (64 for plan256) raise a ValueError.
* The ignored upstream arguments (``stem_channels``, ``dropout_op``, ``pool_type``) are not accepted.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import BackboneMixin
from .layers import check_input_size
from .mamba1 import Mamba
from .nnunet_blocks import (BasicBlockD, NNUNetPlan, block_counts_umamba, check_deep_supervision,
                            deep_supervision_active, init_weights_he, instance_norm, leaky_relu, nnunet_plan_2d)
from .registry import register_model

__all__ = ["UMambaBot", "BasicResBlock", "UpsampleLayer", "MambaLayer", "UNetResEncoder", "UNetResDecoder",
           "mamba_fp32"]


def mamba_fp32(x: torch.Tensor, fn):
    """Run ``fn(x)`` in float32 with autocast off (upstream's ``autocast(enabled=False)`` + fp16 -> fp32 cast)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    dev = x.device.type if x.device.type in ("cpu", "cuda") else "cpu"
    with torch.autocast(device_type=dev, enabled=False):
        return fn(x)


class BasicResBlock(nn.Module):
    """U-Mamba's residual block: ``act2(norm2(conv2(act1(norm1(conv1(x))))) + conv3(x))``; ``conv1`` carries the
    stride, ``conv3`` is a 1x1 projection (with the stride) when ``use_1x1conv``, else identity. All convs have a
    bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1, stride: int = 1,
                 use_1x1conv: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.norm1 = instance_norm(out_channels)
        self.act1 = leaky_relu()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size, padding=padding)
        self.norm2 = instance_norm(out_channels)
        self.act2 = leaky_relu()
        self.conv3 = nn.Conv2d(in_channels, out_channels, 1, stride=stride) if use_1x1conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act2(y + (x if self.conv3 is None else self.conv3(x)))


class UpsampleLayer(nn.Module):
    """Nearest upsampling by ``scale`` then a 1x1 conv (``conv``, with bias) ``in -> out``."""

    def __init__(self, in_channels: int, out_channels: int, scale: int = 2, mode: str = "nearest"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.scale, self.mode = scale, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode=self.mode))


class MambaLayer(nn.Module):
    """``mamba(norm(tokens))`` on a (B, C, H, W) map, NO residual (upstream). ``channel_token=False``: tokens are
    the H*W pixels in row-major order with ``dim`` = C channels; ``channel_token=True`` (U-Mamba Enc's small
    deep maps): tokens are the C channels with ``dim`` = H*W features, so the map must have exactly that size."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, channel_token: bool = False):
        super().__init__()
        self.dim, self.channel_token = dim, channel_token
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(d_model=dim, d_state=d_state, d_conv=d_conv, expand=expand)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.channel_token:
            if h * w != self.dim:
                raise ValueError(f"MambaLayer (channel tokens, dim {self.dim}) needs a map with H*W = {self.dim}, "
                                 f"got {h}x{w}: U-Mamba Enc only runs at the patch size it was built for")
            t = x.reshape(b, c, h * w)                                    # (B, L=C, D=H*W)
            return self.mamba(self.norm(t)).reshape(b, c, h, w)
        t = x.reshape(b, c, h * w).transpose(1, 2)                        # (B, L=H*W, C), row-major
        return self.mamba(self.norm(t)).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mamba_fp32(x, self._run)


def _res_stage(in_ch: int, out_ch: int, n_blocks: int, kernel_size: int, stride: int) -> nn.Sequential:
    """[BasicResBlock(in -> out, stride, 1x1 projection), (n_blocks - 1) x BasicBlockD(out -> out)]."""
    return nn.Sequential(BasicResBlock(in_ch, out_ch, kernel_size, (kernel_size - 1) // 2, stride, use_1x1conv=True),
                         *[BasicBlockD(out_ch, out_ch, kernel_size, 1) for _ in range(n_blocks - 1)])


class UNetResEncoder(nn.Module):
    """``stem`` + ``stages``; returns the output of every stage (the skips). ``stages_type`` is
    ``nn.Sequential`` (Bot) or ``nn.ModuleList`` (Enc) as upstream; the keys are the same."""

    def __init__(self, in_channels: int, plan: NNUNetPlan, n_blocks: Sequence[int], stages_type=nn.Sequential):
        super().__init__()
        f, k, s = plan.features, plan.kernel_sizes, plan.strides
        self.stem = _res_stage(in_channels, f[0], n_blocks[0], k[0], 1)
        stages = [_res_stage(f[i - 1] if i else f[0], f[i], n_blocks[i], k[i], s[i]) for i in range(plan.n_stages)]
        self.stages = nn.Sequential(*stages) if stages_type is nn.Sequential else nn.ModuleList(stages)
        self.output_channels = list(f)
        self.strides = list(s)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class UNetResDecoder(nn.Module):
    """U-Mamba's decoder: stage i = UpsampleLayer (C_below -> C_skip), concat the skip (except at the last,
    full-resolution stage), [BasicResBlock, (m_i - 1) x BasicBlockD], seg head. Holds ``encoder`` as a child (the
    duplicated ``decoder.encoder.*`` keys)."""

    def __init__(self, encoder: nn.Module, num_classes: int, plan: NNUNetPlan, n_blocks: Sequence[int],
                 deep_supervision: Union[bool, str] = False):
        super().__init__()
        self.deep_supervision = check_deep_supervision(deep_supervision)
        self.encoder = encoder
        self.num_classes = num_classes
        f, k, st = plan.features, plan.kernel_sizes, plan.strides
        n = plan.n_stages
        stages, ups, segs = [], [], []
        for i in range(n - 1):
            below, skip = f[n - 1 - i], f[n - 2 - i]
            ups.append(UpsampleLayer(below, skip, st[n - 1 - i]))
            cin = 2 * skip if i < n - 2 else skip
            stages.append(_res_stage(cin, skip, n_blocks[i], k[n - 2 - i], 1))
            segs.append(nn.Conv2d(skip, num_classes, 1))
        self.stages = nn.ModuleList(stages)
        self.upsample_layers = nn.ModuleList(ups)
        self.seg_layers = nn.ModuleList(segs)

    def forward(self, skips: List[torch.Tensor]) -> Union[torch.Tensor, List[torch.Tensor]]:
        x = skips[-1]
        outs = []
        ds = deep_supervision_active(self.deep_supervision, self.training)
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            x = self.upsample_layers[i](x)
            if i < last:
                x = torch.cat((x, skips[-(i + 2)]), 1)
            x = stage(x)
            if ds:
                outs.append(self.seg_layers[i](x))
            elif i == last:
                outs.append(self.seg_layers[-1](x))
        outs = outs[::-1]
        return outs if ds else outs[0]


class _NNUNetMambaBase(BackboneMixin, nn.Module):
    """Shared plumbing: plan, input check, encoder-backbone API (``feature_info``, ``forward_intermediates``,
    ``forward_features``)."""

    arch_name = "nnU-Net"
    #: modules the encoder uses (``create_model(..., features_only=True)`` keeps only these)
    encoder_modules = ("encoder", "mamba_layer")

    @property
    def downsample_factor(self) -> int:  # read by the engine's size check
        return self.plan.divisor

    def _setup(self, in_channels, num_classes, plan: NNUNetPlan):
        self.in_channels, self.num_classes, self.plan = in_channels, num_classes, plan
        self.default_input_size = plan.patch_size

    def check_input(self, x: torch.Tensor) -> None:
        d = self.plan.divisor
        if x.dim() == 4 and (x.shape[-2] % d or x.shape[-1] % d):
            h, w = x.shape[-2:]
            raise ValueError(f"{self.arch_name}: input size {h}x{w} is not divisible by {d} (the product of the plan's "
                             f"strides {self.plan.strides}); resize, pad or tile to a multiple of {d}, e.g. "
                             f"{max(d, round(h / d) * d)}x{max(d, round(w / d) * d)}")
        check_input_size(x, self.in_channels, d, self.arch_name)

    @property
    def deep_supervision(self):
        return self.decoder.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, value) -> None:
        self.decoder.deep_supervision = check_deep_supervision(value)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x)[-1]


class UMambaBot(_NNUNetMambaBase):
    """U-Mamba Bot 2-D (Ma et al., 2024, arXiv:2401.04722). Input (B, in_channels, H, W), H and W divisible by
    the product of the strides (64 for the 256 plan, 128 for the 512 plan); output logits (B, num_classes, H, W),
    or with ``deep_supervision`` a list of logits, full resolution first (one per decoder stage).

    Args:
        in_channels: image channels. Default 3.
        num_classes: output channels (nnU-Net: segmentation heads incl. background). Default 1.
        patch_size: nnU-Net plan to build (spec §2.1): 256 (7 stages, default) or 512 (8 stages); any size
            divisible by 2^floor(log2(size/4)) works (64 -> 5 stages).
        features_per_stage, strides, kernel_sizes, n_conv_per_stage, n_conv_per_stage_decoder: explicit plan
            lists instead of the canonical ones (the block-count override is applied to them as upstream).
        deep_supervision: return every decoder stage's logits: True (always, upstream's builder default), False
            (default), or ``"train"`` (in training mode only, as nnU-Net trains and then validates).
    """

    arch_name = "U-Mamba Bot"

    def __init__(self, in_channels: int = 3, num_classes: int = 1, patch_size: int = 256,
                 features_per_stage: Optional[Sequence[int]] = None, strides: Optional[Sequence[int]] = None,
                 kernel_sizes: Optional[Sequence[int]] = None, n_conv_per_stage: Optional[Sequence[int]] = None,
                 n_conv_per_stage_decoder: Optional[Sequence[int]] = None, deep_supervision: Union[bool, str] = False):
        super().__init__()
        plan = nnunet_plan_2d(patch_size, features_per_stage, strides, kernel_sizes, n_conv_per_stage,
                              n_conv_per_stage_decoder, model=self.arch_name)
        self._setup(in_channels, num_classes, plan)
        n_enc, n_dec = block_counts_umamba(plan.n_conv_encoder, plan.n_conv_decoder)
        self.n_blocks_per_stage, self.n_conv_per_stage_decoder = n_enc, n_dec
        self.encoder = UNetResEncoder(in_channels, plan, n_enc)
        self.mamba_layer = MambaLayer(dim=plan.features[-1])
        self.decoder = UNetResDecoder(self.encoder, num_classes, plan, n_dec, deep_supervision)
        n = plan.n_stages
        self.feature_info = [dict(num_chs=c, reduction=r, module=f"encoder.stages.{i}" if i < n - 1 else "mamba_layer")
                             for i, (c, r) in enumerate(zip(plan.features, plan.reductions))]
        self.apply(init_weights_he)

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The skips as the decoder receives them: stage outputs, the deepest after the Mamba layer."""
        self.check_input(x)
        skips = self.encoder(x)
        skips[-1] = self.mamba_layer(skips[-1])
        return skips

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        return self.decoder(self.forward_intermediates(x))


@register_model("umamba_bot", paper="U-Mamba (Ma, Li & Wang, 2024, arXiv:2401.04722)", default_size=256)
def umamba_bot(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UMambaBot:
    """U-Mamba Bot 2-D, nnU-Net 256 plan (7 stages, 32..512), one Mamba layer at the bottleneck."""
    return UMambaBot(in_channels=in_channels, num_classes=num_classes, **kwargs)
