"""U-Mamba Enc (2-D and 3-D): U-Mamba with Mamba layers in the encoder (2-D: every other stage; 3-D: every stage).

Paper: J. Ma, F. Li, B. Wang, "U-Mamba: Enhancing Long-range Dependency for Biomedical Image Segmentation",
arXiv:2401.04722 (2024). Upstream: https://github.com/bowang-lab/U-Mamba (commit 28459e3,
``umamba/nnunetv2/nets/UMambaEnc_2d.py``, trainers ``nnUNetTrainerUMambaEnc`` / ``nnUNetTrainerUMambaEncNoAMP``),
described in ``upstream_mamba1_models.md`` §4; 3-D: ``UMambaEnc_3d.py``, ``upstream_3d_models.md`` §3; our own code
on the blocks of :mod:`mambaseg.models.blocks.umamba`.
Module names equal upstream's (``encoder.{stem,mamba_layers,stages}``, ``decoder.*`` incl. the duplicated
``decoder.encoder.*``), so upstream state dicts load with ``strict=True``.

Same stem, stages, block-count override, decoder (no skip at the last stage), He init and logits as U-Mamba Bot;
the encoder (upstream ``ResidualMambaEncoder``) runs ``mamba_layers[s]`` after stage ``s`` when ``s`` is odd XOR
the number of stages is odd (plan256: stages 0, 2, 4, 6; plan512: 1, 3, 5, 7; the others are ``nn.Identity``,
keeping the ModuleList indices). Each Mamba layer works either on pixel tokens (dim = C_s, L = H_s*W_s) or, where
the map is small (H_s*W_s <= C_s), on **channel tokens** (dim = H_s*W_s, L = C_s), decided from the patch size.

Upstream quirks, all kept: no residual around the Mamba layers; the block-count override; no skip at the last
decoder stage; the channel-token layers' width is the planned H_s*W_s, so **the network only runs at the patch
size it was built for** (upstream fails deep inside; here ``forward`` refuses any other size with one line
naming the size to build for, ``patch_size=...``).

3-D (``spatial_dims=3``, registered as ``umamba_enc_3d``, default plan ``"brats128"``): the same class with the 3-D
ops and per-axis plans, and upstream's 3-D differences: **a Mamba layer after every encoder stage**; the decoder
concatenates the skip at every stage (full resolution included); channel tokens where D_s*H_s*W_s <= C_s (brats128:
stage 5, 4^3 = 64 <= 320 -> Mamba(d_model=64) over 320 channel tokens; abd40: stage 5, 5x7x6 = 210). The
first stage scans D*H*W tokens (2,097,152 at 128^3). brats128 (4 -> 4): 42,755,220 parameters, as upstream.

Differences, each deliberate: ``deep_supervision`` defaults to False (upstream builder: True); the Mamba layers
run in float32 under any autocast (upstream: fp16 cast + CUDA autocast off; its 3-D file also casts bf16);
nothing is printed at construction.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..blocks.nnunet_blocks import NNUNetPlan, block_counts_umamba, check_input_nd, init_weights_he, nnunet_plan
from ..backbone import BackboneMixin
from ..registry import register_model
from ..blocks.umamba import MambaLayer, UNetResDecoder, NNUNetMambaBase, nnunet_feature_info, res_stage

__all__ = ["UMambaEnc", "ResidualMambaEncoder"]


class ResidualMambaEncoder(nn.Module):
    """``stem``, ``mamba_layers`` (ModuleList, Identity where there is none), ``stages`` (ModuleList); returns the
    stage outputs after their Mamba layers (the skips). ``every_stage``: a Mamba layer after every stage (3-D
    upstream) instead of the stages with ``s`` odd XOR ``n`` odd (2-D upstream)."""

    def __init__(self, in_channels: int, plan: NNUNetPlan, n_blocks: Sequence[int], every_stage: bool = False):
        super().__init__()
        f, k, s, n, sd = plan.features, plan.kernel_sizes, plan.strides, plan.n_stages, plan.spatial_dims
        self.stem = res_stage(in_channels, f[0], n_blocks[0], k[0], 1, sd)
        self.feature_map_sizes, self.do_channel_token, layers = [], [], []
        for i, size in enumerate(plan.feature_map_sizes):
            self.feature_map_sizes.append(size)
            positions = 1
            for e in size:
                positions *= e
            channel_token = positions <= f[i]
            self.do_channel_token.append(channel_token)
            if every_stage or (i % 2 == 1) != (n % 2 == 1):
                layers.append(MambaLayer(dim=positions if channel_token else f[i], channel_token=channel_token))
            else:
                layers.append(nn.Identity())
        self.mamba_layers = nn.ModuleList(layers)
        self.stages = nn.ModuleList([res_stage(f[i - 1] if i else f[0], f[i], n_blocks[i], k[i], s[i], sd)
                                     for i in range(n)])
        self.output_channels = list(f)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage, mamba in zip(self.stages, self.mamba_layers):
            x = mamba(stage(x))
            skips.append(x)
        return skips


class UMambaEnc(NNUNetMambaBase, BackboneMixin):
    """U-Mamba Enc (Ma et al., 2024, arXiv:2401.04722). Input (B, in_channels, P, P) or, with ``spatial_dims=3``,
    (B, in_channels, D, H, W), of exactly the patch size it was built for; output logits of that size, or with
    ``deep_supervision`` a list of logits, full resolution first.

    Args:
        in_channels: image channels. Default 3.
        num_classes: output channels (nnU-Net: segmentation heads incl. background). Default 1.
        patch_size: the nnU-Net plan (2-D: 256: 7 stages, default; 512: 8 stages; 64: 5 stages; 3-D:
            ``"brats128"`` (default), ``"abd40"``, an int (cube) or a (D, H, W) tuple) and the only input size
            the network accepts.
        features_per_stage, strides, kernel_sizes, n_conv_per_stage, n_conv_per_stage_decoder: explicit plan
            lists instead of the canonical ones.
        deep_supervision: return every decoder stage's logits: True (always, upstream's builder default), False
            (default), or ``"train"`` (in training mode only, as nnU-Net trains and then validates).
        spatial_dims: 2 (default) or 3 (upstream's ``UMambaEnc_3d.py``: Mamba after every stage).
    """

    arch_name = "U-Mamba Enc"
    fixed_input_size = property(lambda self: self.plan.patch_tuple)  # the plan's size only (contract)

    def __init__(self, in_channels: int = 3, num_classes: int = 1, patch_size=None,
                 features_per_stage: Optional[Sequence[int]] = None, strides: Optional[Sequence] = None,
                 kernel_sizes: Optional[Sequence] = None, n_conv_per_stage: Optional[Sequence[int]] = None,
                 n_conv_per_stage_decoder: Optional[Sequence[int]] = None, deep_supervision: Union[bool, str] = False,
                 spatial_dims: int = 2):
        super().__init__()
        if patch_size is None:
            patch_size = 256 if spatial_dims == 2 else "brats128"
        plan = nnunet_plan(patch_size, spatial_dims, features_per_stage, strides, kernel_sizes, n_conv_per_stage,
                           n_conv_per_stage_decoder, model=self.arch_name)
        self._setup(in_channels, num_classes, plan)
        n_enc, n_dec = block_counts_umamba(plan.n_conv_encoder, plan.n_conv_decoder)
        self.n_blocks_per_stage, self.n_conv_per_stage_decoder = n_enc, n_dec
        three_d = plan.spatial_dims == 3
        self.encoder = ResidualMambaEncoder(in_channels, plan, n_enc, every_stage=three_d)
        self.decoder = UNetResDecoder(self.encoder, num_classes, plan, n_dec, deep_supervision, concat_all=three_d)
        self.feature_info = nnunet_feature_info(
            plan, [f"encoder.mamba_layers.{i}" if isinstance(self.encoder.mamba_layers[i], MambaLayer)
                   else f"encoder.stages.{i}" for i in range(plan.n_stages)])
        self.apply(init_weights_he)

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        if self.spatial_dims != 2:
            p = self.plan.patch_tuple
            if tuple(x.shape[2:]) != p:
                got, want = "x".join(map(str, x.shape[2:])), "x".join(map(str, p))
                raise ValueError(f"{self.arch_name} was built for {want} inputs (its channel-token Mamba layers have "
                                 f"the planned map sizes), got {got}: build it with patch_size={tuple(x.shape[2:])} "
                                 f"for that size, or tile the input into {want} patches (sliding window)")
            return
        p = self.plan.patch_size
        if tuple(x.shape[-2:]) != (p, p):
            raise ValueError(f"{self.arch_name} was built for {p}x{p} inputs (its channel-token Mamba layers have "
                             f"the planned map sizes), got {x.shape[-2]}x{x.shape[-1]}: build it with "
                             f"patch_size={x.shape[-2]} for that size, or resize/tile the input to {p}x{p}")

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The skips: stage outputs, after the Mamba layer where the stage has one."""
        self.check_input(x)
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        return self.decoder(self.forward_intermediates(x))


@register_model("umamba_enc", paper="U-Mamba (Ma, Li & Wang, 2024, arXiv:2401.04722)", default_size=256)
def umamba_enc(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UMambaEnc:
    """U-Mamba Enc 2-D, nnU-Net 256 plan; Mamba after encoder stages 0, 2, 4, 6; only runs at its patch size."""
    return UMambaEnc(in_channels=in_channels, num_classes=num_classes, **kwargs)


@register_model("umamba_enc_3d", paper="U-Mamba (Ma, Li & Wang, 2024, arXiv:2401.04722)", default_size=128,
                spatial_dims=3)
def umamba_enc_3d(in_channels: int = 4, num_classes: int = 4, **kwargs) -> UMambaEnc:
    """U-Mamba Enc 3-D, nnU-Net 3d_fullres plan (default brats128), Mamba after every encoder stage; only runs at
    its patch size."""
    return UMambaEnc(in_channels=in_channels, num_classes=num_classes, **_three_d(kwargs))


def _three_d(kwargs: dict) -> dict:
    if kwargs.get("spatial_dims", 3) != 3:
        raise ValueError("umamba_enc_3d is a 3-D network (spatial_dims=3); use umamba_enc for 2-D")
    return {**kwargs, "spatial_dims": 3}
