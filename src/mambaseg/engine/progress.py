"""The training progress bar: Lightning's, without ``v_num``.

A run is named by its run directory, not by a logger version; after a resume the CSV logger's version is
``resume-<date>-<time>`` and Lightning showed its last four characters (``v_num=5302``), which mean nothing.
"""

from __future__ import annotations

from typing import Any, List, Sequence

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

__all__ = ["RunProgressBar", "RunRichProgressBar", "progress_bar_callbacks"]


class _NoVersion:
    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class RunProgressBar(_NoVersion, TQDMProgressBar):
    """Lightning's TQDM bar without v_num."""


class RunRichProgressBar(_NoVersion, RichProgressBar):
    """Lightning's rich bar without v_num."""


def progress_bar_callbacks(trainer_cfg: Any, callbacks: Sequence[Any]) -> List[Any]:
    """The bar Lightning would pick (rich when installed, else TQDM) without v_num; none when the progress bar is
    off or the config brings its own."""
    enabled = (trainer_cfg or {}).get("enable_progress_bar")
    if enabled is False or any(isinstance(c, ProgressBar) for c in callbacks):
        return []
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE
    return [RunRichProgressBar() if _RICH_AVAILABLE else RunProgressBar()]
