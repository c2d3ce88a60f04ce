"""VMamba's 2D cross-scan and merge (SS2D).

``cross_scan(x)``: x (b, c, h, w) -> (b, 4, c, h*w), four 1-D orderings of the map:

0. row-major (index h_i * w + w_i),
1. column-major (index w_i * h + h_i),
2. direction 0 reversed,
3. direction 1 reversed.

``cross_merge(y, h, w)``: y (b, 4, c, h*w) in those orderings -> (b, c, h*w) row-major, summing the four after
mapping each back to row-major positions. ``cross_merge`` is the adjoint of ``cross_scan`` (the gradient of
one is the other).
"""

from __future__ import annotations

import torch


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"cross_scan: x has shape {tuple(x.shape)}, expected (b, c, h, w)")
    b, c, h, w = x.shape
    row = x.flatten(2)                                   # (b, c, hw)
    col = x.transpose(2, 3).flatten(2)                   # (b, c, wh)
    fwd = torch.stack([row, col], dim=1)                 # (b, 2, c, L)
    return torch.cat([fwd, fwd.flip(-1)], dim=1)         # (b, 4, c, L)


def cross_merge(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if y.dim() != 4 or y.shape[1] != 4 or y.shape[-1] != h * w:
        raise ValueError(f"cross_merge: y has shape {tuple(y.shape)}, expected (b, 4, c, h*w) with h*w = {h * w}")
    b, _, c, L = y.shape
    y = y[:, 0:2] + y[:, 2:4].flip(-1)                   # undo the reversal: (b, 2, c, L)
    row = y[:, 0]
    col = y[:, 1].view(b, c, w, h).transpose(2, 3).reshape(b, c, L)
    return row + col
