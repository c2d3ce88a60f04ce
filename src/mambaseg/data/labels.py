"""Label names (background first) of the shipped data readers: a fact about data sets, read by the engine (the
class names of a run's report) and by export (the model card)."""

from __future__ import annotations

from typing import List, Optional

from .acdc import ACDC_CLASSES
from .synapse import SYNAPSE_CLASSES

__all__ = ["dataset_class_names"]

_CLASS_NAMES = {"acdc": ACDC_CLASSES, "synthetic-cardiac": ACDC_CLASSES, "synapse": SYNAPSE_CLASSES,
                "isic": ["background", "lesion"], "synthetic-skin": ["background", "lesion"],
                "polyp": ["background", "polyp"], "synthetic-polyp": ["background", "polyp"]}


def dataset_class_names(dataset: Optional[str], num_classes: int) -> Optional[List[str]]:
    """Label names (background first) of the shipped data readers, or None when unknown."""
    names = _CLASS_NAMES.get(str(dataset or "").lower())
    return list(names) if names and len(names) == num_classes else None
