"""Run outputs and the offline report.

``write_evaluation`` writes ``per_case.csv`` + ``summary.json`` (through ``mambaseg.metrics.write_summary``, which
names the aggregation and HD95 mode) and the qualitative arrays; ``write_report`` writes ``report.md`` with PNG
plots next to it (matplotlib, Agg backend): training curves (from Lightning's ``metrics.csv`` of the training
run; left out when there is none, e.g. a standalone ``mambaseg test`` of a checkpoint without its run), a per-case Dice
histogram (as Mamba-UNet Fig. 5), a qualitative grid image / ground truth / prediction (as its Fig. 4) and the
table of all eight metrics. Everything is relative paths, so the folder can be zipped and read offline.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["EIGHT_METRICS", "RunRecord", "write_evaluation", "write_report", "format_metrics_table",
           "read_metrics_csv", "case_dice_values"]

EIGHT_METRICS = ("dice", "iou", "accuracy", "precision", "sensitivity", "specificity", "hd95", "asd")
_LABEL = {"dice": "DSC", "iou": "IoU", "accuracy": "Acc", "precision": "Pre", "sensitivity": "Sen",
          "specificity": "Spe", "hd95": "HD95", "asd": "ASD"}


@dataclass
class RunRecord:
    """One evaluated model, as the report shows it."""
    name: str
    run_dir: Optional[str] = None
    summary: Dict[str, Any] = field(default_factory=dict)
    rows: List[Dict[str, Any]] = field(default_factory=list)
    qualitative: List[Dict[str, Any]] = field(default_factory=list)
    settings: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)   # params, train time, ...
    log_dir: Optional[str] = None   # the training run whose metrics.csv gives the curves (default: run_dir)


def _scalar(v) -> Optional[float]:
    if v is None:
        return None
    if isinstance(v, dict):  # per-class dict: mean over classes
        vals = [_scalar(x) for x in v.values()]
        vals = [x for x in vals if x is not None and not math.isnan(x)]
        return float(np.mean(vals)) if vals else float("nan")
    try:
        import torch
        if isinstance(v, torch.Tensor):
            return float(v.float().mean()) if v.numel() else None
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, (list, tuple, np.ndarray)):
        arr = np.asarray(v, dtype=float)
        return float(np.nanmean(arr)) if arr.size else None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    try:
        import torch
        if isinstance(v, torch.Tensor):
            return v.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None if math.isnan(v) else str(v)
    return v


def write_evaluation(out_dir: str, results: Dict[str, Any], extra: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """Write ``per_case.csv`` and ``summary.json`` (plus ``qualitative.npz``) into ``out_dir``."""
    from .io import atomic_open
    os.makedirs(out_dir, exist_ok=True)
    settings = dict(results.get("settings") or {})
    if extra:
        settings.update(extra)
    rows, summary = results.get("rows") or [], results.get("summary") or {}
    try:
        from mambaseg.metrics import write_summary
    except ImportError:  # metrics package without the writer: fall back to our own format
        write_summary = None
    if write_summary is not None:
        write_summary(rows, summary, out_dir, settings)
    else:
        _write_rows_csv(os.path.join(out_dir, "per_case.csv"), rows)
        with atomic_open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(_jsonable({"settings": settings, "metrics": summary}), f, indent=2)
    q = results.get("qualitative") or []
    if q:
        with atomic_open(os.path.join(out_dir, "qualitative.npz"), "wb") as f:
            np.savez_compressed(f, **{f"{k}_{i}": np.asarray(s[k]) for i, s in enumerate(q)
                                      for k in ("image", "target", "pred")},
                                case_ids=np.asarray([str(s["case_id"]) for s in q]))
    return {"per_case": os.path.join(out_dir, "per_case.csv"), "summary": os.path.join(out_dir, "summary.json")}


def _write_rows_csv(path: str, rows: Sequence[Dict[str, Any]]) -> None:
    from .io import atomic_open
    keys: List[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: _jsonable(r.get(k)) for k in keys})


def _save_fig(fig, path: str) -> None:
    import io

    from .io import atomic_write_bytes
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    atomic_write_bytes(path, buf.getvalue())


def read_metrics_csv(path: str) -> Dict[str, List[tuple]]:
    """Lightning ``metrics.csv`` -> {column: [(epoch, step, value), ...]} (empty cells skipped)."""
    out: Dict[str, List[tuple]] = {}
    if not os.path.isfile(path):
        return out
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            ep, st = row.get("epoch"), row.get("step")
            for k, v in row.items():
                if k in ("epoch", "step") or v in (None, ""):
                    continue
                try:
                    out.setdefault(k, []).append((int(float(ep)) if ep else None, int(float(st)) if st else None,
                                                  float(v)))
                except ValueError:
                    continue
    return out


def case_dice_values(rows: Sequence[Dict[str, Any]]) -> List[float]:
    """Per-case Dice, averaged over classes when the rows are per (case, class)."""
    by_case: Dict[Any, List[float]] = {}
    for r in rows:
        v = _scalar(r.get("dice"))
        if v is None or math.isnan(v):
            continue
        by_case.setdefault(r.get("case_id", len(by_case)), []).append(v)
    return [float(np.mean(v)) for v in by_case.values()]


def empty_counts(summary: Dict[str, Any]) -> Optional[Dict[str, int]]:
    """``{"pred": ..., "ref": ..., "total": ...}``: (case, class) pairs with an empty prediction, with an empty
    ground truth, and all of them, from the ``count/*`` entries of a metrics summary (None when it has none)."""
    if not isinstance(summary, dict) or "count/pred_empty" not in summary:
        return None
    get = lambda k: int(summary.get(k) or 0)
    n_cls = len([k for k in summary if k.startswith("dice/")]) or 1  # per class or region: dice/class_1, dice/WT
    return {"pred": get("count/pred_empty") + get("count/both_empty"),
            "ref": get("count/ref_empty") + get("count/both_empty"), "total": get("count/cases") * n_cls}


def _policy_name(settings: Dict[str, Any]) -> str:
    p = (settings or {}).get("empty_policy")
    return str(p.get("name")) if isinstance(p, dict) else str(p) if p else "the default"


def empty_warnings(records: Sequence[RunRecord]) -> List[str]:
    """One warning per model with empty predictions or empty ground-truth masks (their HD95/ASD are not
    distances: the empty policy sets them)."""
    out = []
    for rec in records:
        c = empty_counts(rec.summary)
        if not c:
            continue
        pol = _policy_name(rec.settings)
        if c["pred"]:
            out.append(f"warning: {rec.name}: {c['pred']} of {c['total']} predictions are empty (no foreground); "
                       f"their Dice/HD95/ASD are set by empty_policy {pol}, not measured"
                       + (" - the model predicts nothing" if c["pred"] == c["total"] else ""))
        if c["ref"]:
            out.append(f"warning: {rec.name}: {c['ref']} of {c['total']} ground-truth masks are empty; their "
                       f"scores are set by empty_policy {pol}")
    return out


def format_metrics_table(records: Sequence[RunRecord], markdown: bool = False) -> str:
    """All eight metrics per model, the counts of empty predictions / ground truths (EmptyPred, EmptyGT: (case,
    class) pairs), and a warning when they are not zero; names the aggregation and HD95 mode under the table."""
    head = ["model"] + [_LABEL[m] for m in EIGHT_METRICS] + ["EmptyPred", "EmptyGT"]
    lines = []
    for rec in records:
        cells = [rec.name]
        for m in EIGHT_METRICS:
            v = _scalar(rec.summary.get(m)) if isinstance(rec.summary, dict) else None
            if v is None or math.isnan(v):
                cells.append("n/a")
            else:
                cells.append(f"{v:.2f}" if m in ("hd95", "asd") else f"{100 * v:.2f}")
        c = empty_counts(rec.summary)
        cells += [f"{c['pred']}/{c['total']}", f"{c['ref']}/{c['total']}"] if c else ["n/a", "n/a"]
        lines.append(cells)
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c) + " |" for c in lines]
    else:
        widths = [max(len(str(r[i])) for r in [head] + lines) for i in range(len(head))]
        fmt = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        out = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in lines]
    notes = sorted({_settings_note(r.settings) for r in records if r.settings})
    out.append("")
    out += [("" if not markdown else "") + n for n in notes]
    out.append("DSC..Spe in %, HD95/ASD in physical units (pixels when no spacing is known); EmptyPred/EmptyGT: "
               "(case, class) pairs with an empty prediction / ground truth.")
    warns = empty_warnings(records)
    if warns:
        out.append("")
        out += [f"**{w}**" if markdown else w for w in warns]
    return "\n".join(out)


def _settings_note(s: Dict[str, Any]) -> str:
    return (f"aggregation={s.get('aggregation')}, hd95_mode={s.get('hd95_mode')}, "
            f"include_background={s.get('include_background')}, threshold={s.get('threshold')}")


# --------------------------------------------------------------------------------------------------------------
# plots
def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def run_metrics(run_dir: str) -> Dict[str, List[tuple]]:
    """The CSV log of a run, including the segments of resumed runs (``resume-*/metrics.csv``)."""
    merged: Dict[str, List[tuple]] = {}
    paths = [os.path.join(run_dir, "metrics.csv")]
    if os.path.isdir(run_dir):
        paths += [os.path.join(run_dir, d, "metrics.csv") for d in sorted(os.listdir(run_dir)) if d.startswith("resume-")]
    for p in paths:
        for k, pts in read_metrics_csv(p).items():
            merged.setdefault(k, []).extend(pts)
    return merged


def plot_training_curves(records: Sequence[RunRecord], path: str) -> Optional[str]:
    keys = ("train/loss_epoch", "val/loss", "val/dice")
    series = [(r.name, run_metrics(r.log_dir or r.run_dir)) for r in records if r.log_dir or r.run_dir]
    series = [(n, s) for n, s in series if any(s.get(k) for k in keys)]  # a test folder's CSV has no curves
    if not series:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, s in series:
        for key, ax, label in ((keys[0], axes[0], "train"), (keys[1], axes[0], "val"),
                               ("val/dice", axes[1], "val")):
            pts = [(e, v) for e, _, v in s.get(key, []) if e is not None]
            if pts:
                ax.plot([p[0] + 1 for p in pts], [p[1] for p in pts], marker="o", ms=3, label=f"{name} ({label})")
    axes[0].set_title("loss"), axes[1].set_title("validation Dice (pooled)")
    for ax in axes:
        ax.set_xlabel("epoch"), ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)
    return path


def plot_dice_histogram(records: Sequence[RunRecord], path: str) -> Optional[str]:
    data = [(r.name, case_dice_values(r.rows)) for r in records]
    data = [(n, v) for n, v in data if v]
    if not data:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(0, 1, 21)
    for name, vals in data:
        ax.hist(vals, bins=bins, alpha=0.55, label=f"{name} (n={len(vals)}, median {np.median(vals):.3f})")
    ax.set_xlabel("per-case Dice"), ax.set_ylabel("cases"), ax.set_title("Per-case Dice distribution")
    ax.legend(fontsize=7), ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)
    return path


def _label_rgb(lbl: np.ndarray) -> np.ndarray:
    palette = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], dtype=np.float32) / 255
    return palette[np.asarray(lbl) % len(palette)]


def plot_qualitative(records: Sequence[RunRecord], path: str, n: int = 4) -> Optional[str]:
    recs = [r for r in records if r.qualitative]
    if not recs:
        return None
    plt = _plt()
    n = min(n, min(len(r.qualitative) for r in recs))
    cols = 2 + len(recs)
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.2 * n), squeeze=False)
    for i in range(n):
        s0 = recs[0].qualitative[i]
        img = s0["image"]
        axes[i, 0].imshow(img, cmap=None if img.ndim == 3 else "gray")
        axes[i, 1].imshow(_label_rgb(s0["target"]), interpolation="nearest")
        for j, r in enumerate(recs):
            axes[i, 2 + j].imshow(_label_rgb(r.qualitative[i]["pred"]), interpolation="nearest")
        axes[i, 0].set_ylabel(str(s0["case_id"])[:18], fontsize=7)
    for j, title in enumerate(["image", "ground truth"] + [r.name for r in recs]):
        axes[0, j].set_title(title, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)
    return path


def write_report(out_dir: str, records: Sequence[RunRecord], title: str = "mambaseg run report",
                 notes: Sequence[str] = ()) -> str:
    """Write ``report.md`` and its plots into ``out_dir``; returns the report path."""
    os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
    plots = {
        "Training curves": plot_training_curves(records, os.path.join(out_dir, "plots", "training_curves.png")),
        "Per-case Dice histogram (cf. Mamba-UNet Fig. 5)":
            plot_dice_histogram(records, os.path.join(out_dir, "plots", "dice_histogram.png")),
        "Qualitative results: image / ground truth / prediction (cf. Mamba-UNet Fig. 4)":
            plot_qualitative(records, os.path.join(out_dir, "plots", "qualitative.png")),
    }
    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in notes]
    if notes:
        lines.append("")
    lines += ["## Test metrics", "", format_metrics_table(records, markdown=True), ""]
    for r in records:
        lines.append(f"### {r.name}")
        lines.append("")
        if r.run_dir:
            lines.append(f"- run directory: `{os.path.relpath(r.run_dir, out_dir)}`")
        for k, v in {**r.settings, **r.extra}.items():
            lines.append(f"- {k}: {v}")
        lines.append("")
    for heading, p in plots.items():
        if p:
            lines += [f"## {heading}", "", f"![{heading}]({os.path.relpath(p, out_dir)})", ""]
    from .io import atomic_write_text
    path = os.path.join(out_dir, "report.md")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
