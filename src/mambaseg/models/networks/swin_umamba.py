"""Swin-UMamba: VMamba-T encoder (ImageNet-pretrained) with a UNETR-style CNN decoder.

Paper: J. Liu, H. Yang, H.-Y. Zhou, Y. Xi, L. Yu, C. Li, Y. Liang, G. Shi, Y. Yu, S. Zhang, H. Zheng, S. Wang,
"Swin-UMamba: Mamba-based UNet with ImageNet-based pretraining", arXiv:2402.03302 (MICCAI 2024).
Upstream code: https://github.com/JiarunLiu/Swin-UMamba (``swin_umamba/nnunetv2/nets/SwinUMamba.py``, trainers
``nnUNetTrainerSwinUMamba{,Scratch}.py``), re-written here in our own code: the encoder on the shared VMamba v0
blocks of :mod:`mambaseg.models.blocks.vss`, the decoder on the MONAI-like blocks of :mod:`mambaseg.models.blocks.unetr_blocks`.
Module and parameter names equal upstream's (``stem``, ``vssm_encoder.{patch_embed, layers, downsamples}``,
``encoder1..5``, ``decoder6..1``, ``out_layers``), so an upstream ``state_dict`` (257 keys) loads with
``strict=True``. 59,889,368 parameters for 1 channel / 14 classes (AbdomenMR).

Architecture: stem Conv7x7 s2 (in -> 48, bias) + InstanceNorm2d(48, affine), **no activation** -> VMamba v0 tiny
encoder (patch embed 2x2 s2 48 -> 96 + LayerNorm, stages of [2, 2, 9, 2] v0 VSS blocks at 96..768, PatchMerging2D
in ``downsamples``, drop path linspace(0, 0.2, 15)) returning [stem 48@H/2, 96@H/4, 192@H/8, 384@H/16, 768@H/32]
(each stage before its merge) -> UNETR decoder: ``encoder1`` on the raw image, ``encoder2..5`` on the first four
maps, ``decoder6..2`` UnetrUpBlocks from the 768@H/32 bottleneck, ``decoder1`` a basic block at full resolution,
``out_layers[0..3]`` 1x1 heads on decoder1/decoder3/decoder4/decoder5 (i.e. H, H/2, H/4, H/8).

Upstream behaviour kept:

* ``deep_supervision`` (attribute, as upstream): when True the output is the list of logits
  [H, H/2, H/4, H/8] (full resolution first); when False one logits tensor. All four heads exist in both modes.
  Default here False (one tensor; the nnU-Net trainer turns it on for training); upstream's constructor default
  is True.
* Init: ``VSSMEncoder._init_weights`` on the encoder only (Linear trunc-normal 0.02, LayerNorm 1/0); stem, UNETR
  blocks and heads keep PyTorch defaults. Unused upstream constructor arguments (``drop_path_rate`` of the
  decoder, ``layer_scale_init_value``) are not offered.
* Pretrained: ``load_pretrained`` takes the VMamba-T v0 checkpoint ``vssmtiny_dp01_ckpt_epoch_292.pth``
  (= upstream's ``vmamba_tiny_e292.pth``) and fills the same 205 keys from the same tensors as upstream's
  ``load_pretrained_ckpt``, including its skip-list slip: ``patch_embed.norm.bias`` is loaded while
  ``patch_embed.norm.weight`` and the patch-embed conv are not.

Differences: returns logits (as upstream); input sides not divisible by 32 raise a ValueError (upstream prints a
warning in PatchMerging2D and crops, then fails in the decoder concat); the scan is ``mambaseg.ops.selective_scan``
(no ``mamba_ssm`` import needed).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn

from ..backbone import BackboneMixin
from ..blocks.layers import check_input_size
from ..pretrained import register_pretrained_loader
from ..pretrained_vmamba import load_vmamba_v0_into_vssm_encoder
from ..registry import register_model
from ..blocks.unetr_blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from ..blocks.vss import VSSMEncoder

__all__ = ["SwinUMamba", "load_vmamba_into_swin_umamba"]


class SwinUMamba(BackboneMixin, nn.Module):
    """Swin-UMamba (Liu et al., MICCAI 2024, arXiv:2402.03302). Returns logits (B, num_classes, H, W), or the
    list [H, H/2, H/4, H/8] of logits when ``deep_supervision``.

    Args:
        in_channels: image channels. Default: 1.
        num_classes: output channels incl. background (logits). Default: 14 (AbdomenMR).
        deep_supervision: return the four heads' logits (upstream attribute). Default: False.
        depths: v0 VSS blocks per stage. Default: [2, 2, 9, 2] (VMamba-T).
        drop_path_rate: encoder stochastic depth (linspace 0 -> rate). Default: 0.2.

    H and W must be divisible by 32.
    """

    #: modules the encoder uses (``create_model(..., features_only=True)`` keeps only these)
    encoder_modules = ("stem", "vssm_encoder")
    downsample_factor = 32  # input sides must be multiples of this

    default_input_size = 256

    def __init__(self, in_channels: int = 1, num_classes: int = 14, deep_supervision: bool = False,
                 depths: Sequence[int] = (2, 2, 9, 2), drop_path_rate: float = 0.2):
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.deep_supervision = bool(deep_supervision)
        feat = [48, 96, 192, 384, 768]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, feat[0], 7, 2, 3), nn.InstanceNorm2d(feat[0], affine=True))
        self.vssm_encoder = VSSMEncoder(2, feat[0], depths, feat[1:], 16, drop_path_rate)
        self.encoder1 = UnetrBasicBlock(in_channels, feat[0])
        self.encoder2 = UnetrBasicBlock(feat[0], feat[1])
        self.encoder3 = UnetrBasicBlock(feat[1], feat[2])
        self.encoder4 = UnetrBasicBlock(feat[2], feat[3])
        self.encoder5 = UnetrBasicBlock(feat[3], feat[4])
        self.decoder6 = UnetrUpBlock(768, feat[4])
        self.decoder5 = UnetrUpBlock(feat[4], feat[3])
        self.decoder4 = UnetrUpBlock(feat[3], feat[2])
        self.decoder3 = UnetrUpBlock(feat[2], feat[1])
        self.decoder2 = UnetrUpBlock(feat[1], feat[0])
        self.decoder1 = UnetrBasicBlock(feat[0], feat[0])
        self.out_layers = nn.ModuleList([UnetOutBlock(c, num_classes) for c in feat[:4]])
        self.feature_info = ([{"num_chs": 48, "reduction": 2, "module": "stem"}]
                             + [{"num_chs": c, "reduction": 4 * 2 ** i, "module": f"vssm_encoder.layers.{i}"}
                                for i, c in enumerate(feat[1:])])

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"Swin-UMamba: expected a torch.Tensor, got {type(x).__name__}")
        check_input_size(x, self.in_channels, 32, "Swin-UMamba")

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Encoder maps [stem 48@H/2, 96@H/4, 192@H/8, 384@H/16, 768@H/32] (channels-first)."""
        self._check(x)
        return self.vssm_encoder(self.stem(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x)[-1]

    def forward(self, x: torch.Tensor):
        feats = self.forward_intermediates(x)
        enc1 = self.encoder1(x)
        enc2 = self.encoder2(feats[0])
        enc3 = self.encoder3(feats[1])
        enc4 = self.encoder4(feats[2])
        enc5 = self.encoder5(feats[3])
        dec4 = self.decoder6(feats[4], enc5)
        dec3 = self.decoder5(dec4, enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        out = self.decoder1(self.decoder2(dec1, enc1))
        if self.deep_supervision:
            return [head(f) for head, f in zip(self.out_layers, (out, dec1, dec2, dec3))]
        return self.out_layers[0](out)


# upstream's skip list; 'patch_embed.norm.weight' appears twice in it, so 'patch_embed.norm.bias' is loaded
_SWIN_UMAMBA_SKIP = ("norm.weight", "norm.bias", "head.weight", "head.bias", "patch_embed.proj.weight",
                     "patch_embed.proj.bias", "patch_embed.norm.weight")


def load_vmamba_into_swin_umamba(model: SwinUMamba, state_dict, report):
    """Swin-UMamba (upstream ``load_pretrained_ckpt``): 205 of 257 keys from VMamba-T v0."""
    return load_vmamba_v0_into_vssm_encoder(model, state_dict, report, lambda k, sd: k in _SWIN_UMAMBA_SKIP,
                                            "Swin-UMamba")


register_pretrained_loader(SwinUMamba)(load_vmamba_into_swin_umamba)


@register_model("swin_umamba", paper="Swin-UMamba (Liu et al., MICCAI 2024, arXiv:2402.03302)")
def swin_umamba(in_channels: int = 3, num_classes: int = 1, **kwargs) -> SwinUMamba:
    """Swin-UMamba: conv stem + VMamba-T v0 encoder, UNETR-style residual CNN decoder, 4 heads."""
    return SwinUMamba(in_channels=in_channels, num_classes=num_classes, **kwargs)
