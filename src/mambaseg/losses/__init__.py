"""Segmentation losses taking logits: BCE+Dice, CE+Dice, deep supervision, and a name registry."""
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
    "build_loss",
    "describe_losses",
    "list_losses",
]
