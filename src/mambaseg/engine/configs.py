"""The shipped YAML configs: where they are, their names, and a config argument resolved to a path (a file as
given, else the shipped config of that name). The engine's run API, ``compare``, ``demo`` and the CLI use it."""

from __future__ import annotations

import os
from typing import List

from .errors import near_matches

__all__ = ["config_dir", "list_configs", "resolve_config_path"]


def config_dir() -> str:
    """The folder of the shipped YAML configs (package data, present after a non-editable install too)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def list_configs() -> List[str]:
    d = config_dir()
    return sorted(f[:-5] for f in os.listdir(d) if f.endswith(".yaml")) if os.path.isdir(d) else []


def resolve_config_path(value: str) -> str:
    """A config path as given if it exists, else the shipped config of that name (``demo``, ``configs/demo.yaml``)."""
    if os.path.exists(value):
        return value
    name = os.path.basename(value)
    name = name[:-5] if name.endswith(".yaml") else name[:-4] if name.endswith(".yml") else name
    candidate = os.path.join(config_dir(), name + ".yaml")
    if os.path.isfile(candidate):
        return candidate
    raise FileNotFoundError(f"config {value!r} not found (neither a file nor a shipped config"
                            f"{near_matches(name, list_configs())}). Shipped configs: {', '.join(list_configs())}")
