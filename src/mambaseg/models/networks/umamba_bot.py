"""U-Mamba Bot (2-D and 3-D): nnU-Net residual U-Net with one Mamba layer at the bottleneck.

Paper: J. Ma, F. Li, B. Wang, "U-Mamba: Enhancing Long-range Dependency for Biomedical Image Segmentation",
arXiv:2401.04722 (2024). Upstream: https://github.com/bowang-lab/U-Mamba (commit 28459e3,
``umamba/nnunetv2/nets/UMambaBot_2d.py``, trainer ``nnUNetTrainerUMambaBot``), described in
``upstream_mamba1_models.md`` §3; 3-D: ``UMambaBot_3d.py``, ``upstream_3d_models.md`` §3; re-written here in our
own code on :mod:`mambaseg.models.blocks.nnunet_blocks` and the Mamba-1 block :class:`mambaseg.models.blocks.mamba1.Mamba`. Module names equal upstream's (``encoder.stem``,
``encoder.stages``, ``mamba_layer.{norm,mamba}``, ``decoder.{encoder,stages,upsample_layers,seg_layers}``), so an
upstream ``network_weights`` state dict (``decoder.encoder.*`` duplicates included) loads with ``strict=True``.

The family's blocks (:class:`BasicResBlock`, :class:`UpsampleLayer`, :class:`MambaLayer`, :class:`UNetResEncoder`,
:class:`UNetResDecoder`) live in :mod:`mambaseg.models.blocks.umamba`.

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

3-D (``spatial_dims=3``, registered as ``umamba_bot_3d``; default plan ``"brats128"``): the same class with Conv3d /
InstanceNorm3d, per-axis kernels, paddings (k // 2) and strides from the 3d_fullres plan (``"brats128"``,
``"abd40"``, a cube / box planned by nnU-Net's rule, or explicit per-axis lists), widths min(32 * 2^i, 320), and
upstream's one architectural 3-D difference: **the decoder concatenates the skip at every stage**, the
full-resolution one included (its last BasicResBlock is 2 * 32 -> 32). Tokens are the voxels in (D, H, W)
row-major order. brats128 (4 -> 4): 42,124,692 parameters, as upstream.

"No-Mamba Base" (``use_mamba=False``, registered as ``umamba_nomamba_3d``): nnU-Net Revisited's (Isensee et al.,
MICCAI 2024, arXiv:2404.09556) ablation "U-Mamba with the Mamba blocks removed" -- the same network with the
bottleneck Mamba layer replaced by an identity (no ``mamba_layer`` keys; everything else, keys included, as
U-Mamba Bot).

Differences, each deliberate:

* ``deep_supervision`` defaults to False (a single logits tensor, as every mambaseg model); upstream's builder
  default is True (list of logits, full resolution first). ``model.deep_supervision`` can be flipped as
  nnU-Net's ``set_deep_supervision_enabled`` does; ``"train"`` returns the list in training mode only (what the
  nnU-Net trainer does; the engine then applies nnU-Net's deep-supervision loss weights).
* The Mamba layer runs in float32 under any autocast (upstream, 2-D and 3-D, disables CUDA autocast and casts
  fp16 only, so under bf16 autocast its fp32 Mamba would get bf16 tensors; we also cast bf16, and disable autocast
  on CPU too).
* Input sizes not divisible by the product of the strides (64 for plan256) raise a ValueError.
* The ignored upstream arguments (``stem_channels``, ``dropout_op``, ``pool_type``) are not accepted.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..backbone import BackboneMixin
from ..blocks.nnunet_blocks import block_counts_umamba, init_weights_he, nnunet_plan
from ..blocks.umamba import MambaLayer, NNUNetMambaBase, UNetResDecoder, UNetResEncoder, nnunet_feature_info
from ..registry import register_model

__all__ = ["UMambaBot"]


class UMambaBot(NNUNetMambaBase, BackboneMixin):
    """U-Mamba Bot (Ma et al., 2024, arXiv:2401.04722). Input (B, in_channels, H, W) or, with ``spatial_dims=3``,
    (B, in_channels, D, H, W), every axis divisible by the product of the strides along it (64 for the 2-D 256
    plan, 128 for 512; 32 for brats128; 8 x 32 x 32 for abd40); output logits of the input's size, or with
    ``deep_supervision`` a list of logits, full resolution first (one per decoder stage).

    Args:
        in_channels: image channels. Default 3.
        num_classes: output channels (nnU-Net: segmentation heads incl. background). Default 1.
        patch_size: nnU-Net plan to build. 2-D (spec §2.1): 256 (7 stages, default) or 512 (8 stages); any size
            divisible by 2^floor(log2(size/4)) works (64 -> 5 stages). 3-D: ``"brats128"`` (default),
            ``"abd40"``, an int (a cube) or a (D, H, W) tuple (nnU-Net's topology for isotropic spacing).
        features_per_stage, strides, kernel_sizes, n_conv_per_stage, n_conv_per_stage_decoder: explicit plan
            lists instead of the canonical ones (the block-count override is applied to them as upstream).
        deep_supervision: return every decoder stage's logits: True (always, upstream's builder default), False
            (default), or ``"train"`` (in training mode only, as nnU-Net trains and then validates).
        spatial_dims: 2 (default) or 3 (upstream's ``UMambaBot_3d.py``).
        use_mamba: False builds nnU-Net Revisited's "No-Mamba Base" (the Mamba layer replaced by an identity).
    """

    arch_name = "U-Mamba Bot"

    def __init__(self, in_channels: int = 3, num_classes: int = 1, patch_size=None,
                 features_per_stage: Optional[Sequence[int]] = None, strides: Optional[Sequence] = None,
                 kernel_sizes: Optional[Sequence] = None, n_conv_per_stage: Optional[Sequence[int]] = None,
                 n_conv_per_stage_decoder: Optional[Sequence[int]] = None, deep_supervision: Union[bool, str] = False,
                 spatial_dims: int = 2, use_mamba: bool = True):
        super().__init__()
        if patch_size is None:
            patch_size = 256 if spatial_dims == 2 else "brats128"
        plan = nnunet_plan(patch_size, spatial_dims, features_per_stage, strides, kernel_sizes, n_conv_per_stage,
                           n_conv_per_stage_decoder, model=self.arch_name)
        self._setup(in_channels, num_classes, plan)
        n_enc, n_dec = block_counts_umamba(plan.n_conv_encoder, plan.n_conv_decoder)
        self.n_blocks_per_stage, self.n_conv_per_stage_decoder = n_enc, n_dec
        self.encoder = UNetResEncoder(in_channels, plan, n_enc)
        self.mamba_layer = MambaLayer(dim=plan.features[-1]) if use_mamba else nn.Identity()
        self.decoder = UNetResDecoder(self.encoder, num_classes, plan, n_dec, deep_supervision,
                                      concat_all=plan.spatial_dims == 3)
        n = plan.n_stages
        self.feature_info = nnunet_feature_info(
            plan, [f"encoder.stages.{i}" if i < n - 1 else "mamba_layer" for i in range(n)])
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


@register_model("umamba_bot_3d", paper="U-Mamba (Ma, Li & Wang, 2024, arXiv:2401.04722)", default_size=128,
                spatial_dims=3)
def umamba_bot_3d(in_channels: int = 4, num_classes: int = 4, **kwargs) -> UMambaBot:
    """U-Mamba Bot 3-D, nnU-Net 3d_fullres plan (default brats128: 128^3, 6 stages, 32..320), skip at every decoder
    stage."""
    return UMambaBot(in_channels=in_channels, num_classes=num_classes, **_three_d(kwargs, "umamba_bot_3d"))


@register_model("umamba_nomamba_3d", paper="nnU-Net Revisited (Isensee et al., 2024, arXiv:2404.09556)",
                default_size=128, family="baseline", spatial_dims=3)
def umamba_nomamba_3d(in_channels: int = 4, num_classes: int = 4, **kwargs) -> UMambaBot:
    """nnU-Net Revisited's "No-Mamba Base": U-Mamba Bot 3-D with the Mamba layer removed (default plan brats128)."""
    kwargs = _three_d(kwargs, "umamba_nomamba_3d")
    if kwargs.pop("use_mamba", False):
        raise ValueError("umamba_nomamba_3d has no Mamba layer; use umamba_bot_3d for U-Mamba Bot")
    return UMambaBot(in_channels=in_channels, num_classes=num_classes, use_mamba=False, **kwargs)


def _three_d(kwargs: dict, name: str) -> dict:
    if kwargs.get("spatial_dims", 3) != 3:
        raise ValueError(f"{name} is a 3-D network (spatial_dims=3); use umamba_bot for 2-D")
    return {**kwargs, "spatial_dims": 3}
