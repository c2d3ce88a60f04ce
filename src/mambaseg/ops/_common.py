"""Input normalisation shared by the fast scan backends (the reference keeps its own, to stay independent)."""

from __future__ import annotations

import torch


def compute_dtype(u: torch.Tensor) -> torch.dtype:
    """The scan computes in float32, or float64 for float64 inputs."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def as_grouped(B: torch.Tensor, C: torch.Tensor):
    """B, C of shape (b, n, l) or (b, g, n, l) -> both (b, g, n, l) with one g: an ungrouped one is shared by
    every group of the other (an expanded view, no copy). Shapes were already checked by ``selective_scan``."""
    B4 = B if B.dim() == 4 else B.unsqueeze(1)
    C4 = C if C.dim() == 4 else C.unsqueeze(1)
    g = max(B4.shape[1], C4.shape[1])
    return B4.expand(B4.shape[0], g, *B4.shape[2:]), C4.expand(C4.shape[0], g, *C4.shape[2:])
