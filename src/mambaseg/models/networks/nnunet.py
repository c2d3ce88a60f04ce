"""nnU-Net's U-Nets (2-D and 3-D): ``PlainConvUNet`` and ``ResidualEncoderUNet``, the baselines of the 3-D papers.

Papers: F. Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 18 (2021); F. Isensee et al., "nnU-Net Revisited: A Call for Rigorous Validation in
3D Medical Image Segmentation", MICCAI 2024, arXiv:2404.09556 (the residual-encoder presets). Upstream:
https://github.com/MIC-DKFZ/dynamic-network-architectures (``architectures/unet.py``: ``PlainConvUNet``,
``ResidualEncoderUNet``; ``building_blocks/plain_conv_encoder.py``, ``residual_encoders.py``, ``unet_decoder.py``,
``simple_conv_blocks.py``, ``residual.py``), built by nnU-Net v2 from a 3d_fullres plan. Our own code on
:mod:`mambaseg.models.blocks.nnunet_blocks`. Module names equal upstream's, so the ``network_weights`` of an nnU-Net
checkpoint load with ``strict=True``:

* ``PlainConvUNet``: ``encoder.stages.{s}.0.convs.{j}.{conv,norm,all_modules.0,all_modules.1}.*``,
  ``decoder.encoder.*`` (the duplicated encoder), ``decoder.stages.{i}.convs.{j}.*``,
  ``decoder.transpconvs.{i}.{weight,bias}``, ``decoder.seg_layers.{i}.{weight,bias}``;
* ``ResidualEncoderUNet``: ``encoder.stem.convs.0.*``, ``encoder.stages.{s}.blocks.{j}.{conv1,conv2,skip}.*``
  (ResNet-D ``BasicBlockD``), the same decoder.

Architecture (nnU-Net v2's ``get_network_from_plans`` kwargs): Conv2d/3d with bias, InstanceNorm (eps 1e-5,
affine), LeakyReLU(0.01, inplace), no dropout; encoder stage s = ``n_conv_per_stage[s]`` conv-norm-nonlin blocks,
the first with the plan's stride (PlainConvUNet) or a stem conv + ``n_blocks_per_stage[s]`` BasicBlockDs
(ResidualEncoderUNet, strided skip = AvgPool + 1x1 conv + norm); decoder stage i = ConvTranspose (kernel = stride,
bias) -> concat the skip -> ``n_conv_per_stage_decoder[i]`` conv blocks -> 1x1 seg head. He init (slope 0.01) on
every conv; ResidualEncoderUNet also starts each block's last norm at 0 (``init_last_bn_before_add_to_0``). Returns
logits; deep supervision gives every decoder stage's logits, full resolution first.

Default plans: ``"brats128"`` (3d_fullres for BraTS / MSD BrainTumour: 128^3, 6 stages, widths 32..320, 3^3 kernels,
stride 2); ``"abd40"`` (Abdomen CT: 40 x 224 x 192, anisotropic kernels and strides); an int (a cube) or a (D, H, W)
tuple gets nnU-Net's topology for isotropic spacing; every list can be given explicitly as nnU-Net's plans file
writes it (``features_per_stage``, ``strides`` = ``pool_op_kernel_sizes``, ``kernel_sizes`` =
``conv_kernel_sizes``, ``n_conv_per_stage`` / ``n_blocks_per_stage``, ``n_conv_per_stage_decoder``).
PlainConvUNet: 2 convs per encoder and decoder stage (nnU-Net's default planner). ResidualEncoderUNet: the ResEnc
presets' ``n_blocks_per_stage = (1, 3, 4, 6, 6, 6, ...)`` and one conv per decoder stage (``nnUNetPlannerResEncM/L/XL``
differ only in patch and batch size, i.e. in the plan you give it).

Not to be confused with nnU-Net Revisited's "No-Mamba Base" (its U-Mamba comparison): that row is "U-Mamba with the
Mamba blocks removed" -- U-Mamba's own residual U-Net (``BasicResBlock`` stages, upsample + 1x1 conv decoder),
registered as ``umamba_nomamba_3d`` in :mod:`~mambaseg.models.networks.umamba_bot` -- while ``nnunet_resenc_3d`` is
``dynamic_network_architectures``' ``ResidualEncoderUNet`` (the paper's "nnU-Net ResEnc M/L/XL" rows).

Differences, each deliberate: ``deep_supervision`` defaults to False (nnU-Net's builder: True; ``"train"`` returns
the list in training mode only, as nnU-Net trains and then validates); inputs whose axes are not divisible by the
product of the strides raise a ValueError before any work; ``nonlin_first``, dropout, BottleneckD blocks, stochastic
depth and squeeze-excitation (never used by nnU-Net's default plans) are not offered.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from ..backbone import BackboneMixin
from ..blocks.nnunet_blocks import (PlainConvEncoder, ResidualEncoder, UNetDecoder, init_last_norm_before_add_to_zero,
                                    init_weights_he, nnunet_plan)
from ..blocks.umamba import NNUNetMambaBase, nnunet_feature_info
from ..registry import register_model

__all__ = ["PlainConvUNet", "ResidualEncoderUNet", "RESENC_BLOCKS"]

#: ``n_blocks_per_stage`` of nnU-Net's residual-encoder presets (``nnUNetPlannerResEncM/L/XL``)
RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)


class _NNUNetBase(NNUNetMambaBase, BackboneMixin):
    encoder_modules = ("encoder",)

    def _plan(self, patch_size, spatial_dims, features_per_stage, strides, kernel_sizes, n_enc, n_dec):
        if patch_size is None:
            patch_size = 256 if spatial_dims == 2 else "brats128"
        return nnunet_plan(patch_size, spatial_dims, features_per_stage, strides, kernel_sizes, n_enc, n_dec,
                           model=self.arch_name)

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Every encoder stage's output (the skips)."""
        self.check_input(x)
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        return self.decoder(self.forward_intermediates(x))


class PlainConvUNet(_NNUNetBase):
    """nnU-Net's plain U-Net (``dynamic_network_architectures`` ``PlainConvUNet``). Input (B, in_channels, *spatial),
    every axis divisible by the product of the strides along it (32 for brats128); output logits of the input's
    size, or with ``deep_supervision`` a list of logits, full resolution first.

    Args:
        in_channels: image channels. Default 4.
        num_classes: output channels (nnU-Net: segmentation heads; background included for softmax labels, one per
            region for region-based training). Default 4.
        patch_size: ``"brats128"`` (3-D default), ``"abd40"``, an int or a per-axis tuple (see the module doc);
            2-D: an int (nnU-Net's 2-D plan, 256 by default).
        features_per_stage, strides, kernel_sizes, n_conv_per_stage, n_conv_per_stage_decoder: explicit plan
            lists (per stage an int or a per-axis list), as in nnU-Net's ``nnUNetPlans.json``.
        deep_supervision: True (list, nnU-Net's builder default), False (default) or ``"train"``.
        spatial_dims: 3 (default) or 2.
    """

    arch_name = "nnU-Net PlainConvUNet"

    def __init__(self, in_channels: int = 4, num_classes: int = 4, patch_size=None,
                 features_per_stage: Optional[Sequence[int]] = None, strides: Optional[Sequence] = None,
                 kernel_sizes: Optional[Sequence] = None, n_conv_per_stage: Optional[Sequence[int]] = None,
                 n_conv_per_stage_decoder: Optional[Sequence[int]] = None, deep_supervision: Union[bool, str] = False,
                 spatial_dims: int = 3):
        super().__init__()
        plan = self._plan(patch_size, spatial_dims, features_per_stage, strides, kernel_sizes, n_conv_per_stage,
                          n_conv_per_stage_decoder)
        self._setup(in_channels, num_classes, plan)
        self.encoder = PlainConvEncoder(in_channels, plan)
        self.decoder = UNetDecoder(self.encoder, num_classes, plan, plan.n_conv_decoder, deep_supervision)
        self.feature_info = nnunet_feature_info(plan, [f"encoder.stages.{i}" for i in range(plan.n_stages)])
        self.apply(init_weights_he)


class ResidualEncoderUNet(_NNUNetBase):
    """nnU-Net's residual-encoder U-Net (``dynamic_network_architectures`` ``ResidualEncoderUNet``, the ResEnc
    presets of nnU-Net Revisited). Same input/output contract and arguments as :class:`PlainConvUNet`, with
    ``n_blocks_per_stage`` (default ``(1, 3, 4, 6, 6, 6, ...)``) BasicBlockDs per encoder stage and
    ``n_conv_per_stage_decoder`` (default 1 per stage) conv blocks per decoder stage."""

    arch_name = "nnU-Net ResidualEncoderUNet"

    def __init__(self, in_channels: int = 4, num_classes: int = 4, patch_size=None,
                 features_per_stage: Optional[Sequence[int]] = None, strides: Optional[Sequence] = None,
                 kernel_sizes: Optional[Sequence] = None, n_blocks_per_stage: Optional[Sequence[int]] = None,
                 n_conv_per_stage_decoder: Optional[Sequence[int]] = None, deep_supervision: Union[bool, str] = False,
                 spatial_dims: int = 3):
        super().__init__()
        plan = self._plan(patch_size, spatial_dims, features_per_stage, strides, kernel_sizes, None, None)
        n = plan.n_stages
        if n_blocks_per_stage is None:
            if n > len(RESENC_BLOCKS):
                raise ValueError(f"{self.arch_name}: give n_blocks_per_stage for {n} stages")
            n_blocks_per_stage = list(RESENC_BLOCKS[:n])
        if n_conv_per_stage_decoder is None:
            n_conv_per_stage_decoder = [1] * (n - 1)
        plan = self._plan(patch_size, spatial_dims, plan.features, plan.strides, plan.kernel_sizes,
                          n_blocks_per_stage, n_conv_per_stage_decoder)
        self._setup(in_channels, num_classes, plan)
        self.n_blocks_per_stage = list(plan.n_conv_encoder)
        self.encoder = ResidualEncoder(in_channels, plan, plan.n_conv_encoder)
        self.decoder = UNetDecoder(self.encoder, num_classes, plan, plan.n_conv_decoder, deep_supervision)
        self.feature_info = nnunet_feature_info(plan, [f"encoder.stages.{i}" for i in range(plan.n_stages)])
        self.apply(init_weights_he)
        self.apply(init_last_norm_before_add_to_zero)


_PAPER = "nnU-Net (Isensee et al., Nature Methods 2021; nnU-Net Revisited, MICCAI 2024)"


@register_model("nnunet_3d", paper=_PAPER, default_size=128, family="baseline", spatial_dims=3)
def nnunet_3d(in_channels: int = 4, num_classes: int = 4, **kwargs) -> PlainConvUNet:
    """nnU-Net 3d_fullres PlainConvUNet (default plan brats128: 128^3, 6 stages, 32..320, 2 convs per stage)."""
    return PlainConvUNet(in_channels=in_channels, num_classes=num_classes, **kwargs)


@register_model("nnunet_resenc_3d", paper=_PAPER, default_size=128, family="baseline", spatial_dims=3)
def nnunet_resenc_3d(in_channels: int = 4, num_classes: int = 4, **kwargs) -> ResidualEncoderUNet:
    """nnU-Net 3d_fullres ResidualEncoderUNet (ResEnc presets: blocks 1,3,4,6,6,6; default plan brats128)."""
    return ResidualEncoderUNet(in_channels=in_channels, num_classes=num_classes, **kwargs)
