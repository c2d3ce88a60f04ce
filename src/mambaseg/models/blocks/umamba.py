"""The U-Mamba family's blocks (U-Mamba Bot/Enc, LKM-UNet, LightM-UNet and UltraLight VM-UNet use them).

Re-written from upstream's ``UMambaBot_2d.py`` / ``UMambaEnc_2d.py`` (https://github.com/bowang-lab/U-Mamba,
commit 28459e3; ``upstream_mamba1_models.md`` §3-§4, and the 3-D files ``UMambaBot_3d.py`` / ``UMambaEnc_3d.py``,
``upstream_3d_models.md`` §3) on :mod:`mambaseg.models.blocks.nnunet_blocks` and the Mamba-1
block :class:`mambaseg.models.blocks.mamba1.Mamba`: :func:`mamba_fp32`, :class:`BasicResBlock`,
:class:`UpsampleLayer`, :class:`MambaLayer`, :class:`UNetResEncoder`, :class:`UNetResDecoder` and
:class:`NNUNetMambaBase` (plan, input check, deep-supervision switch). Module names equal upstream's.

One code path for 2 and 3 spatial axes (``spatial_dims``): the conv / norm op follows it, kernel sizes, paddings and
strides may be per-axis tuples, Mamba tokens are the voxels in row-major order (W fastest, then H, then D), and
the 3-D decoder concatenates the skip at every stage, the full-resolution one included (``concat_all``).
"""

from __future__ import annotations

import math
from typing import List, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mamba1 import Mamba
from .nnunet_blocks import (BasicBlockD, NNUNetPlan, Size, _plain, check_deep_supervision, check_input_nd, conv_nd,
                            decode_with_heads, deep_supervision_active, instance_norm, leaky_relu, same_padding,
                            stage_outputs)

__all__ = ["mamba_fp32", "BasicResBlock", "UpsampleLayer", "MambaLayer", "res_stage", "UNetResEncoder",
           "nnunet_feature_info",
           "UNetResDecoder", "NNUNetMambaBase"]

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
    bias. Kernel size, padding and stride may be per-axis tuples (3-D plans: ``[1, 3, 3]`` -> padding
    ``[0, 1, 1]``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size = 3, padding: Size = 1,
                 stride: Size = 1, use_1x1conv: bool = False, spatial_dims: int = 2):
        super().__init__()
        conv = conv_nd(spatial_dims)
        kernel_size, padding, stride = _plain(kernel_size), _plain(padding), _plain(stride)
        self.conv1 = conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.norm1 = instance_norm(out_channels, spatial_dims)
        self.act1 = leaky_relu()
        self.conv2 = conv(out_channels, out_channels, kernel_size, padding=padding)
        self.norm2 = instance_norm(out_channels, spatial_dims)
        self.act2 = leaky_relu()
        self.conv3 = conv(in_channels, out_channels, 1, stride=stride) if use_1x1conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act2(y + (x if self.conv3 is None else self.conv3(x)))


class UpsampleLayer(nn.Module):
    """Nearest upsampling by ``scale`` (per axis: the stage's stride) then a 1x1 conv (``conv``, with bias)
    ``in -> out``."""

    def __init__(self, in_channels: int, out_channels: int, scale: Size = 2, mode: str = "nearest",
                 spatial_dims: int = 2):
        super().__init__()
        self.conv = conv_nd(spatial_dims)(in_channels, out_channels, kernel_size=1)
        scale = _plain(scale)
        self.scale = tuple(float(f) for f in scale) if isinstance(scale, tuple) else scale
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode=self.mode))


class MambaLayer(nn.Module):
    """``mamba(norm(tokens))`` on a (B, C, H, W) or (B, C, D, H, W) map, NO residual (upstream).
    ``channel_token=False``: tokens are the pixels / voxels in row-major order with ``dim`` = C channels;
    ``channel_token=True`` (U-Mamba Enc's small deep maps): tokens are the C channels with ``dim`` = H*W (D*H*W)
    features, so the map must have exactly that size."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, channel_token: bool = False):
        super().__init__()
        self.dim, self.channel_token = dim, channel_token
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(d_model=dim, d_state=d_state, d_conv=d_conv, expand=expand)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        n = math.prod(x.shape[2:])
        if self.channel_token:
            if n != self.dim:
                raise ValueError(f"MambaLayer (channel tokens, dim {self.dim}) needs a map of {self.dim} positions, "
                                 f"got {'x'.join(map(str, x.shape[2:]))}: U-Mamba Enc only runs at the patch size "
                                 f"it was built for")
            t = x.reshape(b, c, n)                                        # (B, L=C, D=H*W)
            return self.mamba(self.norm(t)).reshape(x.shape)
        t = x.reshape(b, c, n).transpose(1, 2)                            # (B, L=H*W, C), row-major
        return self.mamba(self.norm(t)).transpose(1, 2).reshape(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mamba_fp32(x, self._run)


def res_stage(in_ch: int, out_ch: int, n_blocks: int, kernel_size: Size, stride: Size,
              spatial_dims: int = 2) -> nn.Sequential:
    """[BasicResBlock(in -> out, stride, 1x1 projection), (n_blocks - 1) x BasicBlockD(out -> out)]."""
    return nn.Sequential(BasicResBlock(in_ch, out_ch, kernel_size, same_padding(_plain(kernel_size)), stride,
                                       use_1x1conv=True, spatial_dims=spatial_dims),
                         *[BasicBlockD(out_ch, out_ch, kernel_size, 1, spatial_dims=spatial_dims)
                           for _ in range(n_blocks - 1)])


class UNetResEncoder(nn.Module):
    """``stem`` + ``stages``; returns the output of every stage (the skips). ``stages_type`` is
    ``nn.Sequential`` (Bot) or ``nn.ModuleList`` (Enc) as upstream; the keys are the same."""

    def __init__(self, in_channels: int, plan: NNUNetPlan, n_blocks: Sequence[int], stages_type=nn.Sequential):
        super().__init__()
        f, k, s, sd = plan.features, plan.kernel_sizes, plan.strides, plan.spatial_dims
        self.stem = res_stage(in_channels, f[0], n_blocks[0], k[0], 1, sd)
        stages = [res_stage(f[i - 1] if i else f[0], f[i], n_blocks[i], k[i], s[i], sd) for i in range(plan.n_stages)]
        self.stages = nn.Sequential(*stages) if stages_type is nn.Sequential else nn.ModuleList(stages)
        self.output_channels = list(f)
        self.strides = list(s)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return stage_outputs(self.stem(x), self.stages)


class UNetResDecoder(nn.Module):
    """U-Mamba's decoder: stage i = UpsampleLayer (C_below -> C_skip), concat the skip (2-D: except at the last,
    full-resolution stage; 3-D, ``concat_all=True``: at every stage), [BasicResBlock, (m_i - 1) x BasicBlockD],
    seg head. Holds ``encoder`` as a child (the duplicated ``decoder.encoder.*`` keys)."""

    def __init__(self, encoder: nn.Module, num_classes: int, plan: NNUNetPlan, n_blocks: Sequence[int],
                 deep_supervision: Union[bool, str] = False, concat_all: bool = False):
        super().__init__()
        self.deep_supervision = check_deep_supervision(deep_supervision)
        self.encoder = encoder
        self.num_classes = num_classes
        self.concat_all = concat_all
        f, k, st, sd = plan.features, plan.kernel_sizes, plan.strides, plan.spatial_dims
        n = plan.n_stages
        stages, ups, segs = [], [], []
        for i in range(n - 1):
            below, skip = f[n - 1 - i], f[n - 2 - i]
            ups.append(UpsampleLayer(below, skip, st[n - 1 - i], spatial_dims=sd))
            cin = 2 * skip if (i < n - 2 or concat_all) else skip
            stages.append(res_stage(cin, skip, n_blocks[i], k[n - 2 - i], 1, sd))
            segs.append(conv_nd(sd)(skip, num_classes, 1))
        self.stages = nn.ModuleList(stages)
        self.upsample_layers = nn.ModuleList(ups)
        self.seg_layers = nn.ModuleList(segs)

    def forward(self, skips: List[torch.Tensor]) -> Union[torch.Tensor, List[torch.Tensor]]:
        last = len(self.stages) - 1

        def step(i, x):
            x = self.upsample_layers[i](x)
            if i < last or self.concat_all:  # 2-D U-Mamba: the last stage has no skip
                x = torch.cat((x, skips[-(i + 2)]), 1)
            return self.stages[i](x)

        return decode_with_heads(skips[-1], len(self.stages), step, self.seg_layers,
                                 deep_supervision_active(self.deep_supervision, self.training))


class NNUNetMambaBase(nn.Module):
    """Shared plumbing: plan, input check, encoder-backbone API (``feature_info``, ``forward_intermediates``,
    ``forward_features``)."""

    arch_name = "nnU-Net"
    #: modules the encoder uses (``create_model(..., features_only=True)`` keeps only these)
    encoder_modules = ("encoder", "mamba_layer")
    returns_list = lambda self: deep_supervision_active(self.deep_supervision, self.training)  # noqa: E731 (contract)

    @property
    def downsample_factor(self):  # read by the engine's size check (per axis when the strides are anisotropic)
        return self.plan.divisor

    def _setup(self, in_channels, num_classes, plan: NNUNetPlan):
        self.in_channels, self.num_classes, self.plan = in_channels, num_classes, plan
        self.spatial_dims = plan.spatial_dims
        self.default_input_size = plan.patch_size if plan.spatial_dims == 2 else plan.patch_tuple

    def check_input(self, x: torch.Tensor) -> None:
        d = self.plan.divisor
        if self.spatial_dims != 2 or not isinstance(d, int):
            return check_input_nd(x, self.in_channels, d, self.arch_name, self.spatial_dims)
        if x.dim() == 4 and (x.shape[-2] % d or x.shape[-1] % d):
            h, w = x.shape[-2:]
            raise ValueError(f"{self.arch_name}: input size {h}x{w} is not divisible by {d} (the product of the plan's "
                             f"strides {self.plan.strides}); resize, pad or tile to a multiple of {d}, e.g. "
                             f"{max(d, round(h / d) * d)}x{max(d, round(w / d) * d)}")
        check_input_nd(x, self.in_channels, d, self.arch_name, 2)

    @property
    def deep_supervision(self):
        return self.decoder.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, value) -> None:
        self.decoder.deep_supervision = check_deep_supervision(value)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x)[-1]


def nnunet_feature_info(plan: NNUNetPlan, modules: Sequence[str]) -> List[dict]:
    """``feature_info`` of an nnU-Net style encoder: one entry per stage with ``num_chs``, ``reduction`` (an int:
    the largest per-axis reduction, increasing stage by stage), in 3-D also ``reduction_per_axis`` (a tuple),
    ``module``."""
    if plan.spatial_dims == 2:
        return [dict(num_chs=c, reduction=r, module=m) for c, r, m in zip(plan.features, plan.reductions, modules)]
    return [dict(num_chs=c, reduction=max(r), reduction_per_axis=r, module=m)
            for c, r, m in zip(plan.features, plan.reductions_per_axis, modules)]
