"""Configs name code only from where they should.

A config file is what people share, and jsonargparse imports whatever a ``class_path`` or a callable value names
(``trainer.callbacks: LambdaCallback(on_fit_start: os.system)`` imports ``os.system``). While a mambaseg command
parses its config (``config_import_policy``), an import path given as a VALUE resolves only inside
``ALLOWED_PACKAGES`` and what the user adds with ``--allow_import PKG[,PKG...]``; anything else is refused in one
line (``ConfigImportError``) before it is imported. Import paths that come from code (type annotations) are not
values and are not affected.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterable, Iterator, List, Sequence, Tuple

from .errors import MambasegUserError

__all__ = ["ALLOWED_PACKAGES", "ALLOW_FLAG", "ConfigImportError", "config_import_policy", "pop_allow_flags",
           "denied_import_message"]

ALLOWED_PACKAGES: Tuple[str, ...] = ("lightning", "torch", "torchmetrics", "mambaseg")
ALLOW_FLAG = "--allow_import"
_NEVER = ("jsonargparse",)  # naming it would let a value change the policy itself


class ConfigImportError(MambasegUserError):
    """A config value names code outside the allow-list."""


def pop_allow_flags(args: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Split ``--allow_import a,b`` / ``--allow_import=a`` out of ``args``: (remaining args, packages)."""
    rest, extra, i = [], [], 0
    args = list(args)
    while i < len(args):
        a = str(args[i])
        if a == ALLOW_FLAG and i + 1 < len(args):
            extra += [p.strip() for p in str(args[i + 1]).split(",") if p.strip()]
            i += 2
            continue
        if a.startswith(ALLOW_FLAG + "="):
            extra += [p.strip() for p in a.split("=", 1)[1].split(",") if p.strip()]
            i += 1
            continue
        rest.append(args[i])
        i += 1
    for p in extra:
        never = p.split(".")[0] in _NEVER
        if not all(part.isidentifier() for part in p.split(".")) or never:
            raise ConfigImportError(f"{ALLOW_FLAG} {p!r}: give a package or module name (e.g. {ALLOW_FLAG} "
                                    f"my_callbacks){'; jsonargparse cannot be allowed' if never else ''}")
    return rest, extra


def _allowed(path: str, allowed: Iterable[str]) -> bool:
    return any(path == a or path.startswith(a + ".") for a in allowed)


def denied_import_message(path: str, allowed: Sequence[str] = ALLOWED_PACKAGES) -> str:
    top = path.split(".")[0]
    return (f"the config names {path!r}, which is outside the packages a config may name code from "
            f"({', '.join(allowed)}); nothing was imported. If you trust this config, allow it with "
            f"{ALLOW_FLAG} {top}")


_DENIED = re.compile(r"Importing '([\w.]+)' is not allowed")


def denied_path(message: str):
    """The import path a jsonargparse error message says was denied, or None."""
    m = _DENIED.search(str(message))
    return m.group(1) if m else None


@contextlib.contextmanager
def config_import_policy(extra: Sequence[str] = ()) -> Iterator[None]:
    """Within the block, jsonargparse resolves import paths given as values only inside the allow-list."""
    allowed = tuple(dict.fromkeys([*ALLOWED_PACKAGES, *extra]))
    try:
        from jsonargparse._common import parsing_settings
        import jsonargparse
        saved = {k: parsing_settings[k] for k in ("import_path_verdicts", "import_paths_enforced")}
        jsonargparse.set_parsing_settings(import_path_denylist=["*"], import_path_allowlist=list(allowed))
    except (ImportError, KeyError, TypeError):  # an older jsonargparse without the import-path policy
        with _patched_import_object(allowed):
            yield
        return
    try:
        yield
    finally:
        parsing_settings.update(saved)


@contextlib.contextmanager
def _patched_import_object(allowed: Tuple[str, ...]) -> Iterator[None]:
    import sys
    mods = [m for name, m in list(sys.modules.items()) if name.startswith("jsonargparse") and m is not None
            and callable(getattr(m, "import_object", None))]
    originals = {m: m.import_object for m in mods}

    def guarded(original):
        def import_object(name, *args, **kwargs):
            if isinstance(name, str) and not _allowed(name, allowed) and kwargs.get("check_path", True):
                raise ConfigImportError(denied_import_message(name, allowed))
            return original(name, *args, **kwargs)
        return import_object

    for m, orig in originals.items():
        m.import_object = guarded(orig)
    try:
        yield
    finally:
        for m, orig in originals.items():
            m.import_object = orig
