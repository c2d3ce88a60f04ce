"""``mamba_ssm`` backend: mamba-ssm's own CUDA kernel, used only if that package happens to be installed.

mambaseg never depends on mamba-ssm (it needs nvcc and an exact torch/CUDA pair to build). Where it imports,
``backend="mamba_ssm"`` hands CUDA tensors to ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``,
which has the same signature and semantics (fp32 A, D and delta_bias; last-dim-contiguous inputs).
"""

from __future__ import annotations

import torch

from .selective_scan import register_backend

_fn = None
_err = ""


def _load():
    global _fn, _err
    if _fn is None and not _err:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
            _fn = selective_scan_fn
        except Exception as e:  # noqa: BLE001 - not installed, or its CUDA extension did not build
            _err = f"mamba_ssm is not importable ({type(e).__name__}: {e})"
    return _fn


def selective_scan_mamba_ssm(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False):
    fn = _load()
    c = lambda t: None if t is None else t.contiguous()  # noqa: E731
    f = lambda t: None if t is None else t.float().contiguous()  # noqa: E731
    return fn(c(u), c(delta), f(A), c(B), c(C), f(D), c(z), f(delta_bias), delta_softplus, return_last_state)


register_backend("mamba_ssm", selective_scan_mamba_ssm, devices=("cuda",),
                 is_available=lambda: torch.cuda.is_available() and _load() is not None,
                 why_unavailable=lambda: _err or "no CUDA device", priority=25)
