"""Errors the engine raises for bad user input. The CLI prints their message (no traceback) and exits with 2."""

from __future__ import annotations

from mambaseg.utils.errors import MambasegUserError, close_matches, near_matches

__all__ = ["MambasegUserError", "RunDirExistsError", "CheckpointMismatchError", "close_matches", "near_matches"]


class RunDirExistsError(MambasegUserError, FileExistsError):
    """The run directory already holds a run and neither ``--resume`` nor a new ``--run_dir`` was given."""


class TrainingDivergedError(RuntimeError):
    """Training stopped on a non-finite loss; the message names the step, the batch's files and what was
    non-finite (input, output or loss). The CLI prints it as one line and exits with 1."""


class CheckpointMismatchError(MambasegUserError):
    """A checkpoint was written for another model, class count or channel count."""
