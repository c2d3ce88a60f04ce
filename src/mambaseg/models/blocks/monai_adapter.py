"""Wrap a MONAI network as a mambaseg network without changing its parameter names (MONAI is optional).

:func:`adopt` registers the MONAI network's children, parameters and buffers on the owning module under their own
names (so ``state_dict`` keys are MONAI's and MONAI checkpoints load with ``strict=True``) and keeps the MONAI
object, unregistered, to run its own ``forward`` on those same child modules. Moving, casting, ``train()``/``eval()``
and hooks act on the shared children; ``copy.deepcopy`` keeps them shared.
"""

from __future__ import annotations

import importlib.util

import torch.nn as nn

__all__ = ["monai_available", "require_monai", "adopt"]


def monai_available() -> bool:
    """Whether MONAI can be imported (checked without importing it: that takes seconds)."""
    return importlib.util.find_spec("monai") is not None


def require_monai(model: str):
    """``monai.networks.nets``, or an ImportError naming the fix."""
    try:
        import monai.networks.nets as nets
    except ImportError as e:  # pragma: no cover - registered only when MONAI is installed
        raise ImportError(f"{model} is MONAI's network: install MONAI (pip install 'mambaseg[monai]' or "
                          f"pip install monai) to use it ({e})") from None
    return nets


def adopt(owner: nn.Module, net: nn.Module) -> None:
    """Make ``net``'s children, direct parameters and buffers ``owner``'s, under the same names."""
    object.__setattr__(owner, "_monai_net", net)
    for name, child in net.named_children():
        owner.add_module(name, child)
    for name, p in net.named_parameters(recurse=False):
        owner.register_parameter(name, p)
    for name, b in net.named_buffers(recurse=False):
        owner.register_buffer(name, b)
