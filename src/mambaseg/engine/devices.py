"""Device checks done before any work: a GPU asked for on a machine without one is one clear line (exit 2), not a
traceback from deep inside torch or Lightning."""

from __future__ import annotations

from typing import Any

import torch

from .errors import MambasegUserError

__all__ = ["check_device", "check_accelerator"]


def _no_cuda_reason() -> str:
    build = torch.version.cuda
    return "this machine has no usable CUDA GPU" + ("" if build else f" (torch {torch.__version__} is a CPU-only build)")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def check_device(device: str, flag: str = "--device") -> torch.device:
    """``torch.device(device)`` if this machine has it, else ``MambasegUserError`` naming the fix."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise MambasegUserError(f"{flag} {device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MambasegUserError(f"{flag} {device}: {_no_cuda_reason()}; use {flag} cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise MambasegUserError(f"{flag} {device}: this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1}); "
                                    f"use one of them or {flag} cpu")
    elif dev.type == "mps" and not _mps_available():
        raise MambasegUserError(f"{flag} {device}: this machine has no Apple MPS device; use {flag} cpu")
    return dev


def check_accelerator(accelerator: Any, devices: Any = None, flag: str = "--trainer.accelerator") -> None:
    """Refuse ``gpu``/``cuda``/``mps`` (and more GPUs than exist) on a machine without them."""
    if not isinstance(accelerator, str):
        return  # an Accelerator instance, or unset: Lightning decides
    acc = accelerator.lower()
    if acc in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            if acc == "gpu" and _mps_available():
                return  # Lightning maps "gpu" to MPS on Apple machines
            raise MambasegUserError(f"{flag} {accelerator}: {_no_cuda_reason()}; use {flag} cpu (or auto, which "
                                    "takes a GPU when there is one)")
        n = torch.cuda.device_count()
        if isinstance(devices, int) and not isinstance(devices, bool) and devices > n:
            raise MambasegUserError(f"--trainer.devices {devices}: this machine has {n} CUDA GPU(s); use "
                                    f"--trainer.devices {n} or fewer")
    elif acc == "mps" and not _mps_available():
        raise MambasegUserError(f"{flag} mps: this machine has no Apple MPS device; use {flag} cpu")
