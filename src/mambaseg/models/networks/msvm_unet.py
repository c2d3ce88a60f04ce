"""MSVM-UNet: multi-scale Vision Mamba UNet.

Paper: C. Chen, L. Yu, S. Min, S. Wang, "MSVM-UNet: Multi-Scale Vision Mamba UNet for Medical Image
Segmentation", arXiv:2408.13735 (2024). Upstream code: https://github.com/gndlwch2w/msvm-unet
(``model/{__init__,encoder,decoder}.py`` on ``model/vmamba/vmamba.py``, a mid-2024 copy of VMamba v2), re-written
here in our own code on the VMamba v2 blocks of :mod:`mambaseg.models.blocks.vss_v2`. Module and parameter names equal
upstream's (``encoder.layer0/1``, ``encoder.layers.{i}.blocks.{j}``, ``encoder.downsamples.{i}``,
``decoder.layers.{s}.{up, concat_layer, vss_layer}``, ``decoder.out_layers.0``), so an upstream MSVM-UNet
``state_dict`` (450 keys) loads with ``strict=True``.

Architecture: VMamba-T[s1l8] encoder (patch embed v2 split into ``layer0`` conv 3->48 / LN2d / GELU at H/2 and
``layer1`` conv 48->96 / LN2d at H/4; stages of [2, 2, 8, 2] v2 VSS blocks at 96/192/384/768 channels with
``d_state`` 1, ``ssm_ratio`` 1, ``v05_noz``, MLP ratio 4; conv downsampling "v3"; drop path linspace(0, 0.2, 14))
-> decoder of three UpBlocks (LKPE x2 expansion: 1x1 conv C->2C + BN + ReLU + depthwise 3x3 + 2x2 pixel shuffle
+ LayerNorm(C/2); concat [up, skip]; Linear2d 2C'->C'; two MSVSS blocks = v2 VSS blocks whose MLP has a
multi-scale depthwise conv ``x + dw1(x) + dw3(x) + dw5(x)`` between fc1 and fc2; drop path linspace(0.2, 0, 6))
-> FLKPE head (1x1 conv 96->1536 + BN + ReLU + depthwise 3x3 + 4x4 pixel shuffle + LayerNorm(96) + 1x1 conv to
the classes). Returns logits at full resolution; no deep supervision (as upstream). 35,925,513 parameters for
3 channels / 9 classes (Synapse), 35,925,028 for 4 classes (ACDC).

Upstream quirks kept, and deliberate differences:

* **The encoder is RGB-only.** Upstream repeats a 1-channel input to 3 channels inside ``forward`` and its
  ``in_channels=1`` build crashes on the first conv; here ``in_channels`` may be 1 or 3, both build the 3-channel
  encoder (same parameters and keys as upstream's 3-channel model) and a 1-channel input is repeated to 3
  channels, as upstream does. Any other ``in_channels`` is refused at construction.
* Init as upstream: the encoder by ``VSSM._init_weights`` (Linear/Linear2d trunc-normal 0.02, LayerNorms 1/0);
  the decoder keeps PyTorch defaults (it is never re-initialised upstream). SS2D dt/A/D "v0" init (A = -1).
* Input sides must be divisible by 32 (ValueError otherwise; upstream fails inside the decoder's concat).
* Pretrained: ``load_pretrained`` takes VMamba-T[s1l8] (``vssm1_tiny_0230s_ckpt_epoch_264.pth``, v2 key layout)
  and fills the 272 encoder keys as upstream's loader does (which silently trains from scratch when the file is
  missing; here a missing file is an error).
* The scan runs in float32 also under bf16 autocast (upstream's v05 rounds its scan inputs to the autocast dtype).
"""

from __future__ import annotations

import re
from typing import List

import torch
import torch.nn as nn

from ..backbone import BackboneMixin
from ..blocks.layers import check_input_size, pixel_shuffle_channels_last
from ..pretrained import PretrainedMismatchError, PretrainedReport, copy_matching, register_pretrained_loader
from ..registry import register_model
from ..blocks.vss import stage_drop_path_rates
from ..blocks.vss_v2 import Linear2d, downsample_v3, init_vss_v2_weights, patch_embed_v2, vss_stage

__all__ = ["MSVMUNet", "MSVMEncoder", "MSVMDecoder", "LKPE", "FLKPE", "MSMlp", "load_vmamba_v2_into_msvm_unet"]

SSM_CFG = dict(d_state=1, ssm_ratio=1.0, dt_rank="auto", d_conv=3, conv_bias=False, forward_type="v05_noz")


class MSVMEncoder(nn.Module):
    """VMamba-T[s1l8] re-wrapped as upstream's ``Encoder``: ``layer0``, ``layer1``, ``layers``, ``downsamples``.
    forward: (B, 3, H, W) -> [96@H/4, 192@H/8, 384@H/16, 768@H/32], each stage output before its downsample."""

    def __init__(self, in_chans: int = 3, depths=(2, 2, 8, 2), dims=(96, 192, 384, 768),
                 drop_path_rate: float = 0.2, mlp_ratio: float = 4.0):
        super().__init__()
        pe = list(patch_embed_v2(in_chans, dims[0]))
        self.layer0 = nn.Sequential(*pe[:5])
        self.layer1 = nn.Sequential(*pe[5:])
        rates = stage_drop_path_rates(depths, drop_path_rate)
        self.layers = nn.ModuleList([vss_stage(d, r, mlp_ratio=mlp_ratio, **SSM_CFG) for d, r in zip(dims, rates)])
        self.downsamples = nn.ModuleList([downsample_v3(dims[i], dims[i + 1]) for i in range(len(dims) - 1)]
                                         + [nn.Identity()])
        self.dims = list(dims)
        self.apply(init_vss_v2_weights)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.layer1(self.layer0(x))
        feats = []
        for layer, down in zip(self.layers, self.downsamples):
            x = layer(x)
            feats.append(x)
            x = down(x)
        return feats


class LKPE(nn.Module):
    """Upstream ``LKPE(dim)``: x2 patch expansion, (B, C, H, W) -> (B, C/2, 2H, 2W). ``expand`` = Conv1x1(C -> 2C)
    -> BN -> ReLU -> depthwise Conv3x3(2C); 2x2 pixel shuffle, channel index (p1, p2, c); ``norm`` LayerNorm(C/2)."""

    def __init__(self, dim: int, dim_scale: int = 2, out_dim: int | None = None):
        super().__init__()
        self.dim_scale = p = dim_scale
        hidden = dim * 2 if p == 2 else dim * p * p
        self.expand = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                                    nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden))
        self.norm = nn.LayerNorm(hidden // (p * p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixel_shuffle_channels_last(self.expand(x).permute(0, 2, 3, 1), self.dim_scale)
        return self.norm(x).permute(0, 3, 1, 2)


class FLKPE(nn.Module):
    """Upstream ``FLKPE(dim, num_classes)``: x4 expansion of the last decoder map, then ``out`` Conv1x1 to logits.
    ``expand`` = Conv1x1(C -> 16C) -> BN -> ReLU -> depthwise Conv3x3; 4x4 shuffle; ``norm`` LayerNorm(C)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        hidden = 16 * dim
        self.expand = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                                    nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Conv2d(dim, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixel_shuffle_channels_last(self.expand(x).permute(0, 2, 3, 1), 4)
        return self.out(self.norm(x).permute(0, 3, 1, 2))


class MultiScaleConv(nn.Module):
    """``x + sum_k dw_k(x)`` over depthwise convs of kernel 1, 3, 5 (no bias, same padding)."""

    def __init__(self, dim: int, kernel_sizes=(1, 3, 5)):
        super().__init__()
        self.dw_convs = nn.ModuleList([nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, bias=False)
                                       for k in kernel_sizes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for conv in self.dw_convs:
            out = out + conv(x)
        return out


class MSMlp(nn.Module):
    """Upstream ``MS_MLP``: fc1 Linear2d(C -> hidden) -> GELU -> dropout -> multi-scale dw conv -> fc2 -> dropout."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear2d(in_features, hidden_features)
        self.act = nn.GELU()
        self.multiscale_conv = MultiScaleConv(hidden_features)
        self.fc2 = Linear2d(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(self.multiscale_conv(x)))


class UpBlock(nn.Module):
    """``up`` LKPE(in) -> concat [up, skip] -> ``concat_layer`` Linear2d(2*out -> out) -> ``vss_layer`` (MSVSS)."""

    def __init__(self, in_dim: int, out_dim: int, rates, mlp_ratio: float = 4.0):
        super().__init__()
        self.up = LKPE(in_dim)
        self.concat_layer = Linear2d(2 * out_dim, out_dim)
        self.vss_layer = vss_stage(out_dim, rates, mlp_ratio=mlp_ratio, mlp_layer=MSMlp, **SSM_CFG)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.concat_layer(torch.cat([self.up(x), skip], dim=1))
        return self.vss_layer(x)


class MSVMDecoder(nn.Module):
    """Upstream ``Decoder(dims=[768, 384, 192, 96])``: ``layers`` (3 UpBlocks) and ``out_layers.0`` (FLKPE)."""

    def __init__(self, num_classes: int, dims=(768, 384, 192, 96), depth: int = 2, drop_path_rate: float = 0.2):
        super().__init__()
        n = len(dims) - 1
        flat = torch.linspace(drop_path_rate, 0, depth * n, device="cpu").tolist()
        self.layers = nn.ModuleList([UpBlock(dims[s], dims[s + 1], flat[s * depth:(s + 1) * depth])
                                     for s in range(n)])
        self.out_layers = nn.ModuleList([FLKPE(dims[-1], num_classes)])

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for layer, skip in zip(self.layers, feats[-2::-1]):
            x = layer(x, skip)
        return self.out_layers[0](x)


class MSVMUNet(BackboneMixin, nn.Module):
    """MSVM-UNet (Chen et al., 2024, arXiv:2408.13735). Returns logits (B, num_classes, H, W).

    Args:
        in_channels: 1 or 3. The encoder is RGB-only as upstream; a 1-channel input is repeated to 3 channels
            (upstream's own behaviour), so ``in_channels=1`` builds the same 3-channel model. Default: 3.
        num_classes: output channels (logits). Default: 9 (Synapse).
        depths: v2 VSS blocks per encoder stage. Default: [2, 2, 8, 2] (VMamba-T[s1l8]).
        drop_path_rate: encoder drop path (linspace 0 -> rate) and decoder (rate -> 0). Default: 0.2.

    H and W must be divisible by 32.
    """

    #: modules the encoder uses (``create_model(..., features_only=True)`` keeps only these)
    encoder_modules = ("encoder",)
    downsample_factor = 32  # input sides must be multiples of this

    default_input_size = 224

    def __init__(self, in_channels: int = 3, num_classes: int = 9, depths=(2, 2, 8, 2),
                 drop_path_rate: float = 0.2):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"MSVM-UNet: in_channels must be 1 or 3 (its VMamba encoder is RGB-only; a grey "
                             f"input is repeated to 3 channels), got {in_channels}")
        self.in_channels, self.num_classes = in_channels, num_classes
        dims = (96, 192, 384, 768)
        self.encoder = MSVMEncoder(3, depths, dims, drop_path_rate)
        self.decoder = MSVMDecoder(num_classes, dims[::-1], 2, drop_path_rate)
        self.feature_info = [{"num_chs": d, "reduction": 4 * 2 ** i, "module": f"encoder.layers.{i}"}
                             for i, d in enumerate(dims)]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)                       # upstream MSVMUNet.forward
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"MSVM-UNet: expected a torch.Tensor, got {type(x).__name__}")
        check_input_size(x, 3, 32, "MSVM-UNet")
        return x

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Encoder maps [96@H/4, 192@H/8, 384@H/16, 768@H/32] (channels-first)."""
        return self.encoder(self._prepare(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.forward_intermediates(x))


# ---------------------------------------------------------------------------------------------------------------
# Pretrained: VMamba v2 classification checkpoint (VMamba-T[s1l8]) -> encoder
# ---------------------------------------------------------------------------------------------------------------
_V0_NAMES = [(re.compile(r"\.ln_1\."), ".norm."), (re.compile(r"\.self_attention\."), ".op.")]


def load_vmamba_v2_into_msvm_unet(model: MSVMUNet, state_dict, report: PretrainedReport) -> PretrainedReport:
    """Upstream ``ENCODERS['tiny_0230s']`` loader: skip ``norm.*``/``head.*`` (and ``classifier.*``, which has no
    place), ``layers.i.downsample.*`` -> ``downsamples.i.*``, v0 block names ``ln_1``/``self_attention`` ->
    ``norm``/``op``; ``patch_embed.0-4`` -> ``layer0.0-4``, ``patch_embed.5-7`` -> ``layer1.0-2`` (the Encoder
    re-wrap). Every remaining key must exist with the same shape (upstream asserts; here
    PretrainedMismatchError before anything is copied)."""
    own = model.state_dict()
    fix = "; pass VMamba-T[s1l8] vssm1_tiny_0230s_ckpt_epoch_264.pth (VMamba v2 layout, d_state 1, ssm_ratio 1)"
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    if sum(k.startswith(("encoder.", "decoder.")) for k in sd) > len(sd) // 2:
        raise PretrainedMismatchError("this is a full MSVM-UNet state dict, not a classification checkpoint; load "
                                      "it with model.load_state_dict(torch.load(path, weights_only=True))")
    pairs, unused, bad = {}, [], []
    for k, v in sd.items():
        if k.startswith(("norm.", "head.", "classifier.")):
            unused.append(k)
            continue
        t = k
        for pat, rep in _V0_NAMES:
            t = pat.sub(rep, t)
        m = re.match(r"^layers\.(\d+)\.downsample\.(.+)$", t)
        if m:
            t = f"downsamples.{m.group(1)}.{m.group(2)}"
        m = re.match(r"^patch_embed\.(\d+)\.(.+)$", t)
        if m:
            i = int(m.group(1))
            t = f"layer0.{i}.{m.group(2)}" if i < 5 else f"layer1.{i - 5}.{m.group(2)}"
        t = "encoder." + t
        if t not in own:
            bad.append(f"{k} (no place in the encoder)")
        elif tuple(own[t].shape) != tuple(v.shape):
            bad.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[t].shape)}")
        else:
            pairs[t] = v
    if bad or not pairs:
        raise PretrainedMismatchError(
            f"the checkpoint does not fit MSVM-UNet's VMamba-T[s1l8] encoder: {len(bad)} key(s) without a place "
            f"or with another shape, e.g. {'; '.join(bad[:3]) or 'no encoder keys at all'}{fix}")
    copy_matching(model, pairs, report)
    for k in own:
        if k not in pairs:
            report.missing[k] = ("decoder: no counterpart in a classification checkpoint" if k.startswith("decoder.")
                                 else "encoder key the checkpoint lacks")
    report.unused = unused
    return report


register_pretrained_loader(MSVMUNet)(load_vmamba_v2_into_msvm_unet)


@register_model("msvm_unet", paper="MSVM-UNet (Chen et al., 2024, arXiv:2408.13735)")
def msvm_unet(in_channels: int = 3, num_classes: int = 9, **kwargs) -> MSVMUNet:
    """MSVM-UNet: VMamba v2 tiny encoder (d_state 1), LKPE + multi-scale VSS decoder, 224x224."""
    return MSVMUNet(in_channels=in_channels, num_classes=num_classes, **kwargs)
