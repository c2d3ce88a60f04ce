"""The selective-scan parameter initialisation Mamba uses (``mamba_ssm``'s ``Mamba.__init__``), shared by every
block that holds raw SSM parameters (Mamba-1, VMamba's SS2D v0 and v2, MambaVision's mixer):

* ``dt_proj`` weight: ``U(-s, s)`` (``"random"``) or the constant ``s`` (``"constant"``), ``s = dt_rank^-0.5 *
  dt_scale``;
* ``dt_proj`` bias: the inverse softplus of a step size drawn log-uniformly in ``[dt_min, dt_max]`` and floored
  at ``dt_init_floor`` (so that ``softplus(bias)`` is that step size);
* ``A_log = log(1..N)`` on every row (S4D-real: ``A = -exp(A_log) = -(1..N)``); ``D = 1`` (the callers fill it).

The random draws happen in this order (weight, then bias), as upstream, so seeded initialisations are unchanged.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn as nn

__all__ = ["init_dt_weight_", "dt_bias", "s4d_real_a_log"]


@torch.no_grad()
def init_dt_weight_(weight: torch.Tensor, dt_rank: int, dt_scale: float = 1.0, dt_init: str = "random") -> None:
    """``dt_proj`` weight in place: ``U(-s, s)`` or the constant ``s``, ``s = dt_rank^-0.5 * dt_scale``."""
    s = dt_rank ** -0.5 * dt_scale
    if dt_init == "constant":
        nn.init.constant_(weight, s)
    elif dt_init == "random":
        nn.init.uniform_(weight, -s, s)
    else:
        raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")


def dt_bias(shape: Union[int, Sequence[int]], dt_min: float = 1e-3, dt_max: float = 0.1,
            dt_init_floor: float = 1e-4) -> torch.Tensor:
    """``softplus^-1(dt)`` with ``dt`` log-uniform in ``[dt_min, dt_max]``, floored at ``dt_init_floor``."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    dt = torch.exp(torch.rand(*shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse softplus


def s4d_real_a_log(rows: int, d_state: int) -> torch.Tensor:
    """``log(1..d_state)`` on each of ``rows`` rows, contiguous (rows, d_state) float32."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(rows, 1)
