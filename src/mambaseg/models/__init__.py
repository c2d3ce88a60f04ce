"""Networks: shared blocks, one file per network, and the registry (``create_model``, ``list_models``)."""

from .registry import create_model, list_models, model_info, register_model, UnknownModelError
from .pretrained import load_pretrained, PretrainedReport, PretrainedMismatchError
from .hub import from_pretrained, save_pretrained

# Each network file registers itself on import. Keep this list in one place.
import importlib as _importlib

for _m in ("vmunet", "vmunet_v2", "mamba_unet", "hmt_unet", "unet", "att_unet", "unet_pp", "swin_unet",
           "msvm_unet", "swin_umamba", "swin_umamba_d", "h_vmunet",
           "umamba_bot", "umamba_enc", "lightm_unet", "ultralight_vm_unet", "lkm_unet"):
    try:
        _importlib.import_module(f"{__name__}.{_m}")
    except ModuleNotFoundError as _e:  # a network file that does not exist yet
        if _e.name != f"{__name__}.{_m}":
            raise

__all__ = ["create_model", "list_models", "model_info", "register_model", "load_pretrained",
           "PretrainedReport", "PretrainedMismatchError", "UnknownModelError", "from_pretrained", "save_pretrained"]
