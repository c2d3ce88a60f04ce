"""A pretrained folder (config.json + model.safetensors) as the object ``predict`` takes in place of a
``SegmentationModule``: ``.net``, ``.hparams`` (num_classes, in_channels, threshold, preprocess, image_size,
class_names) and ``.input_size``, so the saved preprocessing is applied exactly as for a checkpoint. A 3-D folder becomes the
``SegmentationModule`` of its training settings (sliding window, regions, preprocessing plan), as its checkpoint."""

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


def _volumetric_module(net, config: Dict[str, Any], path: str):
    """A 3-D folder (``mambaseg export --format folder`` of a 3-D checkpoint) as the ``SegmentationModule`` of its
    training hyper-parameters holding the folder's weights, with the preprocessing plan predict applies (the
    sliding window, regions and plan are those of the checkpoint)."""
    import inspect

    from .errors import MambasegUserError
    from .module import SegmentationModule
    training = dict(config.get("training") or {})
    hp, info = training.get("hyper_parameters"), training.get("volumetric")
    if not hp or not info:
        raise MambasegUserError(f"{path} holds a 3-D network without the training settings predict needs (its "
                                "config.json has no training.hyper_parameters / training.volumetric); export it "
                                "from the training checkpoint: mambaseg export --ckpt RUN/checkpoints/best.ckpt "
                                "--format folder --out FOLDER")
    known = set(inspect.signature(SegmentationModule.__init__).parameters)
    kw = {k: v for k, v in dict(hp).items() if k in known}
    kw["pretrained"] = None  # the weights come from the folder
    module = SegmentationModule(**kw)
    module.net.load_state_dict(net.state_dict(), strict=True)
    module.volumetric_info = info
    module.pretrained_config = config
    return module.eval()


def load_folder_module(path: str, device: str = "cpu"):
    net = from_pretrained(path, map_location=device)
    if int(getattr(net, "spatial_dims", 2)) == 3:
        return _volumetric_module(net, net.pretrained_config, path).to(device)
    return FolderModule(net, net.pretrained_config).eval()
