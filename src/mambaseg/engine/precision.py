"""``--precision bf16`` for inference: bfloat16 autocast around a network's forward.

Under ``torch.autocast(dtype=bfloat16)`` the GEMMs and convolutions run in bfloat16 (oneDNN, AMX/AVX512-BF16
where the CPU has them; on a GPU tensor cores), while the selective scan and the norms stay float32 (the
scan disables autocast itself; LayerNorm is on autocast's float32 list). The wrapper returns float32
outputs, so thresholds, softmax and resizing downstream see float32 as before.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["PRECISIONS", "AutocastForward", "with_precision"]

PRECISIONS = ("fp32", "bf16")


class AutocastForward(nn.Module):
    """``net`` run under bfloat16 autocast; tensor outputs (or a list/tuple of them) cast back to float32."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            out = self.net(x)
        if isinstance(out, (list, tuple)):
            return type(out)(o.float() for o in out)
        return out.float()


def with_precision(net: nn.Module, precision: str) -> nn.Module:
    """``net`` itself for ``fp32``, an :class:`AutocastForward` for ``bf16``; other values: one clear error."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return net if precision == "fp32" else AutocastForward(net)
