"""The base class of every error that is the user's to fix, and the "did you mean" suffix such errors carry."""

from __future__ import annotations

import difflib
from typing import Iterable, List

__all__ = ["MambasegUserError", "close_matches", "near_matches"]


class MambasegUserError(ValueError):
    """Bad input from the user (config, path, checkpoint); the message names the problem and the fix."""


def close_matches(word: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.5) -> List[str]:
    """The up to ``n`` entries of ``choices`` closest to ``word`` (difflib ratio >= ``cutoff``), best first."""
    return difflib.get_close_matches(str(word), list(choices), n=n, cutoff=cutoff)


def near_matches(word: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.5) -> str:
    """``"; did you mean 'a', 'b'?"`` or ``""``."""
    near = close_matches(word, choices, n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(repr(m) for m in near)}?" if near else ""
