"""Encoders as backbones (timm's ``features_only`` convention).

Every network exposes:

* ``model.feature_info``: one dict per encoder stage, increasing reduction,
  ``{"num_chs": C_i, "reduction": r_i, "module": "dotted.path"}``; the map of stage i is the output of that module
  (or its input when the entry has ``"hook_type": "forward_pre"``, timm's name), possibly channels-last or as
  (B, L, C) tokens inside the network;
* ``model.forward_intermediates(x) -> list[Tensor]``: those maps, channels-first (B, C_i, H/r_i, W/r_i);
* ``model.forward_features(x) -> Tensor``: the deepest of them.

``create_model(name, features_only=True, out_indices=None)`` returns :class:`FeatureEncoder`: the network with
every module its decoder alone uses removed (``encoder_modules`` names what the encoder needs), whose forward
returns the selected maps. Its ``state_dict`` keys are the full network's keys under ``model.``, so weights of a
trained segmentation network load into it with ``strict=False`` (or ``load_from_full``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .features import FeatureEncoder, check_feature_info  # noqa: F401  (their public home was here)
from .contract import SegmentationNetwork
from .hub import PretrainedMixin

__all__ = ["BackboneMixin", "FeatureEncoder", "vss_stage_maps", "check_feature_info"]


class BackboneMixin(SegmentationNetwork, PretrainedMixin):
    """The base of every registered network: the model contract (:class:`~mambaseg.models.contract.SegmentationNetwork`:
    ``spatial_dims``, ``downsample_factor``, ``default_input_size``, ``feature_info``, ...), ``forward_features`` =
    the deepest of ``forward_intermediates`` (classes define the latter), and ``save_pretrained`` /
    ``from_pretrained`` (:mod:`mambaseg.models.hub`)."""

    #: dotted module paths ``forward_intermediates`` uses (everything else is decoder)
    encoder_modules: Sequence[str] = ()

    def forward_intermediates(self, x: torch.Tensor) -> List[torch.Tensor]:  # pragma: no cover - overridden
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The deepest encoder map (B, C, H/r, W/r), channels-first."""
        return self.forward_intermediates(x)[-1]


def vss_stage_maps(encoder: nn.Module, x: torch.Tensor, tokens_hw=None) -> List[torch.Tensor]:
    """Stage outputs (after the blocks, before the trailing downsample) of a VMamba / Swin style encoder with
    ``patch_embed`` and ``layers[i].{blocks, downsample}``; channels-first. ``tokens_hw``: (H, W) of the patch grid
    when the blocks work on (B, L, C) tokens (Swin); None for channels-last maps (B, H, W, C) (VMamba)."""
    x = encoder.patch_embed(x)
    if hasattr(encoder, "pos_drop"):
        x = encoder.pos_drop(x)
    out = []
    for i, layer in enumerate(encoder.layers):
        for blk in layer.blocks:
            x = blk(x)
        if tokens_hw is None:
            out.append(x.permute(0, 3, 1, 2))
        else:
            h, w = tokens_hw[0] >> i, tokens_hw[1] >> i
            out.append(x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w))
        if layer.downsample is not None:
            x = layer.downsample(x)
    return out
