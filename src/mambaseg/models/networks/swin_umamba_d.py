"""Swin-UMamba†: VMamba-T encoder (ImageNet-pretrained) with a Mamba (VSS) decoder.

Paper: J. Liu et al., "Swin-UMamba: Mamba-based UNet with ImageNet-based pretraining", arXiv:2402.03302
(MICCAI 2024), the "†" variant. Upstream code: https://github.com/JiarunLiu/Swin-UMamba
(``swin_umamba/nnunetv2/nets/SwinUMambaD.py``, trainers ``nnUNetTrainerSwinUMambaD{,Scratch}.py``), re-written
here in our own code on the shared VMamba v0 blocks of :mod:`mambaseg.models.blocks.vss` and the ``VSSMEncoder`` of
:mod:`mambaseg.models.networks.swin_umamba`. Module and parameter names equal upstream's (``vssm_encoder.*``,
``decoder.{expand_layers, concat_back_dim, stages, seg_layers}``), so an upstream ``state_dict`` (312 keys)
loads with ``strict=True``. 27,497,720 parameters for 1 channel / 14 classes.

Architecture: VMamba-T v0 encoder with a 4x4 patch embedding on the image (no CNN stem), stages [2, 2, 9, 2] at
96..768 -> ``UNetResDecoder`` (channels-last inside): three up stages (PatchExpand Linear(C -> 2C, no bias) + 2x2
pixel shuffle + LayerNorm(C/2); concat [up, skip]; Linear(2C' -> C', bias); two v0 VSS blocks; drop path
(0.2, 0.16), (0.12, 0.08), (0.04, 0)), then FinalPatchExpand_X4 (Linear 96 -> 1536, 4x4 shuffle, LayerNorm(96))
and 1x1 ``seg_layers`` heads.

Upstream behaviour kept:

* ``deep_supervision`` (upstream's ``decoder.deep_supervision`` attribute; ``model.deep_supervision`` here sets
  it): the list [H, H/4, H/8, H/16] of logits (full resolution first); otherwise only the full-resolution logits
  (the other heads are not evaluated). Default False (upstream's trainer enables it for training; the
  ``DScratch`` trainer disables it).
* Init: ``VSSMEncoder._init_weights`` on the encoder, then upstream's ``InitWeights_He(1e-2)`` on the whole model:
  every Conv2d (patch embedding, each SS2D depthwise conv in encoder and decoder, the heads) kaiming-normal
  (a = 0.01, fan_in) with zero bias; decoder Linears and LayerNorms keep PyTorch defaults.
* Pretrained: ``load_pretrained`` with ``vssmtiny_dp01_ckpt_epoch_292.pth`` fills the encoder as upstream
  (final norm and head skipped; the four patch-embed tensors skipped iff the checkpoint's input conv has another
  channel count than the model: 204 of 312 keys for 1 channel, 208 for 3). The decoder is not initialised from it.

Differences: input sides not divisible by 32 raise a ValueError; the scan is ``mambaseg.ops.selective_scan``.
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
from ..blocks.vss import FinalPatchExpandX4, PatchExpand, VSSLayer, VSSMEncoder

__all__ = ["SwinUMambaD", "UNetResDecoder", "init_weights_he"]


def init_weights_he(m: nn.Module, neg_slope: float = 1e-2) -> None:
    """nnU-Net's ``InitWeights_He(1e-2)`` for ``module.apply``: Conv2d / ConvTranspose2d weights
    kaiming_normal_(a=neg_slope) (fan_in), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.kaiming_normal_(m.weight, a=neg_slope)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class UNetResDecoder(nn.Module):
    """Upstream ``UNetResDecoder``: ``expand_layers``, ``concat_back_dim``, ``stages``, ``seg_layers``."""

    def __init__(self, num_classes: int, dims: Sequence[int] = (96, 192, 384, 768), depth: int = 2,
                 drop_path_rate: float = 0.2, d_state: int = 16, deep_supervision: bool = False):
        super().__init__()
        self.deep_supervision = bool(deep_supervision)
        n = len(dims) - 1
        flat = torch.linspace(drop_path_rate, 0, depth * n, device="cpu").tolist()
        below = list(dims[::-1][:-1])                       # 768, 384, 192
        skip = list(dims[::-1][1:])                         # 384, 192, 96
        self.expand_layers = nn.ModuleList([PatchExpand(b) for b in below] + [FinalPatchExpandX4(dims[0])])
        self.concat_back_dim = nn.ModuleList([nn.Linear(2 * s, s) for s in skip])
        self.stages = nn.ModuleList([VSSLayer(s, depth, flat[i * depth:(i + 1) * depth], d_state)
                                     for i, s in enumerate(skip)] + [nn.Identity()])
        self.seg_layers = nn.ModuleList([nn.Conv2d(s, num_classes, 1) for s in skip + [dims[0]]])

    def forward(self, feats: List[torch.Tensor]):
        """feats: encoder maps [96@H/4, 192@H/8, 384@H/16, 768@H/32] channels-first."""
        x = feats[-1].permute(0, 2, 3, 1)
        segs = []
        for s in range(len(self.concat_back_dim)):
            skip = feats[-2 - s].permute(0, 2, 3, 1)
            x = self.stages[s](self.concat_back_dim[s](torch.cat([self.expand_layers[s](x), skip], dim=-1)))
            if self.deep_supervision:
                segs.append(self.seg_layers[s](x.permute(0, 3, 1, 2)))
        x = self.stages[-1](self.expand_layers[-1](x)).permute(0, 3, 1, 2)
        out = self.seg_layers[-1](x)
        return [out] + segs[::-1] if self.deep_supervision else out


class SwinUMambaD(BackboneMixin, nn.Module):
    """Swin-UMamba† (Liu et al., MICCAI 2024, arXiv:2402.03302). Returns logits (B, num_classes, H, W), or the
    list [H, H/4, H/8, H/16] of logits when ``deep_supervision``.

    Args:
        in_channels: image channels. Default: 1.
        num_classes: output channels incl. background (logits). Default: 14.
        deep_supervision: return the four heads' logits. Default: False.
        depths: v0 VSS blocks per encoder stage. Default: [2, 2, 9, 2].
        drop_path_rate: encoder (linspace 0 -> rate) and decoder (rate -> 0) stochastic depth. Default: 0.2.

    H and W must be divisible by 32.
    """

    #: modules the encoder uses (``create_model(..., features_only=True)`` keeps only these)
    encoder_modules = ("vssm_encoder",)
    downsample_factor = 32  # input sides must be multiples of this

    default_input_size = 256

    def __init__(self, in_channels: int = 1, num_classes: int = 14, deep_supervision: bool = False,
                 depths: Sequence[int] = (2, 2, 9, 2), drop_path_rate: float = 0.2):
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        dims = (96, 192, 384, 768)
        self.vssm_encoder = VSSMEncoder(4, in_channels, depths, dims, 16, drop_path_rate)
        self.decoder = UNetResDecoder(num_classes, dims, 2, drop_path_rate, 16, deep_supervision)
        self.apply(init_weights_he)
        self.feature_info = [{"num_chs": c, "reduction": 4 * 2 ** i, "module": f"vssm_encoder.layers.{i}"}
                             for i, c in enumerate(dims)]

    @property
    def deep_supervision(self) -> bool:
        return self.decoder.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        self.decoder.deep_supervision = bool(value)

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Encoder maps [96@H/4, 192@H/8, 384@H/16, 768@H/32] (channels-first)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"Swin-UMamba†: expected a torch.Tensor, got {type(x).__name__}")
        check_input_size(x, self.in_channels, 32, "Swin-UMamba†")
        return self.vssm_encoder(x)[1:]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x)[-1]

    def forward(self, x: torch.Tensor):
        return self.decoder(self.forward_intermediates(x))


def load_vmamba_into_swin_umamba_d(model: SwinUMambaD, state_dict, report):
    """Swin-UMamba† (upstream ``load_pretrained_ckpt`` of SwinUMambaD): final norm / head skipped, the patch
    embedding skipped when its input channels differ from the model's."""
    def skip(k, sd):
        if k in ("norm.weight", "norm.bias", "head.weight", "head.bias"):
            return True
        w = sd.get("patch_embed.proj.weight")
        return k.startswith("patch_embed.") and w is not None and w.shape[1] != model.in_channels
    return load_vmamba_v0_into_vssm_encoder(model, state_dict, report, skip, "Swin-UMamba†")


register_pretrained_loader(SwinUMambaD)(load_vmamba_into_swin_umamba_d)


@register_model("swin_umamba_d", paper="Swin-UMamba† (Liu et al., MICCAI 2024, arXiv:2402.03302)")
def swin_umamba_d(in_channels: int = 3, num_classes: int = 1, **kwargs) -> SwinUMambaD:
    """Swin-UMamba†: VMamba-T v0 encoder (4x4 patch embed), VSS decoder with PatchExpand, 4 heads."""
    return SwinUMambaD(in_channels=in_channels, num_classes=num_classes, **kwargs)
