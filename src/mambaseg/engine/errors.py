"""Errors the engine raises for bad user input. The CLI prints their message (no traceback) and exits with 2."""

from __future__ import annotations

import difflib
from typing import Iterable


class MambasegUserError(ValueError):
    """Bad input from the user (config, path, checkpoint); the message names the problem and the fix."""


class RunDirExistsError(MambasegUserError, FileExistsError):
    """The run directory already holds a run and neither ``--resume`` nor a new ``--run_dir`` was given."""


class TrainingDivergedError(RuntimeError):
    """Training stopped on a non-finite loss; the message names the step, the batch's files and what was
    non-finite (input, output or loss). The CLI prints it as one line and exits with 1."""


class CheckpointMismatchError(MambasegUserError):
    """A checkpoint was written for another model, class count or channel count."""


def near_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """``"; did you mean 'a', 'b'?"`` or ``""``."""
    near = difflib.get_close_matches(str(word), list(choices), n=n, cutoff=0.5)
    return f"; did you mean {', '.join(repr(m) for m in near)}?" if near else ""
