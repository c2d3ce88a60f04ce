"""Segmentation losses taking logits: BCE+Dice, CE+Dice, nnU-Net's DC+CE and region DC+BCE (N-D), deep
supervision, and a name registry."""
from .nnunet import DiceCELoss, RegionDiceBCELoss, region_targets
from .segmentation import (
    VMUNETV2_GT_WEIGHTS,
    BceDiceLoss,
    CeDiceLoss,
    DeepSupervisionLoss,
    build_loss,
    describe_losses,
    list_losses,
)

__all__ = [
    "VMUNETV2_GT_WEIGHTS",
    "BceDiceLoss",
    "CeDiceLoss",
    "DeepSupervisionLoss",
    "DiceCELoss",
    "RegionDiceBCELoss",
    "build_loss",
    "region_targets",
    "describe_losses",
    "list_losses",
]
