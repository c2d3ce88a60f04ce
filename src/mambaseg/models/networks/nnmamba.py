"""nnMamba: a 3-D residual CNN whose deeper blocks add a shared Mamba layer, with channel-attention skips.

Paper: H. Gong, L. Kang, Y. Wang, Y. Wang, X. Wan, X. Wu, H. Li, "nnMamba: 3D Biomedical Image Segmentation,
Classification and Landmark Detection with State Space Model", arXiv:2402.03526 (ISBI 2025).
Upstream: https://github.com/lhaof/nnMamba (commit 6fb35a3). Two networks, both named ``nnMambaSeg`` upstream,
described in ``upstream_3d_models.md`` §5 and re-written here in our own code on the Mamba-1 block
:class:`mambaseg.models.blocks.mamba1.Mamba`:

* ``nnmamba`` (``nnMamba.py``, the README's segmentation network): the Mamba layer is "MICCSS": 1^3 conv -> BN ->
  ReLU -> the same Mamba applied to four versions of the (B, L, C) tokens (as is, flipped along the channel axis,
  along the sequence, along both; each output flipped back), their average, + the post-ReLU map, 1^3 conv -> BN
  -> ReLU.
* ``nnmamba_ds`` (``nnunet/network_architecture/nnMamba.py``, what the shipped nnU-Net v1 trainers for BraTS 2023
  import): the Mamba layer is 1^3 conv -> BN -> ReLU -> one Mamba pass, no residual; extra 1^3 heads
  ``ds1_cls_conv`` / ``ds2_cls_conv`` / ``ds3_cls_conv`` on the 1/2, 1/4, 1/8 decoder maps (deep supervision).

Skeleton (both): ``in_conv`` DoubleConv(in -> c, stride 2) (conv 3^3 with bias -> BN -> ReLU, twice) -> ``layer1..3``
residual stages (c -> 2c -> 4c -> 8c, each stride 2) of ``blocks`` BasicBlocks: block 0 (stride 2, 1^3 conv + BN
projection) has no Mamba; blocks 1.. add ``mamba_layer(x)`` (on the block input) to the conv branch. **One Mamba
layer object per stage is shared by blocks 1 and 2**: its parameters are counted once, and the state dict lists them
under both ``layerX.1.mamba_layer.*`` and ``layerX.2.mamba_layer.*`` (as upstream; loading writes the same tensors
twice, and a state dict whose two copies differ is refused with a clear error instead of keeping one silently).
Decoder: trilinear x2 upsampling, concat with the skip scaled by a squeeze-excitation vector
(``att1..3``: global average -> Linear(C -> C/16) -> ReLU -> Linear -> sigmoid), DoubleConv; ``conv8`` =
DoubleConv(c -> num_classes) at full resolution. Module and parameter names are upstream's (``in_conv.conv.*``,
``att*``, ``layer*``, ``conv5..8``, ``ds*_cls_conv``), so upstream state dicts (334 / 304 entries, BatchNorm buffers
included) load with ``strict=True``. PyTorch default init everywhere (as upstream).

Upstream quirks, all kept:

* The output passes BatchNorm + ReLU (``conv8`` is a DoubleConv): the "logits" are non-negative. The model returns
  them unchanged; a softmax / argmax on them works, a sigmoid cannot go below 0.5.
* The code's names ``x_flip_l`` / ``x_flip_c`` are swapped relative to what they flip (no effect on the maths).
* BatchNorm everywhere: train and eval mode differ; ``relu3`` of the MICCSS layer is constructed and unused.
* No fp32 cast around the Mamba (runs under the caller's autocast; the scan itself is fp32).

Paper protocols (not config files here yet; spec §5): ``nnmamba`` AMOS22 (1 -> 16 classes), README 15.55 M /
141.14 GFLOPs; ``nnmamba_ds``: nnU-Net v1 3d_fullres plans (not shipped), SGD lr 1e-4 (sic), momentum 0.99,
Nesterov, wd 3e-5, poly 0.9 per epoch, 1000 epochs (MEN 200) x 250 batches, DC + CE with deep supervision weights
1/2^i over the first four outputs, fp32, grad clip 12, v1 "moreDA" (rotation +-30 deg, scale 0.7-1.4, no elastic);
inference: sliding window step 0.5, Gaussian, mirroring, deep supervision off.

Differences, each deliberate:

* ``deep_supervision`` (default False: one tensor) replaces nnU-Net v1's ``do_ds`` (upstream default True);
  ``"train"`` returns the list in training mode only. The list is [full, 1/2, 1/4, 1/8], full resolution first.
* The deep-supervision heads take c, 2c, 4c channels (upstream hard-codes 32, 64, 128, i.e. c must be 32 there):
  identical at the upstream width, and smaller widths work.
* Inputs that are not 5-D, have other channels, or a side not divisible by 16 raise one ValueError.
"""

from __future__ import annotations

from typing import List, Union

import torch
import torch.nn as nn

from ..backbone import BackboneMixin
from ..blocks.mamba1 import Mamba
from ..registry import register_model

__all__ = ["NNMambaSeg", "NNMambaSegDS", "DoubleConv", "Attentionlayer", "BasicBlock", "MambaLayer", "MambaLayerDS"]


class DoubleConv(nn.Module):
    """``conv``: Conv3d(in -> out, k, stride, bias) -> BN -> ReLU -> Conv3d(out -> out, 3, bias) -> BN -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv3d(in_ch, out_ch, kernel_size, stride, kernel_size // 2), nn.BatchNorm3d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_ch, out_ch, 3, 1, 1), nn.BatchNorm3d(out_ch), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Attentionlayer(nn.Module):
    """Squeeze-excitation vector: (B, C) global average -> Linear(C -> C/r) -> ReLU -> Linear -> sigmoid ->
    (B, C, 1) (the caller reshapes it to broadcast over the map)."""

    def __init__(self, dim: int, r: int = 16):
        super().__init__()
        self.layer1 = nn.Linear(dim, dim // r)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(dim // r, dim)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sigmoid(self.layer2(self.relu(self.layer1(x)))).unsqueeze(-1)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    b, c = x.shape[:2]
    return x.reshape(b, c, -1).transpose(1, 2)                       # (B, L, C), row-major over (D, H, W)


def _untokens(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2).reshape(like.shape)


class MambaLayer(nn.Module):
    """nnMamba's MICCSS layer (README network): a = ReLU(BN(nin(x))); the same Mamba on the tokens of a, on them
    flipped along channels, along the sequence and along both (each output flipped back), averaged; + a;
    ReLU(BN(nin2(.)))."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.dim = dim
        self.nin = nn.Conv3d(dim, dim, 1, bias=False)
        self.nin2 = nn.Conv3d(dim, dim, 1, bias=False)
        self.norm2 = nn.BatchNorm3d(dim)
        self.relu2 = nn.ReLU(inplace=True)
        self.relu3 = nn.ReLU(inplace=True)                           # unused (as upstream)
        self.norm = nn.BatchNorm3d(dim)
        self.relu = nn.ReLU(inplace=True)
        self.mamba = Mamba(d_model=dim, d_state=d_state, d_conv=d_conv, expand=expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.norm(self.nin(x)))
        t = _tokens(a)
        y = self.mamba(t)
        for dims in ([2], [1], [1, 2]):                              # channels, sequence, both
            y = y + self.mamba(t.flip(dims)).flip(dims)
        out = _untokens(y / 4, a) + a
        return self.relu2(self.norm2(self.nin2(out)))


class MambaLayerDS(nn.Module):
    """nnMamba's layer in the nnU-Net v1 network: ReLU(BN(nin(x))) -> one Mamba pass on the tokens, no residual."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.dim = dim
        self.nin = nn.Conv3d(dim, dim, 1, bias=False)
        self.norm = nn.BatchNorm3d(dim)
        self.relu = nn.ReLU(inplace=True)
        self.mamba = Mamba(d_model=dim, d_state=d_state, d_conv=d_conv, expand=expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.norm(self.nin(x)))
        return _untokens(self.mamba(_tokens(a)), a)


class BasicBlock(nn.Module):
    """conv3^3(stride) -> BN -> ReLU -> conv3^3 -> BN, + ``mamba_layer(x)`` (on the block input) when given,
    + identity (or ``downsample(x)``), ReLU. Convs without bias."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module = None,
                 mamba_layer: nn.Module = None):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.mamba_layer = mamba_layer
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.mamba_layer is not None:
            out = out + self.mamba_layer(x)
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


def make_res_layer(inplanes: int, planes: int, blocks: int, stride: int, mamba_layer: nn.Module) -> nn.Sequential:
    """Block 0: stride + 1^3 conv/BN projection, no Mamba; blocks 1..: the ONE ``mamba_layer`` object, shared."""
    down = nn.Sequential(nn.Conv3d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm3d(planes))
    layers = [BasicBlock(inplanes, planes, stride, down)]
    layers += [BasicBlock(planes, planes, mamba_layer=mamba_layer) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class NNMambaBase(BackboneMixin, nn.Module):
    """nnMamba segmentation network (Gong et al., ISBI 2025, arXiv:2402.03526). Input (B, in_channels, D, H, W),
    sides divisible by 16; output (B, num_classes, D, H, W) (non-negative, see the module docstring), or with
    ``deep_supervision`` (``nnunet`` variant) the list [full, 1/2, 1/4, 1/8].

    Args:
        in_channels: image channels (upstream ``in_ch``). Default 1.
        num_classes: output channels (upstream ``number_classes``). Default 6.
        channels: width c of the first stage (c, 2c, 4c, 8c); at least 16 (the attention squeezes by 16).
            Default 32.
        blocks: BasicBlocks per residual stage (blocks 1.. share the stage's Mamba layer). Default 3.
        variant: ``"readme"`` (``nnMamba.py``, MICCSS layers, no heads) or ``"nnunet"`` (the nnU-Net v1 network:
            plain Mamba layers and deep-supervision heads).
        deep_supervision: ``"nnunet"`` only: True, False (default) or ``"train"`` (list in training mode only).
    """

    spatial_dims = 3
    downsample_factor = 16
    default_input_size = (128, 128, 128)
    encoder_modules = ("in_conv", "layer1", "layer2", "layer3")

    def __init__(self, in_channels: int = 1, num_classes: int = 6, channels: int = 32, blocks: int = 3,
                 variant: str = "readme", deep_supervision: Union[bool, str] = False):
        super().__init__()
        if variant not in ("readme", "nnunet"):
            raise ValueError(f"nnMamba: variant must be 'readme' or 'nnunet', got {variant!r}")
        if channels < 16 or blocks < 1:
            raise ValueError(f"nnMamba: channels must be >= 16 (the attention layers squeeze by 16) and blocks >= 1, "
                             f"got channels={channels}, blocks={blocks}")
        if deep_supervision not in (True, False, "train"):
            raise ValueError(f"nnMamba: deep_supervision must be True, False or 'train', got {deep_supervision!r}")
        if deep_supervision and variant != "nnunet":
            raise ValueError("nnMamba: deep_supervision needs variant='nnunet' (the README network has no heads)")
        self.in_channels, self.num_classes, self.variant = in_channels, num_classes, variant
        self.deep_supervision = deep_supervision
        c = channels
        layer = MambaLayer if variant == "readme" else MambaLayerDS
        self.in_conv = DoubleConv(in_channels, c, stride=2, kernel_size=3)
        self.pooling = nn.AdaptiveAvgPool3d(1)
        self.att1 = Attentionlayer(c)
        self.layer1 = make_res_layer(c, 2 * c, blocks, 2, layer(2 * c))
        self.att2 = Attentionlayer(2 * c)
        self.layer2 = make_res_layer(2 * c, 4 * c, blocks, 2, layer(4 * c))
        self.att3 = Attentionlayer(4 * c)
        self.layer3 = make_res_layer(4 * c, 8 * c, blocks, 2, layer(8 * c))
        self.up5 = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
        self.conv5 = DoubleConv(12 * c, 4 * c)
        self.up6 = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
        self.conv6 = DoubleConv(6 * c, 2 * c)
        self.up7 = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
        self.conv7 = DoubleConv(3 * c, c)
        self.up8 = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
        self.conv8 = DoubleConv(c, num_classes)
        if variant == "nnunet":
            self.ds1_cls_conv = nn.Conv3d(c, num_classes, 1)
            self.ds2_cls_conv = nn.Conv3d(2 * c, num_classes, 1)
            self.ds3_cls_conv = nn.Conv3d(4 * c, num_classes, 1)
        self.feature_info = [{"num_chs": c << i, "reduction": 2 << i, "module": m}
                             for i, m in enumerate(self.encoder_modules)]
        self._register_load_state_dict_pre_hook(self._check_shared_copies)

    @staticmethod
    def _check_shared_copies(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                             error_msgs):
        """The shared Mamba layer's tensors appear under blocks 1..n-1 of each stage; loading writes them into one
        tensor, so copies that differ would silently keep the last one: refuse such a state dict instead."""
        for key, value in state_dict.items():
            if not key.startswith(prefix) or ".mamba_layer." not in key:
                continue
            stage, block, rest = key[len(prefix):].split(".", 2)
            first = f"{prefix}{stage}.1.{rest}"
            if block != "1" and first in state_dict and not value.is_meta and not state_dict[first].is_meta \
                    and not torch.equal(value, state_dict[first]):
                error_msgs.append(f"{key} differs from {first}: both name the one Mamba layer that nnMamba shares "
                                  f"between the blocks of {stage} (upstream checkpoints store the same tensor twice)")

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"nnMamba: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 5:
            raise ValueError(f"nnMamba: expected a 5-D input (B, C, D, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"nnMamba: expected {self.in_channels} input channel(s), got {x.shape[1]} (input shape "
                             f"{tuple(x.shape)}); build the model with in_channels={x.shape[1]}")
        if any(s % 16 for s in x.shape[2:]):
            ok = "x".join(str(max(16, round(s / 16) * 16)) for s in x.shape[2:])
            raise ValueError(f"nnMamba: input size {'x'.join(map(str, x.shape[2:]))} is not divisible by 16, which "
                             f"its four stride-2 stages need; crop or pad to e.g. {ok}")

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Encoder maps [c@/2 (in_conv), 2c@/4, 4c@/8, 8c@/16 (layer1..3)], channels-first."""
        self._check(x)
        c1 = self.in_conv(x)
        c2 = self.layer1(c1)
        c3 = self.layer2(c2)
        return [c1, c2, c3, self.layer3(c3)]

    def _scale(self, att: nn.Module, skip: torch.Tensor) -> torch.Tensor:
        b, c = skip.shape[:2]
        return skip * att(self.pooling(skip).view(b, c)).view(b, c, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        c1, c2, c3, c4 = self.forward_intermediates(x)
        c5 = self.conv5(torch.cat([self.up5(c4), self._scale(self.att3, c3)], 1))
        c6 = self.conv6(torch.cat([self.up6(c5), self._scale(self.att2, c2)], 1))
        c7 = self.conv7(torch.cat([self.up7(c6), self._scale(self.att1, c1)], 1))
        c8 = self.conv8(self.up8(c7))
        ds = self.deep_supervision
        if ds is True or (ds == "train" and self.training):
            return [c8, self.ds1_cls_conv(c7), self.ds2_cls_conv(c6), self.ds3_cls_conv(c5)]
        return c8


class NNMambaSeg(NNMambaBase):
    """nnMamba, the README network (``nnMamba.py``): MICCSS Mamba layers, one output. See :class:`NNMambaBase`."""

    def __init__(self, in_channels: int = 1, num_classes: int = 6, channels: int = 32, blocks: int = 3):
        super().__init__(in_channels, num_classes, channels, blocks, variant="readme")


class NNMambaSegDS(NNMambaBase):
    """nnMamba of the nnU-Net v1 fork (``nnunet/network_architecture/nnMamba.py``): plain Mamba layers,
    deep-supervision heads. See :class:`NNMambaBase`."""

    def __init__(self, in_channels: int = 4, num_classes: int = 4, channels: int = 32, blocks: int = 3,
                 deep_supervision: Union[bool, str] = False):
        super().__init__(in_channels, num_classes, channels, blocks, variant="nnunet",
                         deep_supervision=deep_supervision)


@register_model("nnmamba", paper="nnMamba (Gong et al., ISBI 2025, arXiv:2402.03526)", default_size=128,
                spatial_dims=3)
def nnmamba(in_channels: int = 1, num_classes: int = 16, **kwargs) -> NNMambaSeg:
    """nnMamba (README network, nnMamba.py): residual 3-D CNN with shared MICCSS Mamba layers, SE skips."""
    return NNMambaSeg(in_channels=in_channels, num_classes=num_classes, **kwargs)


@register_model("nnmamba_ds", paper="nnMamba (Gong et al., ISBI 2025, arXiv:2402.03526), nnU-Net v1 network",
                default_size=128, spatial_dims=3)
def nnmamba_ds(in_channels: int = 4, num_classes: int = 4, **kwargs) -> NNMambaSegDS:
    """nnMamba of the nnU-Net v1 trainers (BraTS 2023): plain shared Mamba layers, deep-supervision heads."""
    return NNMambaSegDS(in_channels=in_channels, num_classes=num_classes, **kwargs)
