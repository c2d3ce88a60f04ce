"""HMT-UNet: a U-Net on MambaVision blocks.

Paper: "HMT-UNet: A hybrid Mamba-Transformer Vision UNet for Medical Image Segmentation", Mingya Zhang,
Zhihao Chen, Yiyuan Ge, Xianping Tao, 2024 (arXiv:2408.11289). Upstream code: simzhangbest/HMT-Unet
(``models/hmt_unet.py``, ``models/mamba_vision.py``; model files only, no training code), described in our spec
``upstream_models.md`` §4. Blocks: ``mambaseg.models.blocks.mambavision``.

Two networks are registered:

* ``hmt_unet`` (``decoder="code"``): the upstream code, module and parameter names included (``HMTUNet.hmtunet``
  is upstream's ``MambaVision_sim``), so upstream HMT-UNet state dicts load with ``strict=True``. At MambaVision-T
  dims it has 60,360,509 parameters (3 input channels, 1 class). **Its decoder uses hybrid mixer/attention
  Blocks at every level**, including the two high-resolution levels, because upstream's ``conv`` flag leaks out
  of the encoder loop (its last value, False, is used for all decoder stages).
* ``hmt_unet_paper`` (``decoder="paper"``): the paper's design, whose decoder mirrors the encoder: the two
  high-resolution decoder stages (at H/8 with 2*dim channels and H/4 with dim channels) are ConvBlock stages,
  the two low-resolution ones hybrid (the paper's Fig. 1: "the decoder is composed of Mamba Mixer, upsampling
  operations, convolutional modules"). Everything else is identical.

Architecture (both): stem (two stride-2 conv-BN-ReLU) -> 4 encoder levels (ConvBlocks, ConvBlocks, hybrid,
hybrid; a stride-2 conv downsample after levels 0-2) -> 4 decoder stages ("upsample first, then blocks": stage
0 at the bottleneck has no upsample; stages 1-3 take ``x + skip`` (additive skip *before* a ``PatchExpand2D``),
with skips = the inputs of encoder levels 3, 2, 1, so the stem output at H/4 is never a skip) -> x4
``FinalPatchExpand2D`` -> 1x1 conv. In hybrid stages the first half of the blocks use the ``MambaVisionMixer``
and the second half windowed self-attention (``attention_block_indices``).

Sizes (``size=``): ``tiny`` = MambaVision-T (dim 80, in_dim 32, depths [1,3,8,4], heads [2,4,8,16], windows
[8,8,14,7], drop path 0.2; upstream's defaults), ``small`` = MambaVision-S (dim 96, in_dim 64, depths
[3,3,7,5]; reportedly the checkpoint the paper initialises from; spec §4.5 marks the variant unverified),
``base`` = MambaVision-B (dim 128, in_dim 64, depths [3,3,10,5], drop path 0.3, layer scale 1e-5 in hybrid
blocks). The decoder repeats the encoder's depths, heads and windows in reverse.

Parameters (``sum(p.numel() for p in create_model(name, size=...).parameters())``, 3 channels, 1 class):
tiny 60,360,509 (code; the upstream measurement) / 60,962,589 (paper); small 95,790,633 / 96,785,673;
base 188,095,009 / 189,867,425. ``tests/models/test_hmt_unet.py`` checks all of them against a closed-form count.

Deviations from upstream, all deliberate:

* ``in_channels`` is honoured (upstream hard-wires a 3-channel stem and ignores ``input_channels``), so
  1-channel inputs work. When a 3-channel MambaVision checkpoint is loaded into a 1-channel model the first stem
  conv gets the sum of its RGB filters (identical to feeding the grey image repeated to 3 channels).
* The model returns logits for every ``num_classes`` (upstream applies ``sigmoid`` when num_classes == 1).
* Attention dropout is applied only in training (upstream passes its rate also in eval; the rate is 0 anyway).

Kept from upstream on purpose:

* **Double dt bias** in the mixer: ``dt_proj`` adds its bias and the scan adds it again (``delta_bias``), so the
  step is ``softplus(W dt + 2 b)``. MambaVision checkpoints were trained this way.
* Upstream's ``_init_weights`` is applied to the whole network: every ``nn.Linear`` gets trunc-normal(0.02)
  weights and zero bias, which also overrides the mixer's Mamba-style ``dt_proj`` init; LayerNorm/BatchNorm
  1/0; convolutions keep PyTorch's default init.
* Decoder drop-path rates are un-reversed slices of the encoder's linspace (0 at the bottleneck stage, rising to
  ``drop_path_rate`` in the last stage).
* **Window padding.** A hybrid stage zero-pads its map on the right/bottom to a multiple of its window and the
  padded tokens take part in the mixer and attention unmasked (cropped after the stage), so the result at sizes
  that do not tile the windows depends on that padding, as upstream. 224x224 tiles the encoder exactly (level 2
  is one 14x14 window, level 3 one 7x7 window); 256x256 does not: level 2 (16x16 = 256 tokens) is padded to
  28x28 = 4 windows of 196 tokens and level 3 (8x8 = 64 tokens) to 14x14 = 4 windows of 49 tokens, i.e. per
  image 784 instead of 196 and 196 instead of 49 tokens (4x the 224 case) in those stages and their decoder
  mirrors; attention and mixer cost grow accordingly (upstream measured with thop: 25.06 GMAC at 256 vs 8.40 GMAC
  at 224, spec §4.3, i.e. 3x the compute for 1.3x the pixels). (In the code decoder the 2*dim stage at H/8
  uses window 8: 28x28 at 224 is padded to 32x32; 256 tiles it.)

Input: (B, in_channels, H, W) with H and W divisible by 32; output: logits (B, num_classes, H, W).

Pretrained: ``mambaseg.models.load_pretrained(model, "mambavision_tiny_1k.pth.tar")`` loads a MambaVision
classification checkpoint (weights under ``state_dict``) into the encoder and mirrors levels 0-3 into decoder
stages 3-0 by name, as upstream's ``load_from`` (see ``load_mambavision_checkpoint``).
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from ..blocks.layers import check_input_size, init_linear_and_norms
from ..blocks.mambavision import FinalPatchExpand2D, MambaVisionLayer, MambaVisionStem
from ..pretrained import PretrainedMismatchError, PretrainedReport, copy_matching, register_pretrained_loader
from ..backbone import BackboneMixin
from ..registry import register_model

__all__ = ["HMTUNet", "MambaVisionUNet", "HMT_UNET_SIZES", "load_mambavision_checkpoint"]

PAPER = "HMT-UNet: A hybrid Mamba-Transformer Vision UNet (Zhang et al., 2024, arXiv:2408.11289)"

HMT_UNET_SIZES: Dict[str, dict] = {
    "tiny": dict(dim=80, in_dim=32, depths=(1, 3, 8, 4), num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
                 drop_path_rate=0.2, layer_scale=None),
    "small": dict(dim=96, in_dim=64, depths=(3, 3, 7, 5), num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
                  drop_path_rate=0.2, layer_scale=None),
    "base": dict(dim=128, in_dim=64, depths=(3, 3, 10, 5), num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
                 drop_path_rate=0.3, layer_scale=1e-5),
}

_CONV_LEVELS = (0, 1)  # encoder levels built from ConvBlocks (MambaVision)


class MambaVisionUNet(nn.Module):
    """The body of HMT-UNet (upstream ``MambaVision_sim``): stem, ``levels``, ``layers_up``, ``final_up``,
    ``final_conv``. Returns logits. See the module docstring; arguments as ``HMTUNet``."""

    def __init__(self, in_chans: int = 3, num_classes: int = 1, dim: int = 80, in_dim: int = 32,
                 depths: Sequence[int] = (1, 3, 8, 4), num_heads: Sequence[int] = (2, 4, 8, 16),
                 window_size: Sequence[int] = (8, 8, 14, 7), mlp_ratio: float = 4.0, drop_path_rate: float = 0.2,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 layer_scale: Optional[float] = None, layer_scale_conv: Optional[float] = None,
                 decoder: str = "code"):
        super().__init__()
        n = len(depths)
        self.num_classes = num_classes
        self.num_layers = n
        self.decoder = decoder
        self.patch_embed = MambaVisionStem(in_chans=in_chans, in_dim=in_dim, dim=dim)
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # meta-device safe
        common = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
                      layer_scale=layer_scale, layer_scale_conv=layer_scale_conv)
        self.levels = nn.ModuleList([
            MambaVisionLayer(dim * 2 ** i, depths[i], num_heads[i], window_size[i], conv=i in _CONV_LEVELS,
                             downsample=i < n - 1, drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], **common)
            for i in range(n)])
        dec_depths = list(depths)[::-1]
        layers_up = []
        for i in range(n):
            lvl = n - 1 - i  # the encoder level this decoder stage mirrors
            conv = (lvl in _CONV_LEVELS) if decoder == "paper" else False  # code: the leaked flag is False
            layers_up.append(MambaVisionLayer(
                dim * 2 ** lvl, depths[lvl], num_heads[lvl], window_size[lvl], conv=conv, upsample=i != 0,
                drop_path=dpr[sum(dec_depths[:i]):sum(dec_depths[:i + 1])], **common))
        self.layers_up = nn.ModuleList(layers_up)
        self.final_up = FinalPatchExpand2D(dim=dim, dim_scale=4)
        self.final_conv = nn.Conv2d(dim // 4, num_classes, 1)
        self.apply(init_linear_and_norms)

    def forward_features(self, x: torch.Tensor):
        """Encoder: returns the bottleneck (B, 8*dim, H/32, W/32) and the list of level inputs
        [stem out (dim, H/4), level-0 out (2*dim, H/8), level-1 out (4*dim, H/16), level-2 out (8*dim, H/32)]."""
        x = self.pos_drop(self.patch_embed(x))
        skips = []
        for level in self.levels:
            skips.append(x)
            x = level(x)
        return x, skips

    def forward_features_up(self, x: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        for i, layer_up in enumerate(self.layers_up):
            x = layer_up(x if i == 0 else x + skips[-i])
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.forward_features(x)
        x = self.forward_features_up(x, skips)
        return self.final_conv(self.final_up(x))


class HMTUNet(BackboneMixin, nn.Module):
    """HMT-UNet (hybrid Mamba-Transformer U-Net on MambaVision blocks). See the module docstring.

    Args:
        in_channels: input channels. Default 3.
        num_classes: output channels (logits). Default 1.
        dim: channels at H/4 (doubling per level). Default 80 (MambaVision-T).
        in_dim: channels after the first stem conv. Default 32.
        depths: blocks per encoder level (the decoder uses them reversed). Default (1, 3, 8, 4).
        num_heads: attention heads per level. Default (2, 4, 8, 16).
        window_size: window side per level (hybrid levels). Default (8, 8, 14, 7).
        mlp_ratio: MLP expansion of hybrid blocks. Default 4.
        drop_path_rate: maximum stochastic-depth rate. Default 0.2.
        qkv_bias: bias in the attention qkv projection. Default True.
        drop_rate: dropout after the stem, in MLPs and after attention projections. Default 0.
        attn_drop_rate: attention dropout. Default 0.
        layer_scale: layer-scale init of hybrid blocks (None: off). Default None.
        layer_scale_conv: layer-scale init of conv blocks (None: off). Default None.
        decoder: ``"code"`` (upstream: hybrid blocks in every decoder stage) or ``"paper"`` (ConvBlock stages at
            the two high-resolution decoder levels, mirroring the encoder). Default "code".
    """

    downsample_factor = 32  # input H and W must be multiples of it (read by the engine's size check)
    default_input_size = 256

    def __init__(self, in_channels: int = 3, num_classes: int = 1, dim: int = 80, in_dim: int = 32,
                 depths: Sequence[int] = (1, 3, 8, 4), num_heads: Sequence[int] = (2, 4, 8, 16),
                 window_size: Sequence[int] = (8, 8, 14, 7), mlp_ratio: float = 4.0, drop_path_rate: float = 0.2,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 layer_scale: Optional[float] = None, layer_scale_conv: Optional[float] = None,
                 decoder: str = "code"):
        super().__init__()
        if decoder not in ("code", "paper"):
            raise ValueError(f"HMTUNet: decoder must be 'code' (upstream code) or 'paper' (conv decoder stages at "
                             f"the two high-resolution levels), got {decoder!r}")
        for name, seq in (("depths", depths), ("num_heads", num_heads), ("window_size", window_size)):
            if len(seq) != 4:
                raise ValueError(f"HMTUNet: {name} needs 4 entries (one per level), got {list(seq)}")
        if any(int(d) < 1 for d in depths):
            raise ValueError(f"HMTUNet: every level needs at least one block, got depths={list(depths)}")
        if dim % 4:
            raise ValueError(f"HMTUNet: dim must be divisible by 4 (the x4 head expansion), got {dim}")
        for i, h in enumerate(num_heads):
            if (dim * 2 ** i) % h:
                raise ValueError(f"HMTUNet: level {i} has {dim * 2 ** i} channels, not divisible by "
                                 f"num_heads[{i}]={h}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.decoder = decoder
        self.hmtunet = MambaVisionUNet(in_chans=in_channels, num_classes=num_classes, dim=dim, in_dim=in_dim,
                                       depths=tuple(int(d) for d in depths), num_heads=tuple(num_heads),
                                       window_size=tuple(window_size), mlp_ratio=mlp_ratio,
                                       drop_path_rate=drop_path_rate, qkv_bias=qkv_bias, drop_rate=drop_rate,
                                       attn_drop_rate=attn_drop_rate, layer_scale=layer_scale,
                                       layer_scale_conv=layer_scale_conv, decoder=decoder)
        # Backbone: each level's output before its trailing Downsample (the input of that Downsample; the last
        # level has none). dim@4, 2dim@8, 4dim@16, 8dim@32; the deepest is the bottleneck.
        self.feature_info = [dict(num_chs=dim * 2 ** i, reduction=4 * 2 ** i, module=f"hmtunet.levels.{i}.downsample",
                                  hook_type="forward_pre") for i in range(3)]
        self.feature_info.append(dict(num_chs=dim * 8, reduction=32, module="hmtunet.levels.3"))
        self.encoder_modules = ("hmtunet.patch_embed", "hmtunet.pos_drop", "hmtunet.levels")

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The four level maps (B, C_i, H/r_i, W/r_i) (see ``feature_info``)."""
        check_input_size(x, self.in_channels, 32, "hmt_unet")
        body = self.hmtunet
        x = body.pos_drop(body.patch_embed(x))
        feats = []
        for level in body.levels:
            x = level.forward_blocks(x)
            feats.append(x)
            if level.downsample is not None:
                x = level.downsample(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.in_channels, 32, "hmt_unet")
        return self.hmtunet(x)


# ---------------------------------------------------------------------------------------------------------------
# MambaVision classification checkpoints -> HMT-UNet

_PREFIX = "hmtunet."
_LEVEL_KEY = re.compile(r"^levels\.(\d+)\.(.*)$")


def _mambavision_layout(sd: Mapping[str, torch.Tensor]) -> dict:
    """dim, in_dim, in_chans and depths of a MambaVision state dict (from its key layout)."""
    depths: Dict[int, int] = {}
    for k in sd:
        m = re.match(r"^levels\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            depths[i] = max(depths.get(i, 0), j + 1)
    w0 = sd["patch_embed.conv_down.0.weight"]
    w3 = sd.get("patch_embed.conv_down.3.weight")
    return dict(in_dim=int(w0.shape[0]), in_chans=int(w0.shape[1]),
                dim=int(w3.shape[0]) if w3 is not None else None,
                depths=[depths.get(i, 0) for i in range(max(depths) + 1)] if depths else [])


def _size_name(dim, in_dim, depths) -> str:
    for name, cfg in HMT_UNET_SIZES.items():
        if cfg["dim"] == dim and cfg["in_dim"] == in_dim and list(cfg["depths"]) == list(depths):
            return name
    return ""


@register_pretrained_loader(HMTUNet)
def load_mambavision_checkpoint(model: HMTUNet, state_dict: Mapping[str, torch.Tensor],
                                report: PretrainedReport) -> PretrainedReport:
    """Load a MambaVision classification checkpoint (NVlabs ``mambavision_*_1k.pth.tar``, weights under
    ``state_dict``) into HMT-UNet, as upstream's ``HMTUNet.load_from`` does:

    1. Encoder: every checkpoint key whose name (under ``hmtunet.``) and shape exist in the model is copied:
       stem, levels 0-3 (only the first ``depth`` blocks of a level if the model is shallower), downsamples,
       BatchNorm running statistics. The classifier's ``norm.*`` and ``head.*`` have no place (``unused``).
       MambaVision-T into ``hmt_unet`` (tiny): 245 of 252 keys.
    2. Decoder: ``levels.{0,1,2,3}`` are renamed to ``layers_up.{3,2,1,0}`` and copied again by name and shape
       (``mirrored``): T into the code variant: 190 keys. As upstream, a name match is enough, so in the code
       variant the BatchNorm weight/bias of the encoder's ConvBlocks (levels 0/1) land in the LayerNorm
       weight/bias of the hybrid decoder blocks with the same name (16 of the 190 keys for T); their mixers,
       attention and MLPs have no counterpart and stay at init. In the paper variant the conv decoder stages get
       the full ConvBlocks (230 keys for T).
    3. Never loaded (``missing``, with the reason): decoder ``upsample`` (PatchExpand2D), ``final_up``,
       ``final_conv``, decoder blocks without a counterpart.

    A 3-channel stem loads into a 1-channel model as the sum of its RGB filters. A state dict of a whole HMT-UNet
    (keys ``hmtunet.*``) is loaded by name and shape. Raises ``PretrainedMismatchError`` for a checkpoint that is
    not MambaVision or whose widths do not fit the model (e.g. MambaVision-S into ``size="tiny"``).
    """
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    own = model.state_dict()

    if any(k.startswith(_PREFIX) for k in sd):  # a full HMT-UNet state dict
        pairs = {k: v for k, v in sd.items() if k in own}
        if not pairs:
            raise PretrainedMismatchError("checkpoint has hmtunet.* keys but none matches this model")
        copy_matching(model, pairs, report)
        report.unused = [k for k in sd if k not in own]
        done = set(report.loaded)
        report.missing = {k: "not in checkpoint" if k not in sd else "shape mismatch" for k in own if k not in done}
        return report

    if "patch_embed.conv_down.0.weight" not in sd or not any(k.startswith("levels.") for k in sd):
        sample = ", ".join(sorted(sd)[:4])
        raise PretrainedMismatchError(
            f"{report.source or 'checkpoint'} is not a MambaVision classification checkpoint: expected keys "
            f"'patch_embed.conv_down.*' and 'levels.{{i}}.blocks.{{j}}.*' (weights under 'state_dict'), got keys "
            f"like {sample}. HMT-UNet takes NVlabs MambaVision checkpoints (e.g. mambavision_tiny_1k.pth.tar).")
    lay = _mambavision_layout(sd)
    inner = model.hmtunet
    m_dim = inner.patch_embed.conv_down[3].out_channels
    m_in_dim = inner.patch_embed.conv_down[0].out_channels
    if lay["dim"] != m_dim or lay["in_dim"] != m_in_dim:
        ck = _size_name(lay["dim"], lay["in_dim"], lay["depths"])
        hint = f"build the model with size={ck!r}" if ck else \
            f"build the model with dim={lay['dim']}, in_dim={lay['in_dim']}, depths={lay['depths']}"
        raise PretrainedMismatchError(
            f"{report.source or 'checkpoint'} is a MambaVision checkpoint with dim {lay['dim']}, in_dim "
            f"{lay['in_dim']}, depths {lay['depths']}"
            f"{' (MambaVision-' + ck[0].upper() + ')' if ck else ''}, but this HMT-UNet has dim {m_dim}, in_dim "
            f"{m_in_dim}: nothing would fit; {hint}")

    # 1. encoder
    enc: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        tk = _PREFIX + k
        if tk not in own:
            continue
        if k == "patch_embed.conv_down.0.weight" and v.shape[1] != own[tk].shape[1] and \
                own[tk].shape[1] == 1 and v.dim() == 4:
            v = v.sum(dim=1, keepdim=True)  # grey input == grey repeated to the checkpoint's channels
        enc[tk] = v
    copy_matching(model, enc, report)
    report.unused = [k for k in sd if _PREFIX + k not in own]

    # 2. decoder mirrored from the encoder levels
    n = len(inner.levels)
    dec: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = _LEVEL_KEY.match(k)
        if m and int(m.group(1)) < n:
            tk = f"{_PREFIX}layers_up.{n - 1 - int(m.group(1))}.{m.group(2)}"
            if tk in own:
                dec[tk] = v
    copy_matching(model, dec, report, mirrored=True)

    # 3. what stayed at init, and why
    filled = set(report.loaded) | set(report.mirrored)
    bad_shape = {k for k, _, _ in report.mismatched}
    for k in own:
        if k in filled:
            continue
        rest = k[len(_PREFIX):]
        if k in bad_shape:
            why = "shape differs from the checkpoint"
        elif ".upsample." in rest:
            why = "decoder upsampling (PatchExpand2D): no counterpart in a classification checkpoint"
        elif rest.startswith(("final_up.", "final_conv.")):
            why = "segmentation head: trained from scratch"
        elif rest.startswith("layers_up."):
            why = "decoder block with no same-named weight in the mirrored encoder level"
        else:
            why = "not in checkpoint"
        report.missing[k] = why
    return report


# ---------------------------------------------------------------------------------------------------------------
# Registry


def _build(size: str, decoder: str, in_channels: int, num_classes: int, kwargs: dict) -> HMTUNet:
    if size not in HMT_UNET_SIZES:
        raise ValueError(f"hmt_unet: unknown size {size!r}; choose one of {sorted(HMT_UNET_SIZES)}")
    cfg = dict(HMT_UNET_SIZES[size])
    cfg.update(kwargs)
    return HMTUNet(in_channels=in_channels, num_classes=num_classes, decoder=decoder, **cfg)


@register_model("hmt_unet", paper=PAPER, upstream="simzhangbest/HMT-Unet@2e84d2d3")
def hmt_unet(in_channels: int = 3, num_classes: int = 1, size: str = "tiny", **kwargs) -> HMTUNet:
    """HMT-UNet as in the upstream code (hybrid blocks in every decoder stage).

    ``size``: "tiny" (MambaVision-T, default), "small" or "base"; other keyword arguments override the size."""
    return _build(size, "code", in_channels, num_classes, kwargs)


@register_model("hmt_unet_small", paper=PAPER)
def hmt_unet_small(in_channels: int = 3, num_classes: int = 1, **kwargs) -> HMTUNet:
    """HMT-UNet (upstream code) at MambaVision-S widths."""
    return _build("small", "code", in_channels, num_classes, kwargs)


@register_model("hmt_unet_base", paper=PAPER)
def hmt_unet_base(in_channels: int = 3, num_classes: int = 1, **kwargs) -> HMTUNet:
    """HMT-UNet (upstream code) at MambaVision-B widths (layer scale 1e-5)."""
    return _build("base", "code", in_channels, num_classes, kwargs)


@register_model("hmt_unet_paper", paper=PAPER)
def hmt_unet_paper(in_channels: int = 3, num_classes: int = 1, size: str = "tiny", **kwargs) -> HMTUNet:
    """HMT-UNet as the paper describes it (conv decoder stages at the two high-resolution levels).

    ``size``: "tiny" (default), "small" or "base"; other keyword arguments override the size."""
    return _build(size, "paper", in_channels, num_classes, kwargs)
