"""nnU-Net building blocks (``dynamic_network_architectures``), written once for U-Mamba and LKM-UNet.

Upstream: https://github.com/MIC-DKFZ/dynamic-network-architectures (``building_blocks/simple_conv_blocks.py``,
``building_blocks/residual.py``, ``initialization/weight_init.py``; identical in 0.2, 0.3.1 and 0.4.4) and
nnU-Net v2 2.1.1 (``experiment_planning``), as described in ``upstream_mamba1_models.md`` §2. Our own code; the
module names are upstream's so checkpoints load with ``strict=True``:

* :class:`ConvDropoutNormReLU`: conv -> [dropout] -> [norm] -> [nonlin]. Registers each op as an attribute
  (``conv``, ``dropout``, ``norm``, ``nonlin``) AND inside ``all_modules`` (``nn.Sequential``), so every weight has
  two ``state_dict`` keys (``X.conv.weight`` and ``X.all_modules.0.weight``), as upstream.
* :class:`StackedConvBlocks` (``convs``), :class:`BasicBlockD` (ResNet-D: ``conv1``, ``conv2``, ``nonlin2``,
  ``skip`` = [AvgPool if strided] + [1x1 conv + norm if the width changes], identity otherwise),
  :class:`StackedResidualBlocks` (``blocks``).
* :func:`init_weights_he` (``InitWeights_He(1e-2)``) and :func:`init_last_norm_before_add_to_zero`
  (``init_last_bn_before_add_to_0``).
* :func:`nnunet_plan_2d`: the canonical nnU-Net 2-D plan for a square patch (spec §2.1).

Norm / nonlinearity used by all these networks: ``InstanceNorm2d(eps=1e-5, affine=True)`` (no running stats),
``LeakyReLU(0.01, inplace=True)``; convolutions carry a bias except the 1x1 skip projection. Stochastic depth and
squeeze-excitation of ``BasicBlockD`` are not implemented (none of the networks uses them).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

__all__ = ["ConvDropoutNormReLU", "StackedConvBlocks", "BasicBlockD", "StackedResidualBlocks", "init_weights_he",
           "init_last_norm_before_add_to_zero", "nnunet_plan_2d", "NNUNetPlan", "instance_norm", "leaky_relu",
           "deep_supervision_weights", "block_counts_umamba", "check_deep_supervision", "deep_supervision_active"]


def instance_norm(c: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(c, eps=1e-5, affine=True)


def leaky_relu() -> nn.LeakyReLU:
    return nn.LeakyReLU(negative_slope=0.01, inplace=True)


class ConvDropoutNormReLU(nn.Module):
    """conv (padding (k-1)//2) -> [Dropout2d(p)] -> [InstanceNorm] -> [LeakyReLU], forward through
    ``all_modules``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 conv_bias: bool = True, norm: bool = True, nonlin: bool = True, dropout_p: Optional[float] = None):
        super().__init__()
        self.input_channels, self.output_channels = in_channels, out_channels
        self.stride = stride
        ops = []
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2,
                              bias=conv_bias)
        ops.append(self.conv)
        if dropout_p:
            self.dropout = nn.Dropout2d(dropout_p, inplace=True)
            ops.append(self.dropout)
        if norm:
            self.norm = instance_norm(out_channels)
            ops.append(self.norm)
        if nonlin:
            self.nonlin = leaky_relu()
            ops.append(self.nonlin)
        self.all_modules = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_modules(x)


class StackedConvBlocks(nn.Module):
    """``num_convs`` x :class:`ConvDropoutNormReLU` in ``convs``; the first carries the stride."""

    def __init__(self, num_convs: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 initial_stride: int = 1, conv_bias: bool = True):
        super().__init__()
        self.convs = nn.Sequential(*[
            ConvDropoutNormReLU(in_channels if i == 0 else out_channels, out_channels, kernel_size,
                                initial_stride if i == 0 else 1, conv_bias) for i in range(num_convs)])
        self.output_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class BasicBlockD(nn.Module):
    """ResNet-D basic block: ``nonlin2(conv2(conv1(x)) + skip(x))``; ``conv1`` has the stride and a nonlinearity,
    ``conv2`` a norm but no nonlinearity. ``skip``: identity (no module, no keys) when stride 1 and the width is
    kept; otherwise ``nn.Sequential`` of [AvgPool2d(stride) if strided] + [1x1 conv (no bias) + norm if the width
    changes] (so the projection is ``skip.1`` when strided, ``skip.0`` when not)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 conv_bias: bool = True):
        super().__init__()
        self.input_channels, self.output_channels, self.stride = in_channels, out_channels, stride
        self.conv1 = ConvDropoutNormReLU(in_channels, out_channels, kernel_size, stride, conv_bias)
        self.conv2 = ConvDropoutNormReLU(out_channels, out_channels, kernel_size, 1, conv_bias, nonlin=False)
        self.nonlin2 = leaky_relu()
        ops = []
        if stride != 1:
            ops.append(nn.AvgPool2d(stride, stride))
        if in_channels != out_channels:
            ops.append(ConvDropoutNormReLU(in_channels, out_channels, 1, 1, conv_bias=False, nonlin=False))
        self.skip = nn.Sequential(*ops) if ops else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.skip is None else self.skip(x)
        return self.nonlin2(self.conv2(self.conv1(x)) + residual)


class StackedResidualBlocks(nn.Module):
    """``n_blocks`` x :class:`BasicBlockD` in ``blocks``; the first maps in -> out with the stride."""

    def __init__(self, n_blocks: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 initial_stride: int = 1, conv_bias: bool = True):
        super().__init__()
        self.blocks = nn.Sequential(*[
            BasicBlockD(in_channels if i == 0 else out_channels, out_channels, kernel_size,
                        initial_stride if i == 0 else 1, conv_bias) for i in range(n_blocks)])
        self.output_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def init_weights_he(module: nn.Module, neg_slope: float = 1e-2) -> None:
    """nnU-Net's ``InitWeights_He(1e-2)`` for ``module.apply``: every Conv2d/3d and ConvTranspose2d/3d gets
    ``kaiming_normal_(weight, a=neg_slope)`` (fan_in, leaky-ReLU gain) and a zero bias. Conv1d and Linear (the
    Mamba parts) and the norms are left alone."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        if module.weight.is_meta:                      # structure-only build: nothing to initialise
            return
        module.weight = nn.init.kaiming_normal_(module.weight, a=neg_slope)
        if module.bias is not None:
            module.bias = nn.init.constant_(module.bias, 0)


def init_last_norm_before_add_to_zero(module: nn.Module) -> None:
    """``init_last_bn_before_add_to_0`` for ``module.apply``: each :class:`BasicBlockD` starts with
    ``conv2.norm`` weight and bias 0 (the block starts as ``nonlin(skip(x))``)."""
    if isinstance(module, BasicBlockD) and not module.conv2.norm.weight.is_meta:
        nn.init.zeros_(module.conv2.norm.weight)
        nn.init.zeros_(module.conv2.norm.bias)


class NNUNetPlan:
    """A 2-D nnU-Net architecture plan: per-stage widths, kernel sizes, strides and block counts."""

    def __init__(self, patch_size: int, features: Sequence[int], kernel_sizes: Sequence[int],
                 strides: Sequence[int], n_conv_encoder: Sequence[int], n_conv_decoder: Sequence[int]):
        n = len(features)
        for what, v, k in (("kernel_sizes", kernel_sizes, n), ("strides", strides, n),
                           ("n_conv_per_stage", n_conv_encoder, n), ("n_conv_per_stage_decoder", n_conv_decoder, n - 1)):
            if len(v) != k:
                raise ValueError(f"nnU-Net plan: {what} needs {k} entries for {n} stages, got {list(v)}")
        if n < 2:
            raise ValueError(f"nnU-Net plan: need at least 2 stages, got features_per_stage={list(features)}")
        self.patch_size = int(patch_size)
        self.features = [int(f) for f in features]
        self.kernel_sizes = [int(k) for k in kernel_sizes]
        self.strides = [int(s) for s in strides]
        self.n_conv_encoder = [int(c) for c in n_conv_encoder]
        self.n_conv_decoder = [int(c) for c in n_conv_decoder]

    @property
    def n_stages(self) -> int:
        return len(self.features)

    @property
    def reductions(self) -> List[int]:
        out, r = [], 1
        for s in self.strides:
            r *= s
            out.append(r)
        return out

    @property
    def divisor(self) -> int:
        """Input H and W must be divisible by this for the skips to line up."""
        return self.reductions[-1]

    def __repr__(self) -> str:
        return (f"NNUNetPlan(patch_size={self.patch_size}, features={self.features}, strides={self.strides}, "
                f"n_conv_encoder={self.n_conv_encoder}, n_conv_decoder={self.n_conv_decoder})")


def nnunet_plan_2d(patch_size: int = 256, features_per_stage: Optional[Sequence[int]] = None,
                   strides: Optional[Sequence[int]] = None, kernel_sizes: Optional[Sequence[int]] = None,
                   n_conv_per_stage: Optional[Sequence[int]] = None,
                   n_conv_per_stage_decoder: Optional[Sequence[int]] = None, model: str = "nnU-Net") -> NNUNetPlan:
    """The plan nnU-Net 2.1.1 makes for a square ``patch_size`` image with isotropic spacing (spec §2.1): pool
    while the map stays >= 4 (``floor(log2(patch / 4))`` poolings), widths ``min(32 * 2^i, 512)``, 3x3 kernels,
    strides ``[1, 2, 2, ...]``, 2 convs per stage. 256 -> 7 stages, 512 -> 8 stages, 64 -> 5 stages. Every
    list can be given explicitly instead (then ``patch_size`` is only the size the net is built for)."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 8:
        raise ValueError(f"{model}: patch_size must be an integer >= 8 (256 or 512 for the spec's plans), "
                         f"got {patch_size!r}")
    if features_per_stage is None:
        n_pool = int(math.floor(math.log2(patch_size / 4)))
        if strides is not None:
            n_pool = len(strides) - 1
        features_per_stage = [min(32 * 2 ** i, 512) for i in range(n_pool + 1)]
    n = len(features_per_stage)
    strides = list(strides) if strides is not None else [1] + [2] * (n - 1)
    kernel_sizes = list(kernel_sizes) if kernel_sizes is not None else [3] * n
    n_conv_per_stage = list(n_conv_per_stage) if n_conv_per_stage is not None else [2] * n
    n_conv_per_stage_decoder = (list(n_conv_per_stage_decoder) if n_conv_per_stage_decoder is not None
                                else [2] * (n - 1))
    plan = NNUNetPlan(patch_size, features_per_stage, kernel_sizes, strides, n_conv_per_stage,
                      n_conv_per_stage_decoder)
    if patch_size % plan.divisor:
        raise ValueError(f"{model}: patch_size {patch_size} is not divisible by {plan.divisor} (the product of the "
                         f"strides {plan.strides}); use a multiple of {plan.divisor}, e.g. 256 or 512")
    return plan


def block_counts_umamba(n_conv_encoder: Sequence[int], n_conv_decoder: Sequence[int]):
    """U-Mamba's constructor override (spec §3): encoder entries ``s in [ceil(n/2), n)`` and decoder entries
    ``i in [ceil((n-1)/2 + 0.5), n-1)`` become 1. plan256: [2,2,2,2,1,1,1] / [2,2,2,2,1,1]."""
    enc, dec = list(n_conv_encoder), list(n_conv_decoder)
    n = len(enc)
    for s in range(math.ceil(n / 2), n):
        enc[s] = 1
    for i in range(math.ceil((n - 1) / 2 + 0.5), n - 1):
        dec[i] = 1
    return enc, dec


def deep_supervision_weights(n_outputs: int) -> List[float]:
    """nnU-Net's deep-supervision loss weights for ``n_outputs`` outputs (full resolution first): ``2^-i``, the
    last (lowest resolution) set to 0, normalised to sum 1. 6 outputs -> [0.5161, 0.2581, 0.1290, 0.0645, 0.0323,
    0]."""
    w = [2.0 ** -i for i in range(n_outputs)]
    if n_outputs > 1:
        w[-1] = 0.0
    s = sum(w)
    return [x / s for x in w]


def check_deep_supervision(value):
    """``True`` (always a list, upstream), ``False`` (one tensor) or ``"train"`` (a list in training mode only: what
    nnU-Net's trainer does with ``set_deep_supervision_enabled(False)`` for validation and inference)."""
    if value in (True, False) and isinstance(value, (bool, int)):
        return bool(value)
    if value == "train":
        return "train"
    raise ValueError(f"deep_supervision must be True, False or 'train', got {value!r}")


def deep_supervision_active(value, training: bool) -> bool:
    return value is True or (value == "train" and training)
