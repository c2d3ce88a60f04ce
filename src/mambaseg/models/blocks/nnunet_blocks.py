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
* :func:`nnunet_plan_2d`: the canonical nnU-Net 2-D plan for a square patch (spec §2.1);
  :func:`nnunet_plan_3d`: the 3d_fullres plans of ``upstream_3d_models.md`` §3.1 (``"brats128"``, ``"abd40"``), a
  cube or box patch planned with nnU-Net's topology rule, or explicit per-axis lists (what a planner computed).
* :class:`PlainConvEncoder`, :class:`ResidualEncoder`, :class:`UNetDecoder`: the encoders and the decoder of
  nnU-Net's ``PlainConvUNet`` / ``ResidualEncoderUNet`` (``dynamic_network_architectures.architectures.unet``).

Every block takes ``spatial_dims`` (2, the default, or 3): the conv / norm / pool / transposed-conv op is chosen
from it, and kernel sizes and strides may be per-axis tuples (anisotropic 3-D plans such as ``[1, 3, 3]`` /
``[1, 2, 2]``). With ``spatial_dims=2`` and integer sizes the modules are exactly the 2-D ones.

Norm / nonlinearity used by all these networks: ``InstanceNorm2d``/``3d`` ``(eps=1e-5, affine=True)`` (no running
stats), ``LeakyReLU(0.01, inplace=True)``; convolutions carry a bias except the 1x1 skip projection. Stochastic
depth and squeeze-excitation of ``BasicBlockD`` are not implemented (none of the networks uses them).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .layers import check_input_size

__all__ = ["ConvDropoutNormReLU", "StackedConvBlocks", "BasicBlockD", "StackedResidualBlocks", "init_weights_he",
           "init_last_norm_before_add_to_zero", "nnunet_plan_2d", "NNUNetPlan", "instance_norm", "leaky_relu",
           "deep_supervision_weights", "block_counts_umamba", "check_deep_supervision", "deep_supervision_active",
           "nnunet_plan", "nnunet_plan_3d", "NNUNET_3D_PLANS", "conv_nd", "conv_transpose_nd", "avg_pool_nd",
           "max_pool_nd", "dropout_nd", "check_spatial_dims", "as_tuple", "is_unit", "same_padding",
           "check_input_nd", "PlainConvEncoder", "ResidualEncoder", "UNetDecoder"]

Size = Union[int, Sequence[int]]


def check_spatial_dims(spatial_dims) -> int:
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def _op(spatial_dims: int, ops):
    return ops[check_spatial_dims(spatial_dims) - 2]


def conv_nd(spatial_dims: int = 2):
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return _op(spatial_dims, (nn.Conv2d, nn.Conv3d))


def conv_transpose_nd(spatial_dims: int = 2):
    return _op(spatial_dims, (nn.ConvTranspose2d, nn.ConvTranspose3d))


def avg_pool_nd(spatial_dims: int = 2):
    return _op(spatial_dims, (nn.AvgPool2d, nn.AvgPool3d))


def max_pool_nd(spatial_dims: int = 2):
    return _op(spatial_dims, (nn.MaxPool2d, nn.MaxPool3d))


def dropout_nd(spatial_dims: int = 2):
    return _op(spatial_dims, (nn.Dropout2d, nn.Dropout3d))


def as_tuple(v: Size, spatial_dims: int) -> Tuple[int, ...]:
    """An int or a per-axis sequence as a tuple of ``spatial_dims`` ints."""
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return (int(v),) * spatial_dims
    t = tuple(int(i) for i in v)
    if len(t) != spatial_dims:
        raise ValueError(f"expected {spatial_dims} per-axis values, got {list(v)}")
    return t


def is_unit(stride: Size) -> bool:
    """True when the stride is 1 along every axis."""
    return stride == 1 if isinstance(stride, int) else all(int(s) == 1 for s in stride)


def same_padding(kernel_size: Size):
    """``(k - 1) // 2`` (per axis for a per-axis kernel), as nnU-Net pads."""
    if isinstance(kernel_size, int):
        return (kernel_size - 1) // 2
    return tuple((int(k) - 1) // 2 for k in kernel_size)


def _plain(v: Size):
    """A size as the conv ops take it: an int stays an int, a sequence becomes a tuple."""
    return int(v) if isinstance(v, int) else tuple(int(i) for i in v)


def instance_norm(c: int, spatial_dims: int = 2) -> nn.Module:
    return _op(spatial_dims, (nn.InstanceNorm2d, nn.InstanceNorm3d))(c, eps=1e-5, affine=True)


def leaky_relu() -> nn.LeakyReLU:
    return nn.LeakyReLU(negative_slope=0.01, inplace=True)


class ConvDropoutNormReLU(nn.Module):
    """conv (padding (k-1)//2 per axis) -> [Dropout2d/3d(p)] -> [InstanceNorm] -> [LeakyReLU], forward through
    ``all_modules``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size = 3, stride: Size = 1,
                 conv_bias: bool = True, norm: bool = True, nonlin: bool = True, dropout_p: Optional[float] = None,
                 spatial_dims: int = 2):
        super().__init__()
        self.input_channels, self.output_channels = in_channels, out_channels
        self.stride = _plain(stride)
        ops = []
        self.conv = conv_nd(spatial_dims)(in_channels, out_channels, _plain(kernel_size), self.stride,
                                          padding=same_padding(_plain(kernel_size)), bias=conv_bias)
        ops.append(self.conv)
        if dropout_p:
            self.dropout = dropout_nd(spatial_dims)(dropout_p, inplace=True)
            ops.append(self.dropout)
        if norm:
            self.norm = instance_norm(out_channels, spatial_dims)
            ops.append(self.norm)
        if nonlin:
            self.nonlin = leaky_relu()
            ops.append(self.nonlin)
        self.all_modules = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_modules(x)


class StackedConvBlocks(nn.Module):
    """``num_convs`` x :class:`ConvDropoutNormReLU` in ``convs``; the first carries the stride."""

    def __init__(self, num_convs: int, in_channels: int, out_channels: int, kernel_size: Size = 3,
                 initial_stride: Size = 1, conv_bias: bool = True, spatial_dims: int = 2):
        super().__init__()
        self.convs = nn.Sequential(*[
            ConvDropoutNormReLU(in_channels if i == 0 else out_channels, out_channels, kernel_size,
                                initial_stride if i == 0 else 1, conv_bias, spatial_dims=spatial_dims)
            for i in range(num_convs)])
        self.output_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class BasicBlockD(nn.Module):
    """ResNet-D basic block: ``nonlin2(conv2(conv1(x)) + skip(x))``; ``conv1`` has the stride and a nonlinearity,
    ``conv2`` a norm but no nonlinearity. ``skip``: identity (no module, no keys) when stride 1 and the width is
    kept; otherwise ``nn.Sequential`` of [AvgPool2d(stride) if strided] + [1x1 conv (no bias) + norm if the width
    changes] (so the projection is ``skip.1`` when strided, ``skip.0`` when not)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size = 3, stride: Size = 1,
                 conv_bias: bool = True, spatial_dims: int = 2):
        super().__init__()
        self.input_channels, self.output_channels, self.stride = in_channels, out_channels, _plain(stride)
        self.conv1 = ConvDropoutNormReLU(in_channels, out_channels, kernel_size, stride, conv_bias,
                                         spatial_dims=spatial_dims)
        self.conv2 = ConvDropoutNormReLU(out_channels, out_channels, kernel_size, 1, conv_bias, nonlin=False,
                                         spatial_dims=spatial_dims)
        self.nonlin2 = leaky_relu()
        ops = []
        if not is_unit(stride):
            ops.append(avg_pool_nd(spatial_dims)(self.stride, self.stride))
        if in_channels != out_channels:
            ops.append(ConvDropoutNormReLU(in_channels, out_channels, 1, 1, conv_bias=False, nonlin=False,
                                           spatial_dims=spatial_dims))
        self.skip = nn.Sequential(*ops) if ops else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.skip is None else self.skip(x)
        return self.nonlin2(self.conv2(self.conv1(x)) + residual)


class StackedResidualBlocks(nn.Module):
    """``n_blocks`` x :class:`BasicBlockD` in ``blocks``; the first maps in -> out with the stride."""

    def __init__(self, n_blocks: int, in_channels: int, out_channels: int, kernel_size: Size = 3,
                 initial_stride: Size = 1, conv_bias: bool = True, spatial_dims: int = 2):
        super().__init__()
        self.blocks = nn.Sequential(*[
            BasicBlockD(in_channels if i == 0 else out_channels, out_channels, kernel_size,
                        initial_stride if i == 0 else 1, conv_bias, spatial_dims=spatial_dims)
            for i in range(n_blocks)])
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
    """An nnU-Net architecture plan: per-stage widths, kernel sizes, strides and block counts, for 2 or 3 spatial
    axes. Sizes are kept as given: an int (isotropic) or a per-axis tuple (e.g. ``(1, 2, 2)``); the per-axis
    views are :meth:`stride_tuple`, :meth:`kernel_tuple`, :attr:`patch_tuple`, :attr:`reductions_per_axis`."""

    def __init__(self, patch_size: Size, features: Sequence[int], kernel_sizes: Sequence[Size],
                 strides: Sequence[Size], n_conv_encoder: Sequence[int], n_conv_decoder: Sequence[int],
                 spatial_dims: int = 2, name: Optional[str] = None):
        n = len(features)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        for what, v, k in (("kernel_sizes", kernel_sizes, n), ("strides", strides, n),
                           ("n_conv_per_stage", n_conv_encoder, n), ("n_conv_per_stage_decoder", n_conv_decoder, n - 1)):
            if len(v) != k:
                raise ValueError(f"nnU-Net plan: {what} needs {k} entries for {n} stages, got {list(v)}")
        if n < 2:
            raise ValueError(f"nnU-Net plan: need at least 2 stages, got features_per_stage={list(features)}")
        for what, v in (("kernel_sizes", kernel_sizes), ("strides", strides)):
            for e in v:
                if not isinstance(e, int) and len(e) != self.spatial_dims:
                    raise ValueError(f"nnU-Net plan: every entry of {what} needs {self.spatial_dims} per-axis values "
                                     f"(spatial_dims={self.spatial_dims}), got {list(v)}")
        self.patch_size = _plain(patch_size)
        as_tuple(self.patch_size, self.spatial_dims)
        self.features = [int(f) for f in features]
        self.kernel_sizes = [_plain(k) for k in kernel_sizes]
        self.strides = [_plain(s) for s in strides]
        self.n_conv_encoder = [int(c) for c in n_conv_encoder]
        self.n_conv_decoder = [int(c) for c in n_conv_decoder]
        self.name = name

    @property
    def n_stages(self) -> int:
        return len(self.features)

    def stride_tuple(self, i: int) -> Tuple[int, ...]:
        return as_tuple(self.strides[i], self.spatial_dims)

    def kernel_tuple(self, i: int) -> Tuple[int, ...]:
        return as_tuple(self.kernel_sizes[i], self.spatial_dims)

    @property
    def patch_tuple(self) -> Tuple[int, ...]:
        return as_tuple(self.patch_size, self.spatial_dims)

    @property
    def reductions_per_axis(self) -> List[Tuple[int, ...]]:
        out, r = [], (1,) * self.spatial_dims
        for i in range(self.n_stages):
            r = tuple(a * b for a, b in zip(r, self.stride_tuple(i)))
            out.append(r)
        return out

    @staticmethod
    def _collapse(t: Tuple[int, ...]):
        return t[0] if len(set(t)) == 1 else t

    @property
    def reductions(self) -> list:
        """Per stage: the reduction (an int when it is the same on every axis, else a per-axis tuple)."""
        return [self._collapse(r) for r in self.reductions_per_axis]

    @property
    def divisor(self):
        """Each input axis must be divisible by this (an int, or per axis when the strides are anisotropic)."""
        return self.reductions[-1]

    @property
    def feature_map_sizes(self) -> List[Tuple[int, ...]]:
        """Map size of every stage for an input of ``patch_size``."""
        return [tuple(p // r for p, r in zip(self.patch_tuple, red)) for red in self.reductions_per_axis]

    def __repr__(self) -> str:
        return (f"NNUNetPlan(patch_size={self.patch_size}, features={self.features}, strides={self.strides}, "
                f"n_conv_encoder={self.n_conv_encoder}, n_conv_decoder={self.n_conv_decoder})")


def check_input_nd(x: torch.Tensor, in_channels: int, divisor, model: str, spatial_dims: int) -> None:
    """One clear ValueError when ``x`` is not (B, in_channels, *spatial) with every spatial axis divisible by
    ``divisor`` (an int or per axis), or when the deepest map would be one voxel (instance norm has no statistics
    there). 2-D inputs get :func:`~mambaseg.models.blocks.layers.check_input_size`'s messages."""
    if spatial_dims == 2 and isinstance(divisor, int):
        return check_input_size(x, in_channels, divisor, model)
    names = "(B, C, D, H, W)" if spatial_dims == 3 else "(B, C, H, W)"
    if x.dim() != spatial_dims + 2:
        raise ValueError(f"{model}: expected a {spatial_dims + 2}-D input {names}, got shape {tuple(x.shape)}"
                         + ("; this is a 3-D network: give it volumes (patches), not 2-D slices"
                            if spatial_dims == 3 and x.dim() == 4 else ""))
    d = as_tuple(divisor, spatial_dims)
    size = tuple(x.shape[2:])
    if any(s % m for s, m in zip(size, d)):
        ok = "x".join(str(max(m, round(s / m) * m)) for s, m in zip(size, d))
        need = d[0] if len(set(d)) == 1 else "x".join(map(str, d))
        raise ValueError(f"{model}: input size {'x'.join(map(str, size))} is not divisible by {need} (per axis, the "
                         f"product of the strides); pad or tile to a multiple, e.g. {ok}")
    if all(s == m for s, m in zip(size, d)):
        bigger = "x".join(str(2 * m if i == 0 else m) for i, m in enumerate(d))
        raise ValueError(f"{model}: input size {'x'.join(map(str, size))} leaves one voxel at the deepest stage (the "
                         f"strides' product is {'x'.join(map(str, d))}), where instance norm has no statistics; use a "
                         f"larger patch (e.g. {bigger}) or a plan with fewer stages (patch_size=...)")
    if x.shape[1] != in_channels:
        raise ValueError(f"{model}: expected {in_channels} input channel(s), got {x.shape[1]} "
                         f"(input shape {tuple(x.shape)}); build the model with in_channels={x.shape[1]}")


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


#: nnU-Net 2.1.1 3d_fullres plans of ``upstream_3d_models.md`` §3.1 (6 stages, widths min(32 * 2^i, 320)).
NNUNET_3D_PLANS = {
    # MSD BrainTumour / BraTS: 1 mm, 128^3 patch, batch 2, 3^3 kernels, isotropic strides
    "brats128": dict(patch_size=(128, 128, 128), kernel_sizes=[(3, 3, 3)] * 6,
                     strides=[(1, 1, 1)] + [(2, 2, 2)] * 5),
    # Abdomen CT (U-Mamba Dataset701): [2.5, 0.8027, 0.8027] mm, 40 x 224 x 192 patch (assumed, see the spec)
    "abd40": dict(patch_size=(40, 224, 192), kernel_sizes=[(1, 3, 3)] + [(3, 3, 3)] * 5,
                  strides=[(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)]),
}


def _topology(patch: Tuple[int, ...], min_size: int = 4) -> List[Tuple[int, ...]]:
    """nnU-Net's pooling rule for isotropic spacing: at every stage pool (stride 2) each axis whose map is still
    >= 2 * ``min_size``; stop when no axis can be pooled. 128^3 -> 5 poolings, 64^3 -> 4, 32^3 -> 3."""
    strides, cur = [(1,) * len(patch)], list(patch)
    while True:
        st = tuple(2 if c >= 2 * min_size else 1 for c in cur)
        if all(s == 1 for s in st):
            return strides
        strides.append(st)
        cur = [c // s for c, s in zip(cur, st)]


def nnunet_plan_3d(patch_size: Union[str, Size] = "brats128", features_per_stage: Optional[Sequence[int]] = None,
                   strides: Optional[Sequence[Size]] = None, kernel_sizes: Optional[Sequence[Size]] = None,
                   n_conv_per_stage: Optional[Sequence[int]] = None,
                   n_conv_per_stage_decoder: Optional[Sequence[int]] = None, model: str = "nnU-Net",
                   max_features: int = 320) -> NNUNetPlan:
    """A 3d_fullres plan. ``patch_size``: a plan name (``"brats128"``, ``"abd40"``, spec §3.1), an int (a cube)
    or a (D, H, W) tuple. Without explicit lists, a cube or box gets nnU-Net's topology for isotropic spacing
    (stride 2 on every axis still >= 8, 3^3 kernels, widths ``min(32 * 2^i, 320)``, 2 convs per stage; 128^3 ->
    the brats128 topology, 32^3 -> 4 stages). Every list can be given explicitly, per stage an int or a per-axis
    list (what nnU-Net's planner wrote into ``nnUNetPlans.json``: ``features_per_stage``, ``strides`` =
    ``pool_op_kernel_sizes``, ``kernel_sizes`` = ``conv_kernel_sizes``, ``n_conv_per_stage``,
    ``n_conv_per_stage_decoder``); ``patch_size`` is then the size the network is built for."""
    name = None
    if isinstance(patch_size, str):
        if patch_size not in NNUNET_3D_PLANS:
            raise ValueError(f"{model}: unknown 3-D plan {patch_size!r}; use one of {sorted(NNUNET_3D_PLANS)}, an "
                             f"int (a cube) or a (D, H, W) patch size")
        name, preset = patch_size, NNUNET_3D_PLANS[patch_size]
        patch_size = preset["patch_size"]
        strides = preset["strides"] if strides is None else strides
        kernel_sizes = preset["kernel_sizes"] if kernel_sizes is None else kernel_sizes
    try:
        patch = as_tuple(patch_size, 3)
    except (TypeError, ValueError):
        raise ValueError(f"{model}: patch_size must be a plan name, an int or 3 ints (D, H, W), got "
                         f"{patch_size!r}") from None
    if min(patch) < 1:
        raise ValueError(f"{model}: patch_size must be positive, got {patch_size!r}")
    if strides is None:
        n = len(features_per_stage) if features_per_stage is not None else None
        strides = _topology(patch)
        if n is not None:
            if n > len(strides):
                raise ValueError(f"{model}: {n} stages need {n - 1} poolings but a {'x'.join(map(str, patch))} patch "
                                 f"allows {len(strides) - 1}; give strides explicitly or fewer features_per_stage")
            strides = strides[:n]
        if len(strides) < 2:
            raise ValueError(f"{model}: patch {'x'.join(map(str, patch))} is too small to pool (every axis < 8)")
    n = len(strides)
    if features_per_stage is None:
        features_per_stage = [min(32 * 2 ** i, max_features) for i in range(n)]
    kernel_sizes = list(kernel_sizes) if kernel_sizes is not None else [3] * n
    n_conv_per_stage = list(n_conv_per_stage) if n_conv_per_stage is not None else [2] * n
    n_conv_per_stage_decoder = (list(n_conv_per_stage_decoder) if n_conv_per_stage_decoder is not None
                                else [2] * (n - 1))
    plan = NNUNetPlan(_plain(patch_size), features_per_stage, kernel_sizes, list(strides), n_conv_per_stage,
                      n_conv_per_stage_decoder, spatial_dims=3, name=name)
    d = as_tuple(plan.divisor, 3)
    if any(p % m for p, m in zip(patch, d)):
        raise ValueError(f"{model}: patch_size {'x'.join(map(str, patch))} is not divisible by "
                         f"{'x'.join(map(str, d))} (per axis, the product of the strides {plan.strides})")
    return plan


def nnunet_plan(patch_size, spatial_dims: int = 2, *args, **kwargs) -> NNUNetPlan:
    """:func:`nnunet_plan_2d` or :func:`nnunet_plan_3d` by ``spatial_dims``."""
    if check_spatial_dims(spatial_dims) == 2:
        return nnunet_plan_2d(patch_size, *args, **kwargs)
    return nnunet_plan_3d(patch_size, *args, **kwargs)


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


def stage_outputs(x: torch.Tensor, stages) -> List[torch.Tensor]:
    """Run ``stages`` one after another on ``x``; every stage's output (an encoder's skips, shallowest first)."""
    skips = []
    for stage in stages:
        x = stage(x)
        skips.append(x)
    return skips


def deep_supervision_active(value, training: bool) -> bool:
    return value is True or (value == "train" and training)


def decode_with_heads(x: torch.Tensor, n_stages: int, step, seg_layers: nn.ModuleList,
                      ds: bool) -> Union[torch.Tensor, List[torch.Tensor]]:
    """Run the decoder stages ``x = step(i, x)`` for ``i < n_stages``; with deep supervision (``ds``) every stage's
    segmentation head, returned full resolution first (nnU-Net's order), else only the last stage's head."""
    outs = []
    for i in range(n_stages):
        x = step(i, x)
        if ds:
            outs.append(seg_layers[i](x))
    return outs[::-1] if ds else seg_layers[-1](x)


class PlainConvEncoder(nn.Module):
    """``PlainConvEncoder`` of ``dynamic_network_architectures`` (``pool='conv'``): ``stages`` = Sequential of
    per-stage Sequentials, each holding one :class:`StackedConvBlocks` (n convs, the first strided). Returns
    every stage's output (the skips)."""

    def __init__(self, in_channels: int, plan: NNUNetPlan, conv_bias: bool = True):
        super().__init__()
        sd, f = plan.spatial_dims, plan.features
        self.stages = nn.Sequential(*[
            nn.Sequential(StackedConvBlocks(plan.n_conv_encoder[i], f[i - 1] if i else in_channels, f[i],
                                            plan.kernel_sizes[i], plan.strides[i], conv_bias, spatial_dims=sd))
            for i in range(plan.n_stages)])
        self.output_channels = list(f)
        self.strides = list(plan.strides)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return stage_outputs(x, self.stages)


class ResidualEncoder(nn.Module):
    """``ResidualEncoder`` of ``dynamic_network_architectures`` (BasicBlockD, default stem): ``stem`` = one
    conv-norm-nonlin (in -> features[0]), ``stages`` = Sequential of :class:`StackedResidualBlocks` (the first
    block of each strided). Returns every stage's output."""

    def __init__(self, in_channels: int, plan: NNUNetPlan, n_blocks: Sequence[int], conv_bias: bool = True):
        super().__init__()
        sd, f = plan.spatial_dims, plan.features
        self.stem = StackedConvBlocks(1, in_channels, f[0], plan.kernel_sizes[0], 1, conv_bias, spatial_dims=sd)
        self.stages = nn.Sequential(*[
            StackedResidualBlocks(n_blocks[i], f[i - 1] if i else f[0], f[i], plan.kernel_sizes[i], plan.strides[i],
                                  conv_bias, spatial_dims=sd) for i in range(plan.n_stages)])
        self.output_channels = list(f)
        self.strides = list(plan.strides)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return stage_outputs(self.stem(x), self.stages)


class UNetDecoder(nn.Module):
    """nnU-Net's ``UNetDecoder`` (and LKM-UNet's residual variant): stage i = transposed conv (C_below -> C_skip,
    kernel = stride, bias), concat the skip (every skip), ``n_conv_per_stage[i]`` conv blocks
    (:class:`StackedConvBlocks`, ``residual=False``) or BasicBlockDs (:class:`StackedResidualBlocks`,
    ``residual=True``) from 2 C_skip to C_skip, 1x1 seg head (with bias). Holds ``encoder`` as a child (the
    duplicated ``decoder.encoder.*`` keys). Deep supervision: every stage's logits, full resolution first."""

    def __init__(self, encoder: nn.Module, num_classes: int, plan: NNUNetPlan, n_conv_per_stage: Sequence[int],
                 deep_supervision: Union[bool, str] = False, residual: bool = False, conv_bias: bool = True):
        super().__init__()
        self.deep_supervision = check_deep_supervision(deep_supervision)
        self.encoder = encoder
        self.num_classes = num_classes
        sd, f, n = plan.spatial_dims, plan.features, plan.n_stages
        block = StackedResidualBlocks if residual else StackedConvBlocks
        stages, tconvs, segs = [], [], []
        for i in range(n - 1):
            below, skip, stride = f[n - 1 - i], f[n - 2 - i], plan.strides[n - 1 - i]
            tconvs.append(conv_transpose_nd(sd)(below, skip, stride, stride, bias=conv_bias))
            stages.append(block(n_conv_per_stage[i], 2 * skip, skip, plan.kernel_sizes[n - 2 - i], 1, conv_bias,
                                spatial_dims=sd))
            segs.append(conv_nd(sd)(skip, num_classes, 1))
        self.stages = nn.ModuleList(stages)
        self.transpconvs = nn.ModuleList(tconvs)
        self.seg_layers = nn.ModuleList(segs)

    def forward(self, skips: List[torch.Tensor]) -> Union[torch.Tensor, List[torch.Tensor]]:
        def step(i, x):
            return self.stages[i](torch.cat((self.transpconvs[i](x), skips[-(i + 2)]), 1))

        return decode_with_heads(skips[-1], len(self.stages), step, self.seg_layers,
                                 deep_supervision_active(self.deep_supervision, self.training))
