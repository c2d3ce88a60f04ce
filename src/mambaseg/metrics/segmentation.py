"""Streaming segmentation metrics with declared semantics (``SegmentationMetrics``).

One accumulator computes every metric of this field -- ``dice``, ``iou``, ``accuracy``, ``precision``,
``sensitivity``, ``specificity`` (confusion-based) and ``hd``, ``hd95``, ``asd``, ``assd`` (surface distances) --
and names how they were aggregated, so that each paper's number can be reproduced from the same predictions:

* ``aggregation="pooled"``: one confusion matrix summed over every pixel of the data set, scores computed once
  (VM-UNet / VM-UNetV2 ISIC and polyp tables: ``sklearn.confusion_matrix`` on the flattened test set). Surface
  distances have no pooled form: they are the mean of the per-image values.
* ``aggregation="per_image"``: every metric per 2-D image and class, averaged over images (nan-excluded), then
  over classes.
* ``aggregation="per_volume"``: every metric per 3-D case and class (``update`` takes whole volumes), averaged over
  cases, then over classes (Synapse/ACDC tables of TransUNet, VM-UNet and Mamba-UNet).

Classes: label maps hold integers ``0..num_classes-1``; binary segmentation is ``num_classes=2`` (``1`` is read as
2). ``include_background=False`` (default) reports classes ``1..num_classes-1``; for binary data that is exactly
the foreground numbers the papers report (VM-UNet's "mIoU" is the foreground IoU).

Per-case empty masks follow ``empty_policy`` (see :mod:`mambaseg.metrics.policy`); ``nan`` values are excluded from
the means and counted (``count/excluded/<metric>``), and the number of ``both_empty``/``pred_empty``/``ref_empty``
(case, class) pairs is reported as ``count/<case>``.

Regions (BraTS): with ``regions=[[1, 2, 3], [1, 3], [3]]`` (lists of class indices, e.g. WT, TC, ET of BraTS
labels remapped to 0..3) every metric is computed per region on the binary masks ``isin(labels, region)`` instead
of per class; ``region_names`` name them in the keys (``dice/WT``). Label maps stay integer class maps.

Normalised surface Dice: ``nsd_tolerance`` (one number, or one per reported class/region, in the units of the
spacing -- mm with the header's spacing) adds ``nsd`` (MONAI ``compute_surface_dice`` semantics, see
:mod:`mambaseg.metrics.surface`).

Spread over cases: for ``per_image``/``per_volume``, ``std/<metric>`` is the standard deviation (numpy ``nanstd``,
``ddof=0``) over cases of the per-case class mean and ``std/<metric>/<class>`` over cases of each class's value.

Distributed: this is a :class:`torchmetrics.Metric`; all state is one list of per-case rows (``dist_reduce_fx=
"cat"``), gathered across processes by ``compute()`` and ``per_case()``. Pooled confusion counts are the sums of
the per-case counts, so they are exact under DDP. Case ids travel as UTF-8 bytes (at most 256 per id).
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torchmetrics import Metric

from .confusion import CONFUSION_METRICS, check_labels, confusion, scores_from_confusion
from .policy import EmptyPolicy, empty_case, get_empty_policy
from .surface import HD95_MODES, _check_spacing, _check_tolerance, surface_distances

__all__ = ["SegmentationMetrics", "AGGREGATIONS", "DISTANCE_METRICS", "logits_to_labels"]

AGGREGATIONS = ("pooled", "per_image", "per_volume")
DISTANCE_METRICS = ("hd", "hd95", "asd", "assd")
_RAW_DIST = ("hd", "hd95_medpy", "hd95_monai", "asd", "assd", "nsd")
_DIST_NAMES = ("hd", "hd95", "hd95_medpy", "hd95_monai", "asd", "assd")
_ID_BYTES = 256
_EMPTY_CASES = ("both_empty", "pred_empty", "ref_empty")


def logits_to_labels(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Integer label map from network logits ``(B, C, *spatial)``.

    ``C == 1``: ``sigmoid(logits) >= threshold`` (VM-UNet's binary rule, ``>=`` 0.5); ``C > 1``: ``argmax`` over
    channels. Returns int64 ``(B, *spatial)``.
    """
    if logits.ndim < 3:
        raise ValueError(f"logits should be (B, C, *spatial), got shape {tuple(logits.shape)}.")
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits[:, 0].float()) >= threshold).long()
    return logits.argmax(1)


def _nanmean(x: np.ndarray, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def _to_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.as_tensor(np.asarray(x))


class SegmentationMetrics(Metric):
    """Streaming accumulator for all segmentation metrics with a named aggregation, HD95 mode and empty policy.

    Args:
        num_classes: number of classes including background (2 for binary; 1 is read as 2).
        aggregation: ``"pooled"``, ``"per_image"`` or ``"per_volume"`` (see module docstring).
        include_background: report class 0 too (default ``False``).
        hd95_mode: ``"medpy"`` (95th percentile of the pooled distances of both directions; upstream papers) or
            ``"monai"`` (max of the two directed 95th percentiles). Both are stored per case; this picks ``hd95``.
        empty_policy: ``"vmunet"``, ``"mamba_unet"``, ``"monai"`` or an :class:`EmptyPolicy`.
        distances: compute surface distances (HD/HD95/ASD/ASSD); ``False`` skips them (fast, for training).
        spacing: default voxel spacing, one value per spatial axis of a case (2 for images, 3 for volumes);
            ``None`` = pixel units, as the upstream evaluations.
        connectivity: erosion connectivity of the surface extraction (1, as medpy and MONAI).
        class_names: one name per class (background included) for the per-class keys.
        regions: lists of class indices; metrics are computed per region (see module docstring).
        region_names: one name per region (default ``region_<i>``).
        nsd_tolerance: NSD tolerance, one number or one per reported class/region (mm with spacing given).

    ``update(pred_labels, target_labels, case_ids=None, spacing=None)``:
        * ``pooled``/``per_image``: ``(B, H, W)`` or ``(H, W)`` integer (or bool) label maps, one case per image.
        * ``per_volume``: one ``(D, H, W)`` volume, or ``(B, D, H, W)`` for B volumes.
        * ``case_ids``: a string (one case) or a sequence with one id per case; default ``"case_<n>"`` (with the
          process rank when ``torch.distributed`` is initialised).
        * ``spacing``: overrides the default for this call; one sequence for all cases or one row per case.

    ``compute()`` returns ``{name: float}``: per-class values ``"<metric>/class_<c>"``, class means ``"dice"``,
    ``"iou"``, ``"accuracy"``, ``"precision"``, ``"sensitivity"``, ``"specificity"`` and (with distances) ``"hd"``,
    ``"hd95"``, ``"hd95_medpy"``, ``"hd95_monai"``, ``"asd"``, ``"assd"``; and counts ``"count/cases"``,
    ``"count/both_empty"``, ``"count/pred_empty"``, ``"count/ref_empty"``, ``"count/excluded/<metric>"``.
    ``per_case()`` returns one dict per case with ``case_id`` and the same metric names.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self,
        num_classes: int,
        aggregation: str = "pooled",
        include_background: bool = False,
        hd95_mode: str = "medpy",
        empty_policy: Union[str, EmptyPolicy] = "vmunet",
        distances: bool = True,
        spacing: Optional[Sequence[float]] = None,
        connectivity: int = 1,
        class_names: Optional[Sequence[str]] = None,
        regions: Optional[Sequence[Sequence[int]]] = None,
        region_names: Optional[Sequence[str]] = None,
        nsd_tolerance: Optional[Union[float, Sequence[float]]] = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
        if hd95_mode not in HD95_MODES:
            raise ValueError(f"hd95_mode must be one of {HD95_MODES}, got {hd95_mode!r}.")
        self.num_classes = max(int(num_classes), 2)
        self.aggregation = aggregation
        self.include_background = bool(include_background)
        self.hd95_mode = hd95_mode
        self.policy = get_empty_policy(empty_policy)
        self.distances = bool(distances)
        self.spatial_ndim = 3 if aggregation == "per_volume" else 2
        self.spacing = None if spacing is None else _check_spacing(spacing, self.spatial_ndim)
        self.connectivity = int(connectivity)
        self.regions = None
        if regions is not None:
            regs = [[int(v) for v in r] for r in regions]
            bad = [r for r in regs if not r or any(v < 0 or v >= self.num_classes for v in r)]
            if not regs or bad:
                raise ValueError(f"regions must be non-empty lists of class indices in 0..{self.num_classes - 1}, "
                                 f"got {regions!r}.")
            self.regions = regs
            if region_names is not None and len(region_names) != len(regs):
                raise ValueError(f"region_names has {len(region_names)} entries for {len(regs)} regions.")
            class_names = [str(n) for n in region_names] if region_names is not None else None
            self._n = len(regs)
            self.classes = list(range(self._n))
        else:
            self._n = self.num_classes
            self.classes = list(range(0 if self.include_background else 1, self.num_classes))
        # label names for the per-class keys (``dice/<name>``); None keeps ``dice/class_<k>``
        if class_names is not None and len(class_names) != self._n:
            raise ValueError(f"class_names has {len(class_names)} entries for num_classes={self.num_classes} "
                             f"(background included): {list(class_names)}")
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.nsd_tolerance = None
        if nsd_tolerance is not None:
            if not self.distances:
                raise ValueError("nsd_tolerance needs distances=True (NSD is a surface metric).")
            tol = np.atleast_1d(np.asarray(nsd_tolerance, dtype=float)).ravel()
            if tol.size == 1:
                tol = np.repeat(tol, len(self.classes))
            if tol.size != len(self.classes):
                raise ValueError(f"nsd_tolerance needs one value or one per reported class/region "
                                 f"({len(self.classes)}), got {tol.size}: {list(tol)}.")
            self.nsd_tolerance = {k: _check_tolerance(t) for k, t in zip(self.classes, tol)}
        c = self._n
        self._row_len = c * 4 + c * len(_RAW_DIST) + self.spatial_ndim + _ID_BYTES
        self.add_state("cases", default=[], dist_reduce_fx="cat")
        self.set_dtype(torch.float64)
        self._auto_id = 0
        self._spacing_per_case = False  # set by update() calls that pass a spacing (volumes: the header's, mm)

    # ------------------------------------------------------------------ settings
    def settings(self) -> Dict[str, object]:
        """The semantics of the reported numbers (written to ``summary.json``)."""
        return {
            "num_classes": self.num_classes,
            "classes": self.classes,
            "class_names": self.class_names,
            "include_background": self.include_background,
            "aggregation": self.aggregation,
            "hd95_mode": self.hd95_mode,
            "empty_policy": self.policy.to_dict(),
            "distances": self.distances,
            "spacing": (list(self.spacing) if self.spacing is not None else
                        ("per case" if self._spacing_per_case else None)),
            "spacing_unit": "pixels" if self.spacing is None and not self._spacing_per_case else "as given",
            "regions": self.regions,
            "nsd_tolerance": (None if self.nsd_tolerance is None else
                              {self._cname(k): t for k, t in self.nsd_tolerance.items()}),
            "nsd_tolerance_unit": None if self.nsd_tolerance is None else (
                "pixels" if self.spacing is None and not self._spacing_per_case else "as spacing (mm)"),
            "nsd": "MONAI compute_surface_dice(use_subvoxels=False)" if self.nsd_tolerance else None,
            "surface": f"mask XOR binary_erosion(mask, generate_binary_structure(ndim, {self.connectivity}))",
        }

    # ------------------------------------------------------------------ update
    def _next_ids(self, n: int) -> List[str]:
        prefix = ""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            prefix = f"rank{torch.distributed.get_rank()}_"
        ids = [f"{prefix}case_{self._auto_id + i}" for i in range(n)]
        self._auto_id += n
        return ids

    def update(self, pred_labels, target_labels, case_ids=None, spacing=None) -> None:  # type: ignore[override]
        p = _to_tensor(pred_labels)
        t = _to_tensor(target_labels).to(p.device)
        if tuple(p.shape) != tuple(t.shape):
            raise ValueError(
                f"pred_labels and target_labels should have the same shape, got {tuple(p.shape)} and "
                f"{tuple(t.shape)}."
            )
        nd = self.spatial_ndim
        if p.ndim == nd:
            p, t = p.unsqueeze(0), t.unsqueeze(0)
        elif p.ndim != nd + 1:
            want = "(B, H, W) or (H, W)" if nd == 2 else "(D, H, W) or (B, D, H, W)"
            raise ValueError(
                f"aggregation={self.aggregation!r} expects integer label maps of shape {want}, got "
                f"{tuple(p.shape)}; convert logits with mambaseg.metrics.logits_to_labels (argmax / threshold) "
                f"and drop the channel axis."
            )
        p = check_labels(p, self.num_classes, "pred_labels")
        t = check_labels(t, self.num_classes, "target_labels")
        n = p.shape[0]
        # case ids
        if case_ids is None:
            ids = self._next_ids(n)
        elif isinstance(case_ids, str):
            if n != 1:
                raise ValueError(f"one case id given for a batch of {n} cases; pass a list of {n} ids.")
            ids = [case_ids]
        else:
            ids = [str(i) for i in case_ids]
            if len(ids) != n:
                raise ValueError(f"got {len(ids)} case ids for a batch of {n} cases.")
        # spacing per case
        if spacing is not None:
            self._spacing_per_case = True
        sp = spacing if spacing is not None else self.spacing
        if sp is None:
            sp_rows = np.ones((n, nd))
        else:
            arr = np.asarray(sp, dtype=float)
            if arr.ndim == 2:
                if arr.shape[0] != n:
                    raise ValueError(f"spacing has {arr.shape[0]} rows for a batch of {n} cases.")
                sp_rows = np.stack([_check_spacing(r, nd) for r in arr])
            else:
                sp_rows = np.tile(np.asarray(_check_spacing(arr, nd)), (n, 1))
        rows = []
        for i in range(n):
            rows.append(self._case_row(p[i], t[i], ids[i], sp_rows[i]))
        self.cases.append(torch.cat(rows).to(device=self.device, dtype=torch.float64))

    def _masks(self, x, k: int):
        if self.regions is None:
            return x == k
        r = self.regions[k]
        return np.isin(x, r) if isinstance(x, np.ndarray) else torch.isin(x, torch.tensor(r, device=x.device))

    def _case_row(self, p: torch.Tensor, t: torch.Tensor, case_id: str, sp: np.ndarray) -> torch.Tensor:
        c = self._n
        if self.regions is None:
            counts = confusion(p, t, c).cpu().to(torch.float64)  # (C, 4)
        else:
            counts = torch.stack([confusion(self._masks(p, k).long(), self._masks(t, k).long(), 2)[1]
                                  for k in range(c)]).cpu().to(torch.float64)
        dist = torch.full((c, len(_RAW_DIST)), float("nan"), dtype=torch.float64)
        if self.distances:
            pn, tn = p.cpu().numpy(), t.cpu().numpy()
            for k in self.classes:
                tp, fp, fn = counts[k, 0].item(), counts[k, 1].item(), counts[k, 2].item()
                if tp + fp > 0 and tp + fn > 0:
                    d = surface_distances(self._masks(pn, k), self._masks(tn, k), spacing=tuple(sp),
                                          connectivity=self.connectivity)
                    nsd = d.nsd(self.nsd_tolerance[k]) if self.nsd_tolerance else float("nan")
                    dist[k] = torch.tensor([d.hd(), d.hd95("medpy"), d.hd95("monai"), d.asd(), d.assd(), nsd],
                                           dtype=torch.float64)
        raw = case_id.encode("utf-8")
        if len(raw) > _ID_BYTES:
            raise ValueError(f"case id {case_id[:40]!r}... is longer than {_ID_BYTES} UTF-8 bytes; shorten it.")
        idb = torch.zeros(_ID_BYTES, dtype=torch.float64)
        if raw:
            idb[: len(raw)] = torch.tensor(list(raw), dtype=torch.float64)
        return torch.cat([counts.reshape(-1), dist.reshape(-1), torch.as_tensor(sp, dtype=torch.float64), idb])

    # ------------------------------------------------------------------ decoding
    def _rows(self) -> torch.Tensor:
        x = self.cases
        if isinstance(x, list):
            x = torch.cat([r.reshape(-1) for r in x]) if x else torch.zeros(0, dtype=torch.float64)
        return x.reshape(-1, self._row_len).cpu()

    def _decode(self):
        rows = self._rows().numpy()
        c, nr = self._n, len(_RAW_DIST)
        o = 0
        counts = rows[:, o:o + c * 4].reshape(-1, c, 4)
        o += c * 4
        dist = rows[:, o:o + c * nr].reshape(-1, c, nr)
        o += c * nr
        spacing = rows[:, o:o + self.spatial_ndim]
        o += self.spatial_ndim
        ids = [bytes(int(b) for b in r if b != 0).decode("utf-8") for r in rows[:, o:]]
        return counts, dist, spacing, ids

    def _case_scores(self, counts: np.ndarray, dist: np.ndarray):
        """Per-case, per-class scores with the empty policy applied. Returns (scores dict (N, C), cases (N, C))."""
        pol = self.policy
        scores = scores_from_confusion(counts, zero_division=pol.zero_division)
        pred_nonempty = (counts[..., 0] + counts[..., 1]) > 0
        ref_nonempty = (counts[..., 0] + counts[..., 2]) > 0
        cases = np.empty(counts.shape[:2], dtype=object)
        for idx in np.ndindex(cases.shape):
            cases[idx] = empty_case(bool(pred_nonempty[idx]), bool(ref_nonempty[idx]))
        if self.distances:
            raw = {name: dist[..., j].copy() for j, name in enumerate(_RAW_DIST)}
            raw["hd95"] = raw["hd95_" + self.hd95_mode].copy()
            for name in _DIST_NAMES:
                scores[name] = raw[name]
            if self.nsd_tolerance:
                scores["nsd"] = raw["nsd"]
        for case in _EMPTY_CASES:
            m = cases == case
            if not m.any():
                continue
            ov, dv = pol.values(case)
            scores["dice"][m] = ov
            scores["iou"][m] = ov
            if self.distances:
                for name in _DIST_NAMES:
                    scores[name][m] = dv
            if self.nsd_tolerance:
                scores["nsd"][m] = pol.nsd_value(case)
        return scores, cases

    def _metric_names(self) -> List[str]:
        names = list(CONFUSION_METRICS)
        if self.distances:
            names += list(_DIST_NAMES)
        if self.nsd_tolerance:
            names.append("nsd")
        return names

    # ------------------------------------------------------------------ outputs
    def compute(self) -> Dict[str, float]:  # type: ignore[override]
        counts, dist, _, _ = self._decode()
        cls = self.classes
        names = self._metric_names()
        out: Dict[str, float] = {}
        scores, cases = self._case_scores(counts, dist)
        per_class: Dict[str, np.ndarray] = {}
        excluded: Dict[str, int] = {}
        for name in names:
            vals = scores[name][:, cls]  # (N, K)
            per_class[name] = _nanmean(vals, axis=0) if len(vals) else np.full(len(cls), np.nan)
            excluded[name] = int(np.isnan(vals).sum())
        if self.aggregation == "pooled":
            pooled = scores_from_confusion(counts.sum(0)[cls], zero_division=self.policy.zero_division)
            for name in CONFUSION_METRICS:
                per_class[name] = pooled[name]
                excluded[name] = 0
        for name in names:
            out[name] = float(_nanmean(per_class[name])) if len(cls) else float("nan")
        for name in names:
            for j, k in enumerate(cls):
                out[f"{name}/{self._cname(k)}"] = float(per_class[name][j])
        if self.aggregation != "pooled" and len(cls):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                for name in names:
                    vals = scores[name][:, cls]
                    out[f"std/{name}"] = float(np.nanstd(_nanmean(vals, axis=1))) if len(vals) else float("nan")
                    for j, k in enumerate(cls):
                        out[f"std/{name}/{self._cname(k)}"] = (float(np.nanstd(vals[:, j])) if len(vals)
                                                               else float("nan"))
        out["count/cases"] = int(counts.shape[0])
        for case in _EMPTY_CASES:
            out[f"count/{case}"] = int((cases[:, cls] == case).sum())
        for name in names:
            out[f"count/excluded/{name}"] = excluded[name]
        return out

    def _cname(self, k: int) -> str:
        return self.class_names[k] if self.class_names else f"class_{k}"

    def per_case(self) -> List[Dict[str, object]]:
        """One row per case (image or volume): ``case_id``, spacing, per-class metrics, class means, empty flags.

        Synchronised across processes like ``compute()``.
        """
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=not self._is_synced):
            counts, dist, spacing, ids = self._decode()
        scores, cases = self._case_scores(counts, dist)
        names = self._metric_names()
        rows: List[Dict[str, object]] = []
        for i, cid in enumerate(ids):
            row: Dict[str, object] = {"case_id": cid, "spacing": "x".join(f"{s:g}" for s in spacing[i])}
            for name in names:
                vals = scores[name][i, self.classes]
                row[name] = float(_nanmean(vals)) if len(vals) else float("nan")
            for k in self.classes:
                for name in names:
                    row[f"{name}/{self._cname(k)}"] = float(scores[name][i, k])
                row[f"empty/{self._cname(k)}"] = cases[i, k]
            rows.append(row)
        return rows

    def reset(self) -> None:
        super().reset()
        self._auto_id = 0

