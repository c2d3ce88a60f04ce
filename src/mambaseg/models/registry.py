"""Model registry: ``register_model``, ``list_models``, ``create_model`` (timm-style).

Every network file registers one small factory per named configuration at its bottom::

    @register_model("vmunet", paper="VM-UNet (Ruan & Xiang, 2024)", default_size=256)
    def vmunet(in_channels=3, num_classes=1, **kwargs):
        return VMUNet(in_channels=in_channels, num_classes=num_classes, **kwargs)

``create_model(name, in_channels=3, num_classes=1, pretrained=None, **kwargs)`` builds it; ``pretrained`` is a
path to a classification checkpoint handed to ``mambaseg.models.load_pretrained``.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch.nn as nn

from mambaseg.utils.convert import as_size
from mambaseg.utils.errors import near_matches

from .contract import SegmentationNetwork
from .features import FeatureEncoder
from .pretrained import load_pretrained

__all__ = ["register_model", "list_models", "create_model", "model_info", "ModelInfo", "UnknownModelError",
           "UnknownModelKwargError", "model_kwarg_names"]


class UnknownModelError(ValueError):
    pass


class UnknownModelKwargError(TypeError, ValueError):
    """A keyword argument that the model's factory (and the class it builds) does not take."""


@dataclass
class ModelInfo:
    name: str
    factory: Callable[..., nn.Module]
    paper: str = ""
    default_size: Union[int, Tuple[int, ...]] = 256  # the input size the paper trained at (int: every axis)
    family: str = "mamba"            # "mamba" or "baseline"
    description: str = ""
    extra: dict = field(default_factory=dict)
    model_class: Optional[type] = None  # the class the factory builds (its return annotation)

    @property
    def spatial_dims(self) -> int:
        """2 or 3: the registration's ``spatial_dims`` (a class that takes ``spatial_dims`` as an argument, such as
        LightM-UNet, is registered once per number of axes), else the built class's."""
        dims = self.extra.get("spatial_dims")
        if dims is None:
            dims = self.model_class.spatial_dims if self.model_class is not None else 2
        return int(dims)

    @property
    def default_input_size(self) -> Tuple[int, ...]:
        """``default_size`` as one int per spatial axis."""
        return as_size(self.default_size, self.spatial_dims)


_REGISTRY: Dict[str, ModelInfo] = {}


def model_class(factory: Callable) -> Optional[type]:
    """The class a factory builds, from its return annotation (``-> VMUNet``), or None."""
    try:
        ret = inspect.signature(factory).return_annotation
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return None
    if isinstance(ret, str):
        ret = getattr(factory, "__globals__", {}).get(ret)
    return ret if inspect.isclass(ret) else None


def register_model(name: str, *, paper: str = "", default_size: Optional[int] = None, family: str = "mamba",
                   description: str = "", **extra):
    """Register ``fn(in_channels, num_classes, **kwargs)`` under ``name``. The default input size is the built
    class's ``default_input_size`` (the model contract, stored once); ``default_size`` is only for a class that
    sets none at class level (one that contradicts the class attribute is refused)."""
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        cls = model_class(fn)
        own = cls.class_default_size() if cls is not None and issubclass(cls, SegmentationNetwork) else None
        if own is not None and extra.get("spatial_dims", len(own)) != len(own):
            own = None  # the class's default is for its other number of axes (lightm_unet_3d on LightMUNet)
        if own is not None and default_size is not None and as_size(default_size, len(own)) != own:
            raise ValueError(f"model {name!r}: register_model(default_size={default_size!r}) contradicts "
                             f"{cls.__name__}.default_input_size = {own}; the class attribute is the one home "
                             "of the default size, drop default_size=...")
        size = default_size if own is None else (own[0] if len(set(own)) == 1 else own)
        _REGISTRY[name] = ModelInfo(name, fn, paper, 256 if size is None else size, family,
                                    description or (fn.__doc__ or "").strip().split("\n")[0], extra, cls)
        return fn
    return deco


def list_models(pattern: Optional[str] = None, family: Optional[str] = None) -> List[str]:
    """Registered model names, sorted; ``pattern`` is a shell-style wildcard (``"vmunet*"``)."""
    names = sorted(n for n, i in _REGISTRY.items() if family is None or i.family == family)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def model_info(name: str) -> ModelInfo:
    if name not in _REGISTRY:
        hint = near_matches(name, _REGISTRY, cutoff=0.4)
        raise UnknownModelError(f"unknown model {name!r}{hint} Registered models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


_FIXED = ("self", "in_channels", "num_classes", "pretrained")


def _named_params(fn) -> Tuple[List[str], bool]:
    """(keyword-passable parameter names, whether ``fn`` also takes ``**kwargs``)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return [], True
    names = [p.name for p in sig.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in _FIXED]
    return names, any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def model_kwarg_names(name: str) -> Optional[List[str]]:
    """The keyword arguments ``create_model(name, **kwargs)`` accepts (besides ``in_channels``, ``num_classes``,
    ``pretrained``), from the factory's signature and, when the factory forwards ``**kwargs``, the signature of
    the class named in its return annotation. ``None`` when they cannot be derived (then nothing is checked)."""
    factory = model_info(name).factory
    names, var = _named_params(factory)
    if var:
        ret = model_class(factory)
        if ret is None:
            return None
        more, var = _named_params(ret.__init__)
        if var:
            return None
        names += [n for n in more if n not in names]
    return sorted(names)


def _check_kwargs(name: str, kwargs: Dict) -> None:
    valid = model_kwarg_names(name)
    if valid is None:
        return
    for key in kwargs:
        if key not in valid:
            hint = near_matches(key, valid)
            raise UnknownModelKwargError(f"model {name!r} has no keyword {key!r}{hint} Valid keywords: "
                                         f"{', '.join(valid) or '(none)'}")


def create_model(name: str, in_channels: int = 3, num_classes: int = 1, pretrained: Optional[str] = None,
                 features_only: bool = False, out_indices=None, **kwargs) -> nn.Module:
    """Build a registered model. Returns a plain ``nn.Module`` mapping (B, in_channels, H, W) to logits
    (B, num_classes, H, W). ``pretrained``: path to a classification checkpoint for the encoder (see
    ``load_pretrained``); the load report is kept on ``model.pretrained_report``.

    ``features_only=True`` returns the encoder alone (:class:`mambaseg.models.backbone.FeatureEncoder`): its
    forward gives the multi-scale maps listed in its ``feature_info`` (``out_indices`` selects stages).
    The arguments are kept on ``model.model_args`` (what ``save_pretrained`` writes)."""
    if features_only:
        full = create_model(name, in_channels, num_classes, pretrained, **kwargs)
        enc = FeatureEncoder(full, out_indices)
        enc.model_name = name
        return enc
    info = model_info(name)
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    _check_kwargs(name, kwargs)
    model = info.factory(in_channels=in_channels, num_classes=num_classes, **kwargs)
    model.model_name = name
    model.model_args = _bound_args(info.factory, dict(in_channels=in_channels, num_classes=num_classes, **kwargs))
    if pretrained:
        model.pretrained_report = load_pretrained(model, pretrained)
    return model


def _bound_args(factory: Callable, given: dict) -> dict:
    """Every argument of the factory call (given ones plus the factory's defaults), ``**kwargs`` flattened."""
    try:
        sig = inspect.signature(factory)
        bound = sig.bind(**given)
    except (TypeError, ValueError):
        return dict(given)
    bound.apply_defaults()
    out = {}
    for k, v in bound.arguments.items():
        if sig.parameters[k].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(v)
        elif sig.parameters[k].kind is not inspect.Parameter.VAR_POSITIONAL:
            out[k] = v
    return out
