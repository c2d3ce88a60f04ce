"""Networks and what serves them.

* :mod:`mambaseg.models.blocks`: shared building blocks (no network, no registry);
* :mod:`mambaseg.models.networks`: one file per network, registered on import;
* infrastructure: :mod:`~mambaseg.models.registry` (``create_model``, ``list_models``), :mod:`~mambaseg.models.backbone`
  (``features_only`` encoders), :mod:`~mambaseg.models.hub` (``save_pretrained`` / ``from_pretrained``),
  :mod:`~mambaseg.models.pretrained` and :mod:`~mambaseg.models.pretrained_vmamba` (classification checkpoints).
"""

from .registry import create_model, list_models, model_info, register_model, UnknownModelError
from .pretrained import load_pretrained, PretrainedReport, PretrainedMismatchError
from .hub import from_pretrained, save_pretrained
from . import networks  # noqa: F401  (registers every network)

__all__ = ["create_model", "list_models", "model_info", "register_model", "load_pretrained",
           "PretrainedReport", "PretrainedMismatchError", "UnknownModelError", "from_pretrained", "save_pretrained"]
