"""Refuse absurd sizes before allocating: input sizes (``export``/``profile --size``) and networks (a model folder's
``config.json`` asking for ``base_channels: 1000000``) whose weights or activations cannot fit this machine.

The numbers are lower bounds, so a refusal is never wrong: a network's float32 weights (counted on the ``meta``
device, which allocates nothing) and, for an input size, the float32 input and output maps alone. Both are
compared with the machine's memory (physical memory, or the cgroup limit when lower).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple

__all__ = ["SizeError", "machine_memory_bytes", "human_bytes", "check_input_size", "check_model_memory",
           "estimate_params"]


class SizeError(ValueError):
    """An input size or a network too large (or not positive); the message names the number and the fix."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} PB"  # pragma: no cover


def machine_memory_bytes() -> Optional[int]:
    """Physical memory, or the cgroup memory limit when lower; None when unknown."""
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        pass
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(f) as fh:
                v = fh.read().strip()
        except OSError:
            continue
        if v.isdigit() and int(v) < (1 << 60):
            total = int(v) if total is None else min(total, int(v))
    return total


def check_input_size(size: Sequence[int], flag: str = "--size", in_channels: int = 3, num_classes: int = 1,
                     batch: int = 1) -> Tuple[int, ...]:
    """``size`` as positive ints, refused in one line when not positive or when its float32 input and output maps
    alone exceed the machine's memory."""
    try:
        dims = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        raise SizeError(f"{flag} takes positive integers, got {size!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise SizeError(f"{flag} must be positive, got {' '.join(map(str, size))}; e.g. {flag} 256")
    pixels = 1
    for d in dims:
        pixels *= d
    need = 4 * pixels * batch * (int(in_channels) + int(num_classes))
    mem = machine_memory_bytes()
    if mem is not None and need > mem:
        raise SizeError(f"{flag} {'x'.join(map(str, dims))} needs at least {human_bytes(need)} for its input and "
                        f"output maps alone (float32, before any layer), more than this machine's "
                        f"{human_bytes(mem)}; choose a smaller {flag} (the model's training size is typical)")
    return dims


def estimate_params(name: str, in_channels: int, num_classes: int, kwargs: Dict[str, Any]) -> Optional[int]:
    """Parameter count of ``create_model(name, ...)`` built on the meta device (nothing allocated); None when the
    network cannot be built there (the check is then skipped)."""
    import torch

    from .registry import model_info
    try:
        factory = model_info(name).factory
        with torch.device("meta"):
            net = factory(in_channels=in_channels, num_classes=num_classes, **dict(kwargs or {}))
    except Exception:  # noqa: BLE001 - the real build reports the model's own errors
        return None
    return sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers())


def check_model_memory(name: str, in_channels: int = 3, num_classes: int = 1,
                       kwargs: Optional[Dict[str, Any]] = None, where: str = "") -> Optional[int]:
    """Refuse (``SizeError``, one line with the number) a network whose float32 weights alone exceed this
    machine's memory, before anything is allocated. Returns the parameter count (None when unknown)."""
    try:
        n = estimate_params(name, int(in_channels or 3), int(num_classes or 1), dict(kwargs or {}))
    except (TypeError, ValueError):  # odd arguments: the real build reports them
        n = None
    mem = machine_memory_bytes()
    if n is not None and mem is not None and 4 * n > mem:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(dict(kwargs or {}).items()))
        raise SizeError(f"{where + ': ' if where else ''}{name}({args}) has {n:,} parameters, "
                        f"{human_bytes(4 * n)} of float32 weights alone, more than this machine's {human_bytes(mem)}; "
                        "nothing was allocated (check the model arguments)")
    return n
