"""``features_only`` encoders (timm's convention): :class:`FeatureEncoder` wraps a network and returns its
multi-scale maps; ``check_feature_info`` validates a network's ``feature_info``. See :mod:`mambaseg.models.backbone`
for what a network provides (``feature_info``, ``forward_intermediates``, ``encoder_modules``)."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

__all__ = ["FeatureEncoder", "check_feature_info"]


def check_feature_info(feature_info) -> List[Dict]:
    """Validate a ``feature_info`` list (one clear error for a malformed one)."""
    if not isinstance(feature_info, (list, tuple)) or not feature_info:
        raise ValueError(f"feature_info must be a non-empty list of dicts, got {feature_info!r}")
    prev = 0
    for i, f in enumerate(feature_info):
        if not {"num_chs", "reduction", "module"} <= set(f):
            raise ValueError(f"feature_info[{i}] = {f!r} lacks one of num_chs, reduction, module")
        if f["reduction"] <= prev:
            raise ValueError(f"feature_info reductions must increase, got {[g['reduction'] for g in feature_info]}")
        prev = f["reduction"]
    return list(feature_info)


def _keep(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") or p.startswith(name + ".") for p in prefixes)


class FeatureEncoder(nn.Module):
    """The encoder of a network, returning its multi-scale maps (``create_model(..., features_only=True)``).

    Args:
        model: a network with ``feature_info``, ``forward_intermediates`` and ``encoder_modules``.
        out_indices: which stages to return (default: all), indices into ``model.feature_info``.

    ``forward(x)`` -> list of (B, C_i, H/r_i, W/r_i); ``feature_info`` lists the returned stages;
    ``feature_info_channels()`` / ``feature_info_reductions()`` as timm's ``feature_info.channels()``.
    """

    def __init__(self, model: nn.Module, out_indices: Optional[Sequence[int]] = None):
        super().__init__()
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "feature_info"):
            raise TypeError(f"{type(model).__name__} has no feature_info/forward_intermediates; "
                            f"it cannot be used with features_only=True")
        info = check_feature_info(model.feature_info)
        n = len(info)
        idx = list(range(n)) if out_indices is None else [int(i) for i in out_indices]
        bad = [i for i in idx if not -n <= i < n]
        if bad or not idx:
            raise ValueError(f"out_indices {list(out_indices)} out of range for {n} stages (0..{n - 1})")
        self.out_indices = [i % n for i in idx]
        prefixes = tuple(getattr(model, "encoder_modules", ()) or ())
        if prefixes:
            for name, _ in list(model.named_modules()):
                if not name or "." in name and not _keep(name.rsplit(".", 1)[0], prefixes):
                    continue
                if not _keep(name, prefixes):
                    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
                    setattr(parent, name.rsplit(".", 1)[-1], nn.Identity())
        self.model = model
        self.feature_info = [dict(info[i]) for i in self.out_indices]

    def feature_info_channels(self) -> List[int]:
        return [f["num_chs"] for f in self.feature_info]

    def feature_info_reductions(self) -> List[int]:
        return [f["reduction"] for f in self.feature_info]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        feats = self.model.forward_intermediates(x)
        return [feats[i] for i in self.out_indices]

    def load_from_full(self, state_dict: Dict[str, torch.Tensor]):
        """Load a full network's ``state_dict`` (decoder keys are dropped); returns the missing keys (none
        expected)."""
        own = self.model.state_dict()
        sub = {k: v for k, v in state_dict.items() if k in own}
        res = self.model.load_state_dict(sub, strict=False)
        return res.missing_keys
