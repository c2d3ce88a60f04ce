"""A pretrained folder (config.json + model.safetensors) as the object ``predict`` takes in place of a
``SegmentationModule``: ``.net``, ``.hparams`` (num_classes, in_channels, threshold, preprocess, image_size,
class_names) and ``.input_size``, so the saved preprocessing is applied exactly as for a checkpoint."""

from __future__ import annotations

from typing import Any, Dict
from mambaseg.models.hub import from_pretrained

__all__ = ["FolderModule", "load_folder_module"]


class _HParams(dict):
    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None


class FolderModule:
    def __init__(self, net, config: Dict[str, Any]):
        self.net = net
        self.config = config
        pre = dict(config.get("preprocessing") or {})
        size = pre.get("image_size") or config.get("input_size")
        self.hparams = _HParams(num_classes=int(config.get("num_classes", 2)),
                                in_channels=int(config.get("in_channels", 3)),
                                threshold=float(config.get("threshold", 0.5)),
                                preprocess=pre.get("preset"), image_size=size,
                                class_names=list(config.get("class_names") or []),
                                model=config.get("architecture"))

    @property
    def input_size(self):
        s = self.hparams.image_size
        if s is None:
            return None
        return (int(s), int(s)) if isinstance(s, (int, float)) else (int(s[0]), int(s[1]))

    def eval(self):
        self.net.eval()
        return self

    def to(self, device):
        self.net.to(device)
        return self


def load_folder_module(path: str, device: str = "cpu") -> FolderModule:
    net = from_pretrained(path, map_location=device)
    return FolderModule(net, net.pretrained_config).eval()
