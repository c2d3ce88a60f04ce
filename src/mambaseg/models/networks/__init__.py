"""One file per network; each imports only :mod:`mambaseg.models.blocks` and the models' infrastructure (registry,
backbone, hub, pretrained loaders), never another network, and registers its factories on import."""

from . import (att_unet, h_vmunet, hmt_unet, lightm_unet, lkm_unet, mamba_unet, msvm_unet, nnunet, swin_umamba,
               swin_umamba_d, swin_unet, ultralight_vm_unet, umamba_bot, umamba_enc, unet, unet_pp, vmunet, vmunet_v2)

__all__ = ["att_unet", "h_vmunet", "hmt_unet", "lightm_unet", "lkm_unet", "mamba_unet", "msvm_unet", "nnunet",
           "swin_umamba", "swin_umamba_d", "swin_unet", "ultralight_vm_unet", "umamba_bot", "umamba_enc", "unet",
           "unet_pp", "vmunet", "vmunet_v2"]
