"""Write the per-case table (``per_case.csv``) and the summary (``summary.json``) of an evaluation.

``summary.json`` layout::

    {
      "settings": {...},          # aggregation, hd95_mode, empty_policy, spacing, classes ... (as given)
      "metrics":  {...},          # metric name -> value (class means and "<metric>/class_<c>")
      "counts":   {...}           # "count/..." entries of the metrics: cases, empty cases, excluded values
    }

Non-finite numbers (``nan``, ``inf``) are written as JSON ``null`` (strict JSON has no NaN); in the CSV they are
written as ``nan``/``inf``. ``write_summary`` writes exactly these two files into ``out_dir`` (created if
missing) and overwrites earlier versions of them only when ``overwrite=True`` (the default, for re-evaluation of a
run directory).
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np

from mambaseg.utils.convert import to_jsonable
from mambaseg.utils.fileio import atomic_open

__all__ = ["write_summary"]


def write_summary(rows: Sequence[Mapping[str, object]], summary: Mapping[str, object],
                  out_dir: Union[str, os.PathLike], settings: Mapping[str, object],
                  overwrite: bool = True) -> Tuple[Path, Path]:
    """Write ``per_case.csv`` and ``summary.json`` into ``out_dir``.

    Args:
        rows: per-case dicts (``SegmentationMetrics.per_case()``); columns are the union of the keys, ``case_id``
            first, then in first-seen order.
        summary: metric name -> value (``SegmentationMetrics.compute()``).
        out_dir: output folder (created if needed).
        settings: semantics of the numbers (``SegmentationMetrics.settings()``); must name at least
            ``aggregation``, ``hd95_mode``, ``empty_policy`` and ``spacing`` so the JSON is self-describing.
        overwrite: replace existing ``per_case.csv``/``summary.json`` in ``out_dir`` (default ``True``); with
            ``False`` an existing file raises ``FileExistsError``.

    Returns:
        ``(csv_path, json_path)``.
    """
    missing = [k for k in ("aggregation", "hd95_mode", "empty_policy", "spacing") if k not in settings]
    if missing:
        raise ValueError(f"settings must name {missing} so that summary.json states the metric semantics.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {str(out)!r} exists and is not a directory.")
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "per_case.csv", out / "summary.json"
    if not overwrite:
        for p in (csv_path, json_path):
            if p.exists():
                raise FileExistsError(f"{p} exists; pass overwrite=True or choose another out_dir.")
    columns: List[str] = []
    seen = set()
    for key in ["case_id"] + [k for r in rows for k in r.keys()]:
        if key not in seen and (key != "case_id" or any("case_id" in r for r in rows)):
            seen.add(key)
            columns.append(key)
    with atomic_open(str(csv_path), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in columns})
    counts: Dict[str, object] = {k: v for k, v in summary.items() if str(k).startswith("count/")}
    metrics = {k: v for k, v in summary.items() if not str(k).startswith("count/")}
    payload = {"settings": to_jsonable(dict(settings)), "metrics": to_jsonable(metrics),
               "counts": to_jsonable(counts)}
    with atomic_open(str(json_path), "w") as f:
        json.dump(payload, f, indent=2, allow_nan=False)
        f.write("\n")
    return csv_path, json_path
