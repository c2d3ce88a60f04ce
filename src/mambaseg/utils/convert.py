"""Small value conversions used across layers: JSON-able values and per-axis sizes."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["to_jsonable", "as_size"]


def to_jsonable(v: Any, inf_as_str: bool = False) -> Any:
    """``v`` with every value ``json.dump(allow_nan=False)`` cannot write made plain: mappings -> dicts with str
    keys, lists / tuples / arrays / tensors -> lists, numpy scalars -> Python numbers, NaN -> ``None``; +-inf ->
    ``None``, or ``"inf"`` / ``"-inf"`` with ``inf_as_str``. Anything else is returned as is."""
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v) if inf_as_str and not math.isnan(v) else None
    if isinstance(v, Mapping):
        return {str(k): to_jsonable(x, inf_as_str) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_jsonable(x, inf_as_str) for x in v]
    if isinstance(v, (np.ndarray, torch.Tensor)):
        return to_jsonable(v.tolist(), inf_as_str)
    return v


def as_size(size: Union[int, Sequence[int], None], ndim: int = 2,
            what: str = "size") -> Optional[Tuple[int, ...]]:
    """``size`` as a tuple of ``ndim`` ints: an int is repeated on every axis, a sequence must have ``ndim``
    entries; ``None`` stays ``None``."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return (int(size),) * ndim
    out = tuple(int(s) for s in size)
    if len(out) != ndim:
        raise ValueError(f"{what} {tuple(size)!r} has {len(out)} entries; give one int or {ndim} (one per axis)")
    return out
