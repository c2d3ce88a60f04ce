"""SegMamba: a 3-D Mamba encoder with tri-oriented Mamba (ToM) layers and gated spatial convolutions (GSC), and a
UNETR-style CNN decoder.

Paper: Z. Xing, T. Ye, Y. Yang, G. Liu, L. Zhu, "SegMamba: Long-range Sequential Modeling Mamba For 3D Medical
Image Segmentation", arXiv:2401.13560 (MICCAI 2024). Upstream: https://github.com/ge-xing/SegMamba (commit cff3597;
``model_segmamba/segmamba.py``, the ToM in its mamba-ssm fork ``mamba/mamba_ssm/modules/mamba_simple.py``; trainer
``3_train.py``, inference ``4_predict.py``), described in ``upstream_3d_models.md`` §1 and re-written here in our own
code: the ToM on :mod:`mambaseg.models.blocks.tri_mamba`, the decoder on :mod:`mambaseg.models.blocks.unetr_blocks`
(MONAI 1.3.0's blocks with ``spatial_dims=3``; the head assembly in :mod:`mambaseg.models.blocks.segmamba_blocks`,
shared with SegMamba-V2). Module and parameter names equal upstream's (``vit.{downsample_layers, stages, gscs,
mlps}``, ``encoder1..5``, ``decoder5..1``, ``out``), so an upstream ``state_dict`` (291 keys, no buffers) loads with
``strict=True``. 67,416,196 parameters for 4 channels / 4 classes (BraTS 2023).

Architecture (input (B, C, D, H, W), D, H, W divisible by 16): encoder ``vit``: stage i = downsample (i = 0: Conv
7^3 s2 in -> 48; else InstanceNorm + Conv 2^3 s2) -> GSC (two 3^3 conv-IN-ReLU in series plus a 1^3 conv-IN-ReLU,
summed, 1^3 conv-IN-ReLU, + input) -> depths[i] ToM layers (LayerNorm, tri-oriented Mamba, + input) -> output i =
``mlps[i](norm{i}(x))`` (1^3 conv MLP, 2x width, exact GELU); the un-normalised x goes on. Outputs 48@/2, 96@/4,
192@/8, 384@/16. Decoder: ``encoder1`` on the raw image, ``encoder2..4`` on outputs 0..2, ``encoder5`` 384 -> 768 on
output 3, ``decoder5..2`` UNETR up blocks (transposed conv 2^3, concat the skip, residual block), ``decoder1`` a
residual block at full resolution, ``out`` a 1^3 conv with bias. Returns logits. No model-level init (PyTorch
defaults; ``dt_proj_b``/``dt_proj_s`` of every ToM keep the default Linear init as upstream).

The inter-slice branch and ``num_slices``. Upstream hard-codes the inter-slice chunk counts [64, 32, 16, 8] per
stage: the L tokens of a stage are cut into that many equal chunks. With row-major (D, H, W) tokens a chunk is one
slice along the FIRST spatial axis only when that count equals the stage's depth, i.e. for an input depth of 128
(upstream's patch). ``num_slices`` makes the meaning explicit; the choice here is to DERIVE the counts from the
depth by default:

* ``"depth"`` (default): each stage's count is its feature map's depth (D/2, D/4, D/8, D/16): one chunk per slice at
  any input size. At upstream's 128-deep patch these are exactly [64, 32, 16, 8], so an upstream checkpoint used
  as upstream uses it (128^3 patches, 128^3 sliding window) gives upstream's outputs;
* ``"upstream"``: [64, 32, 16, 8] and only a 128-deep input (any other depth is refused with a ValueError naming
  the valid depth and the alternatives), for code that wants upstream's exact setting enforced;
* four ints: fixed chunk counts, upstream's literal behaviour at any size where they divide every stage's token
  count (``[64, 32, 16, 8]`` reproduces upstream's outputs at e.g. 64^3, where its chunks are half slices).

The slice axis is the tensor's first spatial axis. With nnU-Net-style (SimpleITK, (z, y, x)) arrays, as upstream's
preprocessing produces, that is the axial axis; in mambaseg's volumetric pipeline the arrays are in NIfTI (i, j, k)
order, so the slices are along i unless the data set permutes its axes.

Paper protocol (``3_train.py`` / ``4_predict.py``; spec §1.7; not a config file here yet): BraTS 2023 GLI, 4 MR
sequences (t2w, t2f, t1n, t1c), 4 classes, random 70/10/20 split (seed 42); crop to nonzero, whole-crop z-score per
channel, 1 mm isotropic; patch 128^3, batch 2, 33 % foreground oversampling, nnU-Net-style DA (rotation, scale,
noise, blur, brightness, contrast, low-res, gamma, mirror; no elastic); plain CrossEntropy on 4 classes (no Dice,
no regions, no deep supervision); SGD lr 1e-2, momentum 0.99, Nesterov, wd 3e-5, poly 0.9 per iteration, 1000
epochs x 250 iterations, fp16 autocast, grad clip 12; inference: sliding window 128^3, overlap 0.5, Gaussian, 8
mirror flips, then regions TC/WT/ET.

Differences from upstream, each deliberate:

* One path for ToM on any scan backend (upstream implements it only in its CUDA fused path; its slow path ignores
  the ``_b``/``_s`` weights). The stored-but-unused upstream arguments (``drop_path_rate``,
  ``layer_scale_init_value``, ``conv_block``, ``res_block``, ``norm_name``) and the dead ``proj_feat`` are not
  offered; ``feat_size[0]`` must be 48 as upstream hard-codes ``out``'s input width (checked here with a clear error).
* ``num_slices="depth"`` (the default) gives upstream's chunks only at depth 128; at other depths it scans real
  slices where upstream would cut each stage into [64, 32, 16, 8] chunks (pass those ints to get upstream's).
* Bad inputs (not 5-D, wrong channels, a side not divisible by 16, a depth ``num_slices`` cannot serve) raise one
  ValueError before any work (upstream fails inside a reshape or concat).
"""

from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn as nn

from ..backbone import BackboneMixin
from ..blocks.segmamba_blocks import MlpChannel, add_unetr_head, run_unetr_head
from ..blocks.tri_mamba import TriMambaLayer
from ..registry import register_model

__all__ = ["SegMamba", "GSC", "MlpChannel", "MambaEncoder", "UPSTREAM_NUM_SLICES"]

UPSTREAM_NUM_SLICES = (64, 32, 16, 8)


def _inorm(c: int) -> nn.InstanceNorm3d:
    return nn.InstanceNorm3d(c)                       # eps 1e-5, affine False, no running stats (as upstream)


class GSC(nn.Module):
    """Gated spatial convolution: x1 = CNR(CNR(x; 3^3); 3^3), x2 = CNR(x; 1^3), out = CNR(x1 + x2; 1^3) + x, with
    CNR = conv (bias) -> InstanceNorm -> ReLU."""

    def __init__(self, in_channels: int):
        super().__init__()
        c = in_channels
        self.proj, self.norm, self.nonliner = nn.Conv3d(c, c, 3, 1, 1), _inorm(c), nn.ReLU()
        self.proj2, self.norm2, self.nonliner2 = nn.Conv3d(c, c, 3, 1, 1), _inorm(c), nn.ReLU()
        self.proj3, self.norm3, self.nonliner3 = nn.Conv3d(c, c, 1, 1, 0), _inorm(c), nn.ReLU()
        self.proj4, self.norm4, self.nonliner4 = nn.Conv3d(c, c, 1, 1, 0), _inorm(c), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.nonliner(self.norm(self.proj(x)))
        x1 = self.nonliner2(self.norm2(self.proj2(x1)))
        x2 = self.nonliner3(self.norm3(self.proj3(x)))
        return self.nonliner4(self.norm4(self.proj4(x1 + x2))) + x


class _ToMStage(nn.Sequential):
    """``stages.i``: a Sequential of ToM layers whose forward passes the inter-slice chunk count on."""

    def forward(self, x: torch.Tensor, nslices=None) -> torch.Tensor:
        for layer in self:
            x = layer(x, nslices=nslices)
        return x


class MambaEncoder(nn.Module):
    """SegMamba's encoder (upstream attribute ``vit``): returns the four stage outputs ``mlps[i](norm{i}(x))``."""

    def __init__(self, in_chans: int = 1, depths: Sequence[int] = (2, 2, 2, 2),
                 dims: Sequence[int] = (48, 96, 192, 384), num_slices: Sequence[int] = UPSTREAM_NUM_SLICES):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv3d(in_chans, dims[0], 7, 2, 3))])
        for i in range(1, 4):
            self.downsample_layers.append(nn.Sequential(_inorm(dims[i - 1]), nn.Conv3d(dims[i - 1], dims[i], 2, 2)))
        self.stages = nn.ModuleList([_ToMStage(*[TriMambaLayer(dims[i], num_slices=num_slices[i])
                                                 for _ in range(depths[i])]) for i in range(4)])
        self.gscs = nn.ModuleList([GSC(dims[i]) for i in range(4)])
        self.mlps = nn.ModuleList()
        for i in range(4):
            self.add_module(f"norm{i}", _inorm(dims[i]))
            self.mlps.append(MlpChannel(dims[i], 2 * dims[i]))

    def forward(self, x: torch.Tensor, nslices: Sequence[int] = UPSTREAM_NUM_SLICES) -> List[torch.Tensor]:
        outs = []
        for i in range(4):
            x = self.downsample_layers[i](x)
            x = self.gscs[i](x)
            x = self.stages[i](x, nslices=nslices[i])
            outs.append(self.mlps[i](getattr(self, f"norm{i}")(x)))
        return outs


class SegMamba(BackboneMixin, nn.Module):
    """SegMamba (Xing et al., MICCAI 2024, arXiv:2401.13560). Input (B, in_channels, D, H, W) with D, H, W
    divisible by 16 (and D = 128 with ``num_slices="upstream"``); output logits
    (B, num_classes, D, H, W).

    Args:
        in_channels: image channels (upstream ``in_chans``). Default 1.
        num_classes: output channels (upstream ``out_chans``). Default 13 (upstream's constructor default).
        depths: ToM layers per encoder stage. Default [2, 2, 2, 2].
        feat_size: encoder widths; the first must be 48. Default [48, 96, 192, 384].
        hidden_size: bottleneck width of ``encoder5``. Default 768.
        num_slices: ``"depth"`` (default), ``"upstream"`` or four ints: the inter-slice chunk counts (see the
            module docstring).
    """

    spatial_dims = 3
    downsample_factor = 16
    default_input_size = (128, 128, 128)
    encoder_modules = ("vit",)

    def __init__(self, in_channels: int = 1, num_classes: int = 13, depths: Sequence[int] = (2, 2, 2, 2),
                 feat_size: Sequence[int] = (48, 96, 192, 384), hidden_size: int = 768,
                 num_slices: Union[str, Sequence[int]] = "depth"):
        super().__init__()
        depths, feat = [int(d) for d in depths], [int(f) for f in feat_size]
        if len(depths) != 4 or len(feat) != 4 or min(depths) < 1:
            raise ValueError(f"SegMamba: depths and feat_size need 4 entries (depths >= 1), got {depths}, {feat}")
        if feat[0] != 48:
            raise ValueError(f"SegMamba: feat_size[0] must be 48 (upstream builds its output head for 48 channels), "
                             f"got {feat[0]}")
        if isinstance(num_slices, str):
            if num_slices not in ("upstream", "depth"):
                raise ValueError(f"SegMamba: num_slices must be 'upstream', 'depth' or four ints, got {num_slices!r}")
            fixed = UPSTREAM_NUM_SLICES
        else:
            fixed = tuple(int(n) for n in num_slices)
            if len(fixed) != 4 or min(fixed) < 1:
                raise ValueError(f"SegMamba: num_slices needs four positive ints (one per stage), got {num_slices!r}")
        self.num_slices = num_slices if isinstance(num_slices, str) else list(fixed)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.vit = MambaEncoder(in_channels, depths, feat, fixed)
        add_unetr_head(self, in_channels, num_classes, feat, hidden_size)
        self.feature_info = [{"num_chs": c, "reduction": 2 ** (i + 1), "module": f"vit.mlps.{i}"}
                             for i, c in enumerate(feat)]

    def slices_for(self, spatial: Sequence[int]) -> List[int]:
        """The inter-slice chunk count of each stage for an input of spatial size (D, H, W); raises the ValueError
        the forward would raise for an input it cannot take."""
        d, h, w = (int(s) for s in spatial)
        if d % 16 or h % 16 or w % 16:
            ok = "x".join(str(max(16, round(s / 16) * 16)) for s in (d, h, w))
            raise ValueError(f"SegMamba: input size {d}x{h}x{w} is not divisible by 16, which its four stride-2 stages "
                             f"need; crop or pad to e.g. {ok}")
        if self.num_slices == "depth":
            return [d >> (i + 1) for i in range(4)]
        if self.num_slices == "upstream":
            if d != 128:
                raise ValueError(f"SegMamba: num_slices='upstream' ([64, 32, 16, 8]) cuts each stage into slices only "
                                 f"for an input depth of 128, got depth {d}; use a 128-deep patch, num_slices='depth' "
                                 f"(one chunk per slice at any depth) or num_slices=[64, 32, 16, 8] (upstream's fixed "
                                 f"chunks at any size they divide)")
            return list(UPSTREAM_NUM_SLICES)
        bad = [(i, n) for i, n in enumerate(self.num_slices)
               if ((d >> (i + 1)) * (h >> (i + 1)) * (w >> (i + 1))) % n]
        if bad:
            i, n = bad[0]
            raise ValueError(f"SegMamba: stage {i} of a {d}x{h}x{w} input has {(d * h * w) >> 3 * (i + 1)} tokens, not "
                             f"divisible by num_slices[{i}] = {n}; choose a size where every stage's token count is a "
                             f"multiple of {self.num_slices} or use num_slices='depth'")
        return list(self.num_slices)

    def _check(self, x: torch.Tensor) -> List[int]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"SegMamba: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 5:
            raise ValueError(f"SegMamba: expected a 5-D input (B, C, D, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"SegMamba: expected {self.in_channels} input channel(s), got {x.shape[1]} (input shape "
                             f"{tuple(x.shape)}); build the model with in_channels={x.shape[1]}")
        return self.slices_for(x.shape[2:])

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Encoder maps [48@/2, 96@/4, 192@/8, 384@/16] (upstream's ``vit`` outputs), channels-first."""
        return self.vit(x, self._check(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.forward_intermediates(x)
        return run_unetr_head(self, self.encoder1(x), outs)

@register_model("segmamba", paper="SegMamba (Xing et al., MICCAI 2024, arXiv:2401.13560)", default_size=128,
                spatial_dims=3)
def segmamba(in_channels: int = 4, num_classes: int = 4, **kwargs) -> SegMamba:
    """SegMamba 3-D: GSC + tri-oriented Mamba encoder, UNETR decoder (BraTS 2023 configuration by default)."""
    return SegMamba(in_channels=in_channels, num_classes=num_classes, **kwargs)
