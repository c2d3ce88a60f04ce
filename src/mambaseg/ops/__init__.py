"""Operators: the selective scan (one file per backend) and VMamba's 2D cross-scan."""

from .selective_scan import (BackendUnavailableError, ScanCall, intercept_scans, record_scans, available_backends, get_default_backend,
                             resolve_backend, selective_scan, set_default_backend, use_backend)
from .reference import selective_scan_reference
from .cross_scan import cross_merge, cross_scan
from .cross_selective_scan import cross_selective_scan, register_fused
from . import scan_torch as _scan_torch  # noqa: F401  (registers the "torch" backend)
from . import scan_native as _scan_native  # noqa: F401  (registers the "native" backend)
from . import scan_triton as _scan_triton  # noqa: F401  (registers "triton" when Triton imports)
from . import scan_mamba_ssm as _scan_mamba_ssm  # noqa: F401  (registers "mamba_ssm" if installed)

__all__ = ["selective_scan", "selective_scan_reference", "available_backends", "set_default_backend",
           "get_default_backend", "use_backend", "resolve_backend", "BackendUnavailableError",
           "cross_scan", "cross_merge", "cross_selective_scan", "register_fused", "record_scans", "intercept_scans", "ScanCall"]
