"""One folder per trained model: ``save_pretrained`` / ``from_pretrained`` (segmentation_models_pytorch and
huggingface_hub ``ModelHubMixin`` style), no pickle anywhere.

A folder holds::

    config.json         registry name, every factory argument (in/out channels included), input size,
                        preprocessing, class names, threshold, mambaseg version (and optionally the training run)
    model.safetensors   the state_dict (safetensors: tensors only, nothing executable)
    README.md           model card (written by ``mambaseg export --format folder``; optional)

``from_pretrained(dir)`` rebuilds the network with ``create_model(config["architecture"], **config["model_args"])``
and loads the weights with ``strict=True``. Every model class has the same two methods through
:class:`PretrainedMixin` (``model.save_pretrained(dir)``, ``VMUNet.from_pretrained(dir)``).

``push_to_hub`` / ``pull_from_hub`` use huggingface_hub when it is installed (optional dependency).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from mambaseg.utils.convert import as_size
from mambaseg.utils.fileio import atomic_path, atomic_write_text
from mambaseg import __version__
from .registry import create_model, model_info

__all__ = ["save_pretrained", "from_pretrained", "read_config", "is_pretrained_folder", "PretrainedMixin",
           "PretrainedFolderError", "push_to_hub", "pull_from_hub", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "mambaseg-pretrained"
FORMAT_VERSION = 1


class PretrainedFolderError(ValueError):
    """A folder that is not a readable mambaseg pretrained folder (the message names the problem)."""


def _jsonable(v, where: str):
    if isinstance(v, (str, bool, int, float)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x, where) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x, where) for k, x in v.items()}
    raise PretrainedFolderError(f"{where} = {v!r} ({type(v).__name__}) cannot be written to config.json; "
                                f"save_pretrained supports models built from JSON-able arguments (numbers, strings, "
                                f"lists, dicts)")


def _size2(s) -> Optional[List[int]]:
    if s is None:
        return None
    return list(as_size(s, 2 if isinstance(s, int) else len(s)))  # an int is 2D; a tuple keeps its axes


def save_pretrained(model: nn.Module, save_directory: Union[str, os.PathLike], *, input_size=None,
                    preprocessing: Optional[Dict[str, Any]] = None, class_names: Optional[Sequence[str]] = None,
                    threshold: Optional[float] = None, training: Optional[Dict[str, Any]] = None,
                    model_card: Optional[str] = None, overwrite: bool = False, output: Optional[str] = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``README.md`` if ``model_card``) into ``save_directory``.

    ``model`` must come from ``create_model`` (it carries its registry name and arguments). ``input_size``:
    the training input size (default: the registry's ``default_size``); ``preprocessing``: e.g.
    ``{"preset": "isic", "image_size": 256}`` (a ``mambaseg.data.transforms`` preset, applied by ``predict``);
    ``class_names``: one per label including background (default: ``background, class_1, ...``). Existing files
    are not overwritten unless ``overwrite``. ``output``: how the logits become labels, when not the default rule
    (sigmoid for one output channel, softmax otherwise), e.g. one sigmoid per region. Returns the folder."""
    from safetensors.torch import save_model


    name = getattr(model, "model_name", None)
    args = getattr(model, "model_args", None)
    if not name or args is None:
        raise PretrainedFolderError(f"{type(model).__name__} was not built with mambaseg.models.create_model, so its "
                                    f"registry name and arguments are unknown; build it with create_model(name, ...)")
    if type(model).__name__ == "FeatureEncoder":
        raise PretrainedFolderError("save_pretrained saves whole networks; save the full model, then build the "
                                    "encoder with create_model(name, features_only=True) and load_from_full")
    info = model_info(name)
    out_ch = int(args.get("num_classes", getattr(model, "num_classes", 1)))
    n_labels = 2 if out_ch == 1 else out_ch
    if class_names is None:
        class_names = ["background"] + [f"class_{k}" for k in range(1, n_labels)]
    class_names = [str(c) for c in class_names]
    if len(class_names) != n_labels:
        raise PretrainedFolderError(f"class_names has {len(class_names)} entries but the model predicts {n_labels} "
                                    f"labels (background included): {class_names}")
    size = _size2(input_size) or _size2(getattr(model, "img_size", None))
    if size is None:
        size = (list(model.default_input_size) if getattr(model, "spatial_dims", 2) == 3
                else [info.default_size] * 2)
    cfg = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "mambaseg_version": __version__,
        "architecture": name,
        "model_class": type(model).__name__,
        "model_args": _jsonable(dict(args), "model_args"),
        "in_channels": int(args.get("in_channels", getattr(model, "in_channels", 3))),
        "out_channels": out_ch,
        "num_classes": n_labels,
        "class_names": class_names,
        "input_size": size,
        "preprocessing": _jsonable(dict(preprocessing or {}), "preprocessing"),
        "threshold": float(0.5 if threshold is None else threshold),
        "output": output or "logits (sigmoid for one output channel, softmax otherwise)",
    }
    if training:
        cfg["training"] = _jsonable(dict(training), "training")
    d = Path(save_directory)
    d.mkdir(parents=True, exist_ok=True)
    targets = [d / CONFIG_NAME, d / WEIGHTS_NAME] + ([d / "README.md"] if model_card else [])
    if not overwrite:
        taken = [str(p) for p in targets if p.exists()]
        if taken:
            raise FileExistsError(f"{', '.join(taken)} exist(s); choose another folder or pass overwrite=True")
    was = model.training
    with atomic_path(str(d / WEIGHTS_NAME)) as tmp:
        save_model(model.eval(), tmp, metadata={"format": "pt", "architecture": name})
    model.train(was)
    atomic_write_text(str(d / CONFIG_NAME), json.dumps(cfg, indent=2) + "\n")
    if model_card:
        atomic_write_text(str(d / "README.md"), model_card)
    return d


def is_pretrained_folder(path: Union[str, os.PathLike]) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG_NAME).is_file()


def not_a_model_folder(path: str) -> str:
    """One line saying what the folder ``path`` (given as ``--ckpt``) lacks to be a model: its ``config.json``
    (missing, or not a regular file), with the checkpoint a run folder holds when it is one."""
    p = Path(path)
    cfg = p / CONFIG_NAME
    what = ("a pretrained folder holds config.json + model.safetensors (`mambaseg export --format folder`); a "
            "training run's checkpoint is RUN/checkpoints/best.ckpt")
    if cfg.exists() or cfg.is_symlink():
        kind = ("a folder" if cfg.is_dir() else "a broken link" if not cfg.exists() else
                "not a regular file (a pipe, socket or device)")
        return f"--ckpt {path!r} is a folder whose {CONFIG_NAME} is {kind}; {what}"
    ckpts = sorted(p.glob("checkpoints/*.ckpt")) or sorted(p.glob("*.ckpt"))
    hint = f"; did you mean --ckpt {str(ckpts[0])!r}?" if ckpts else ""
    return f"--ckpt {path!r} is a folder without {CONFIG_NAME}, so not a pretrained folder; {what}{hint}"


def read_config(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """``config.json`` of a pretrained folder, checked (one clear error naming the problem)."""
    p = Path(path)
    if not p.is_dir():
        raise PretrainedFolderError(f"{str(p)!r} is not a folder (expected one written by save_pretrained or "
                                    f"`mambaseg export --format folder`)")
    f = p / CONFIG_NAME
    if not f.is_file():
        raise PretrainedFolderError(f"{str(p)!r} has no {CONFIG_NAME}; it is not a mambaseg pretrained folder")
    try:
        cfg = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise PretrainedFolderError(f"cannot read {f}: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise PretrainedFolderError(f"{f} is not a mambaseg config (no \"format\": \"{FORMAT}\")")
    for k in ("architecture", "model_args"):
        if k not in cfg:
            raise PretrainedFolderError(f"{f} lacks {k!r}")
    if int(cfg.get("format_version", 0)) > FORMAT_VERSION:
        raise PretrainedFolderError(f"{f} has format_version {cfg['format_version']}, newer than this mambaseg "
                                    f"reads ({FORMAT_VERSION}); upgrade mambaseg")
    return cfg


def from_pretrained(path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu",
                    strict: bool = True) -> nn.Module:
    """Rebuild and load a model saved by :func:`save_pretrained` (no pickle: JSON + safetensors). The config is
    kept on ``model.pretrained_config``. The model is returned in eval mode."""
    from safetensors.torch import load_model

    cfg = read_config(path)
    w = Path(path) / WEIGHTS_NAME
    if not w.is_file():
        raise PretrainedFolderError(f"{str(path)!r} has no {WEIGHTS_NAME}")
    from .limits import check_model_memory  # an absurd config.json is refused before anything is allocated
    args = cfg["model_args"] if isinstance(cfg["model_args"], dict) else {}
    margs = {k: v for k, v in args.items() if k not in ("in_channels", "num_classes")}
    check_model_memory(cfg["architecture"], args.get("in_channels", 3), args.get("num_classes", 1), margs,
                       where=f"{Path(path) / CONFIG_NAME}")
    model = create_model(cfg["architecture"], **cfg["model_args"])
    try:
        missing, unexpected = load_model(model, str(w), strict=False, device="cpu")
    except Exception as e:  # a corrupt file or a shape mismatch
        raise PretrainedFolderError(f"cannot load {w} into {cfg['architecture']} built from config.json: "
                                    f"{str(e).splitlines()[0]}") from None
    # a module shared by two parents (nnMamba's Mamba layers) has every tensor under two names; safetensors stores
    # one and may call the other "unexpected" although it is the model's own key (its value was loaded)
    own = model.state_dict()
    unexpected = [k for k in unexpected if k not in own]
    if strict and (missing or unexpected):
        raise PretrainedFolderError(f"{w} does not match {cfg['architecture']} built from config.json: missing "
                                    f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.to(map_location).eval()
    model.pretrained_config = cfg
    return model


class PretrainedMixin:
    """``model.save_pretrained(dir, ...)`` and ``Class.from_pretrained(dir)`` on every mambaseg network."""

    def save_pretrained(self, save_directory, **kwargs) -> Path:
        return save_pretrained(self, save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, path, map_location="cpu", strict: bool = True):
        model = from_pretrained(path, map_location=map_location, strict=strict)
        if cls is not PretrainedMixin and not isinstance(model, cls):
            raise PretrainedFolderError(f"{str(path)!r} holds a {type(model).__name__} "
                                        f"({model.pretrained_config['architecture']}), not a {cls.__name__}; use "
                                        f"mambaseg.models.from_pretrained(path)")
        return model


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError("pushing to / pulling from the Hugging Face Hub needs huggingface_hub: "
                          "pip install 'mambaseg[hub]' (or pip install huggingface_hub)") from None
    return huggingface_hub


def push_to_hub(folder: Union[str, os.PathLike], repo_id: str, **kwargs) -> str:
    """Upload a pretrained folder to the Hugging Face Hub (``huggingface_hub.upload_folder``)."""
    read_config(folder)
    hub = _hub()
    hub.create_repo(repo_id, exist_ok=True, **{k: v for k, v in kwargs.items() if k in ("token", "private")})
    return hub.upload_folder(repo_id=repo_id, folder_path=str(folder), **kwargs)


def pull_from_hub(repo_id: str, **kwargs) -> nn.Module:
    """Download a pretrained folder (``huggingface_hub.snapshot_download``; ``repo_id`` may also be a local folder)
    and load it."""
    if is_pretrained_folder(repo_id):
        return from_pretrained(repo_id)
    hub = _hub()
    return from_pretrained(hub.snapshot_download(repo_id=repo_id, **kwargs))
