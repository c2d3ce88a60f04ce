"""Loading upstream classification checkpoints into our networks' encoders.

``load_pretrained(model, path)`` reads the file with ``torch.load(map_location="cpu", weights_only=True)`` and
hands the state dict to the loader registered for the model's class (``register_pretrained_loader``). Each
loader maps upstream keys onto ours, mirrors encoder stages into the decoder where the upstream project does,
and returns a ``PretrainedReport``. A checkpoint that does not belong to the architecture raises
``PretrainedMismatchError`` instead of silently loading nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Tuple

import torch
import torch.nn as nn

__all__ = ["load_pretrained", "PretrainedReport", "PretrainedMismatchError", "register_pretrained_loader",
           "read_checkpoint", "copy_matching"]


class PretrainedMismatchError(ValueError):
    """The checkpoint does not fit this model (another architecture, or not a checkpoint at all)."""


@dataclass
class PretrainedReport:
    source: str = ""
    loaded: List[str] = field(default_factory=list)                   # model keys filled from the checkpoint
    mirrored: List[str] = field(default_factory=list)                 # decoder keys filled from encoder weights
    missing: Dict[str, str] = field(default_factory=dict)             # model key -> why it was not loaded
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, ckpt shape, model shape)
    unused: List[str] = field(default_factory=list)                   # checkpoint keys with no place in the model

    def summary(self) -> str:
        return (f"{self.source}: loaded {len(self.loaded)}, mirrored into decoder {len(self.mirrored)}, "
                f"not loaded {len(self.missing)}, shape mismatches {len(self.mismatched)}, "
                f"unused checkpoint keys {len(self.unused)}")

    def __str__(self) -> str:
        return self.summary()


_LOADERS: Dict[type, Callable[[nn.Module, Mapping[str, torch.Tensor], PretrainedReport], PretrainedReport]] = {}


def register_pretrained_loader(model_cls: type):
    """Decorator: ``fn(model, state_dict, report) -> report`` loads checkpoints into ``model_cls``."""
    def deco(fn):
        _LOADERS[model_cls] = fn
        return fn
    return deco


# the trusted-conversion tool (mambaseg.engine.io; named here as text: models/ does not import the engine)
CONVERT_TRUSTED = "python -m mambaseg.engine.io --convert-trusted {src} {dst}"


def _unreadable_pretrained(path: str, e: Exception) -> str:
    """One line for a pretrained file that ``torch.load(weights_only=True)`` refuses: a pickle that asks for code
    points to the trusted-conversion tool (never to ``weights_only=False`` for that very file)."""
    import re
    msg = " ".join(str(e).split())
    if "Weights only load failed" in msg or "Unsupported global" in msg or "weights_only" in msg:
        names = ", ".join(sorted(set(re.findall(r"GLOBAL ([\w.]+)", msg)))) or "a non-tensor object"
        root, ext = os.path.splitext(path)
        return (f"refused pretrained file {path!r}: it asks to run or build Python code ({names}), and weights are "
                f"read as data only. If, and only if, you trust where it came from, convert it with "
                f"{CONVERT_TRUSTED.format(src=path, dst=root + '.plain' + (ext or '.pth'))} and pass the new file")
    return (f"could not read pretrained file {path!r} as PyTorch weights ({type(e).__name__}: {msg[:200]}); it may "
            "be truncated, corrupt or not a PyTorch file")


def read_checkpoint(path: str, keys=("model", "state_dict", "model_state", "module")) -> Dict[str, torch.Tensor]:
    """Read a checkpoint safely and return its flat tensor state dict (looked up under ``keys`` if nested)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained checkpoint {path!r} does not exist; pass the path of a downloaded "
                                f"file (mambaseg never downloads weights)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle error, truncated file, not a torch file
        raise PretrainedMismatchError(_unreadable_pretrained(path, e)) from None
    if isinstance(obj, Mapping):
        for k in keys:
            if k in obj and isinstance(obj[k], Mapping):
                obj = obj[k]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedMismatchError(f"{path!r} holds no state dict of tensors (looked at the top level and "
                                      f"under {list(keys)})")
    return dict(obj)


def copy_matching(model: nn.Module, pairs: Mapping[str, torch.Tensor], report: PretrainedReport,
                  mirrored: bool = False) -> None:
    """Copy ``pairs`` (model key -> tensor) into the model where the shape fits; record the rest in ``report``."""
    own = model.state_dict()
    with torch.no_grad():
        for k, v in pairs.items():
            if k not in own:
                continue
            if tuple(own[k].shape) != tuple(v.shape):
                report.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
                continue
            own[k].copy_(v.to(own[k].dtype))
            (report.mirrored if mirrored else report.loaded).append(k)


def load_pretrained(model: nn.Module, path: str) -> PretrainedReport:
    """Load an upstream classification checkpoint into ``model``; return what was loaded and what not."""
    loader = None
    for cls in type(model).__mro__:
        if cls in _LOADERS:
            loader = _LOADERS[cls]
            break
    if loader is None:
        raise PretrainedMismatchError(f"{type(model).__name__} has no pretrained-checkpoint loader; models with "
                                      f"one: {sorted(c.__name__ for c in _LOADERS)}")
    sd = read_checkpoint(path)
    report = PretrainedReport(source=os.path.basename(os.fspath(path)))
    return loader(model, sd, report)
