"""Fix hints in the syntax the user typed.

Error messages of the data layer and the engine name the option that fixes the problem. A Python user wants
``mask_threshold=128``; a command-line user wants ``--data.dataset_kwargs '{"mask_threshold": 128}'``. The
``mambaseg`` command switches the style to ``"cli"`` for the duration of a command (:func:`hint_style`); the
default is ``"python"``. The style is a context variable (``contextvars``), not a module global: it holds inside
the ``with`` block of the calling thread only, so a library call running beside a CLI command in another thread
keeps Python syntax. Work handed to a thread pool inside the block runs in a copy of the caller's context
(``data.check`` does; see :func:`in_caller_context`).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from typing import Any, Callable, Iterator

__all__ = ["hint_style", "current_style", "in_caller_context", "reader_arg", "data_arg", "model_arg", "option"]

_STYLE: contextvars.ContextVar = contextvars.ContextVar("mambaseg_hint_style", default="python")


def current_style() -> str:
    return _STYLE.get()


def in_caller_context(fn: Callable) -> Callable:
    """``fn`` wrapped to run in a copy of the calling thread's context (its hint style), for a thread pool."""
    ctx = contextvars.copy_context()
    return lambda *args: ctx.copy().run(fn, *args)


@contextlib.contextmanager
def hint_style(style: str) -> Iterator[None]:
    """Use ``style`` (``"python"`` or ``"cli"``) for the hints built inside the block."""
    if style not in ("python", "cli"):
        raise ValueError(f"hint style must be 'python' or 'cli', got {style!r}")
    token = _STYLE.set(style)
    try:
        yield
    finally:
        _STYLE.reset(token)


def _json(value: Any) -> str:
    try:
        return json.dumps(value)
    except TypeError:
        return json.dumps(str(value))


def _cli_value(value: Any) -> str:
    s = value if isinstance(value, str) else _json(value)
    return s if s and all(c.isalnum() or c in "._-/+" for c in s) else f"'{s}'"


def reader_arg(name: str, value: Any, text: str = None) -> str:
    """A keyword of the data reader: ``name=value`` or ``--data.dataset_kwargs '{"name": value}'``.
    ``text`` replaces the rendered value (for templates such as ``{(r, g, b): class}``)."""
    if current_style() == "cli":
        v = text if text is not None else _json(value)
        return f"--data.dataset_kwargs '{{\"{name}\": {v}}}'"
    return f"{name}={text if text is not None else repr(value)}"


def data_arg(name: str, value: Any) -> str:
    """An argument of the data module (``SegDataModule``): ``name=value`` or ``--data.name value``."""
    return option(f"data.{name}", value)


def model_arg(name: str, value: Any) -> str:
    """An argument of the model module (``SegmentationModule``): ``name=value`` or ``--model.name value``."""
    return option(f"model.{name}", value)


def option(dotted: str, value: Any) -> str:
    """``--a.b value`` (CLI) or ``b=value`` (Python)."""
    if current_style() == "cli":
        return f"--{dotted} {_cli_value(value)}"
    return f"{dotted.rsplit('.', 1)[-1]}={value!r}"
