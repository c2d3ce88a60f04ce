"""Reproducible data splits: ratio splits, k-fold splits, JSON files.

* :func:`ratio_split` shuffles the **sorted** ids with ``numpy.random.RandomState(seed)`` and cuts them by ratio
  (largest-remainder rounding, so the parts always add up to ``len(ids)``).
* :func:`kfold_split` is ``sklearn.model_selection.KFold(n_splits=k, shuffle=True, random_state=seed)`` applied
  to the sorted ids, re-implemented in numpy. With ``k=5, seed=12345`` it gives nnU-Net v2's default
  ``splits_final.json`` (nnU-Net sorts the case ids and uses exactly that KFold).
* :func:`save_split` / :func:`load_split` read and write JSON: a dict ``{"train": [...], "val": [...], ...}`` or
  a list of such dicts (one per fold, nnU-Net's ``splits_final.json``). ``save_split`` never overwrites a file
  with different content unless ``overwrite=True``.
* The papers' own splits: ISIC 7:3 comes as folders (``train/``, ``val/``), ACDC 70/10/20 patients as list files
  (``train_slices.list``, ``val.list``, ``test.list``) — their readers use them; :func:`acdc_patient_split`
  rebuilds a 70/10/20 split by patient for data without the list files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from mambaseg.utils.fileio import atomic_write_text

__all__ = ["ratio_split", "kfold_split", "kfold_splits", "save_split", "load_split", "acdc_patient_split"]


def _sorted_unique(ids: Sequence) -> List:
    ids = list(ids)
    if len(set(ids)) != len(ids):
        seen, dup = set(), []
        for i in ids:
            if i in seen:
                dup.append(i)
            seen.add(i)
        raise ValueError(f"ids must be unique; duplicated: {dup[:5]}")
    return sorted(ids)


def ratio_split(ids: Sequence, ratios: Union[Sequence[float], Mapping[str, float]] = (0.8, 0.2),
                seed: int = 0) -> Dict[str, List]:
    """Split ``ids`` at random by ``ratios``.

    Args:
        ids: unique, sortable ids (case ids, patient ids).
        ratios: 2 numbers (train, val), 3 numbers (train, val, test), or a dict ``{name: ratio}``; normalised to
            sum 1.
        seed: seed of the shuffle.

    Returns:
        ``{name: [ids]}``; each list keeps the shuffled order. Sizes follow the largest-remainder rule.
    """
    if isinstance(ratios, Mapping):
        names, r = list(ratios.keys()), [float(v) for v in ratios.values()]
    else:
        r = [float(v) for v in ratios]
        names = {2: ["train", "val"], 3: ["train", "val", "test"]}.get(len(r))
        if names is None:
            raise ValueError(f"ratios must have 2 (train, val) or 3 (train, val, test) entries or be a dict, got {ratios}")
    if any(v < 0 for v in r) or sum(r) <= 0:
        raise ValueError(f"ratios must be non-negative and not all zero, got {ratios}")
    ids = _sorted_unique(ids)
    n = len(ids)
    r = np.asarray(r) / sum(r)
    exact = r * n
    sizes = np.floor(exact).astype(int)
    for j in np.argsort(-(exact - sizes), kind="stable")[: n - sizes.sum()]:
        sizes[j] += 1
    perm = np.random.RandomState(seed).permutation(n)
    out, start = {}, 0
    for name, s in zip(names, sizes):
        out[name] = [ids[i] for i in perm[start:start + s]]
        start += s
    return out


def kfold_split(ids: Sequence, k: int = 5, fold: int = 0, seed: int = 12345) -> Dict[str, List]:
    """Fold ``fold`` of a shuffled ``k``-fold split: ``{"train": [...], "val": [...]}``, both in sorted order.

    Identical to ``sklearn.model_selection.KFold(k, shuffle=True, random_state=seed).split(sorted(ids))``; the
    default seed 12345 and ``k=5`` reproduce nnU-Net v2's ``splits_final.json``.
    """
    ids = _sorted_unique(ids)
    n = len(ids)
    if not 2 <= k <= n:
        raise ValueError(f"k must be in 2..{n} (number of ids), got {k}")
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1}, got {fold}")
    idx = np.arange(n)
    np.random.RandomState(seed).shuffle(idx)
    sizes = np.full(k, n // k, dtype=int)
    sizes[: n % k] += 1
    start = int(sizes[:fold].sum())
    test = np.zeros(n, bool)
    test[idx[start:start + sizes[fold]]] = True
    return {"train": [ids[i] for i in np.flatnonzero(~test)], "val": [ids[i] for i in np.flatnonzero(test)]}


def kfold_splits(ids: Sequence, k: int = 5, seed: int = 12345) -> List[Dict[str, List]]:
    """All ``k`` folds (the content of an nnU-Net ``splits_final.json``)."""
    return [kfold_split(ids, k, f, seed) for f in range(k)]


def acdc_patient_split(case_ids: Sequence[str], seed: int = 0, ratios=(0.7, 0.1, 0.2)) -> Dict[str, List[str]]:
    """70/10/20 split **by patient** (``patient001_frame01`` -> ``patient001``), returned as case ids."""
    patients = sorted({c.split("_")[0] for c in case_ids})
    sp = ratio_split(patients, ratios, seed)
    return {name: sorted(c for c in case_ids if c.split("_")[0] in set(p)) for name, p in sp.items()}


def _jsonable(split):
    if isinstance(split, Mapping):
        return {str(k): [str(x) if not isinstance(x, (int, float)) else x for x in v] for k, v in split.items()}
    if isinstance(split, (list, tuple)):
        return [_jsonable(s) for s in split]
    raise TypeError(f"a split is a dict {{name: [ids]}} or a list of such dicts, got {type(split)}")


def save_split(path, split, overwrite: bool = False) -> Path:
    """Write ``split`` (dict or list of dicts) to ``path`` as JSON.

    An existing file with the same content is left alone; one with different content raises
    ``FileExistsError`` unless ``overwrite=True`` (splits are what makes runs comparable: never replace silently).
    """
    p = Path(path)
    data = _jsonable(split)
    if p.exists():
        try:
            old = json.loads(p.read_text())
        except (OSError, ValueError):
            old = None
        if old == data:
            return p
        if not overwrite:
            raise FileExistsError(f"{p} exists and holds a different split; pass overwrite=True to replace it or "
                                  "choose another path")
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(str(p), json.dumps(data, indent=2))
    return p


def load_split(path, fold: Optional[int] = None):
    """Read a split JSON: a dict ``{name: [ids]}``, or a list of folds (nnU-Net ``splits_final.json``) from which
    ``fold`` picks one dict (without ``fold`` the whole list is returned)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"split file {p} does not exist")
    try:
        data = json.loads(p.read_text())
    except ValueError as e:
        raise ValueError(f"split file {p} is not valid JSON: {e}") from None
    if isinstance(data, dict):
        bad = [k for k, v in data.items() if not isinstance(v, list)]
        if bad:
            raise ValueError(f"split file {p}: entries {bad} are not lists of ids")
        if fold is not None:
            raise ValueError(f"split file {p} holds one split, not folds; load it without fold=")
        return data
    if isinstance(data, list) and all(isinstance(d, dict) for d in data):
        if fold is None:
            return data
        if not 0 <= fold < len(data):
            raise ValueError(f"fold {fold} not in {p} ({len(data)} folds)")
        return data[fold]
    raise ValueError(f"split file {p} must hold a dict {{name: [ids]}} or a list of such dicts")
