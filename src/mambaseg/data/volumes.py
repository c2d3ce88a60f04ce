"""Volumetric (3D) data sets as they ship: case lists of NIfTI channel files + label file, with geometry kept.

Layouts recognised by :func:`read_volume_set` (``root`` is what you pass; no option needed except for the last two)::

    nnU-Net v2 raw   root/dataset.json (channel_names, labels [regions: lists + regions_class_order], file_ending)
                     root/imagesTr/<case>_0000..000N.nii.gz  root/labelsTr/<case>.nii.gz  [root/imagesTs/, labelsTs/]
    MSD (Decathlon)  root/dataset.json (modality, labels, training, test)
                     root/imagesTr/<case>.nii.gz (4-D: x, y, z, channel)  root/labelsTr/<case>.nii.gz  [imagesTs/]
    BraTS 2013-2020  root/<case>/<case>_{flair,t1,t1ce,t2}.nii.gz + <case>_seg.nii.gz   labels 0/1/2/4
    BraTS 2023       root/<case>/<case>-{t1n,t1c,t2w,t2f}.nii.gz + <case>-seg.nii.gz    labels 0/1/2/3
    per-case folders root/<case>/<one file per channel> + <label file>, with channels=["flair", "t1c"], label="seg"
                     (a name matches <name>.nii.gz or a file ending in _<name>/-<name>/.<name>; or a glob "*_t1.nii*")
    image/label      root/{images,imagesTr}/<case>[_0000].nii.gz + root/{labels,labelsTr}/<case>.nii.gz (one channel)

Arrays stay in nibabel's voxel order ``(i, j, k)``, channels first (VOLUME_CONTRACT.md); spacing is
``header.get_zooms()[:3]``. Raw label values are mapped to consecutive class indices in sorted order (BraTS 2020:
``{0: 0, 1: 1, 2: 2, 4: 3}``); BraTS declares the regions WT ``[1, 2, 3]``, TC ``[1, 3]``, ET ``[3]`` (class indices),
nnU-Net region labels give theirs from ``dataset.json``. ``regions={"WT": [1, 2, 4], ...}`` (raw label values, outer
-> inner) declares regions for any layout (per-case folders of BraTS read with ``channels=``), replacing its own.

Reader-level problems (a channel file missing in one case, a ``dataset.json`` that does not match the files) do
not raise: they are kept on the case (``VolumeCase.problems``) or the set (``VolumeSet.problems``) so that
``mambaseg check`` lists every one at once; loading such a case raises :class:`DataError`.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .base import DataError, MissingDataError, require_dir, strip_ext, unique_values
from .nifti import NIFTI_EXTENSIONS, NiftiVolume, read_nifti_volume

__all__ = ["VolumeCase", "VolumeSet", "read_volume_set", "volume_set_from_files", "read_nnunet_volumes", "read_msd",
           "read_brats",
           "read_case_folders", "read_image_label_folders", "select_cases", "load_case", "geometry_mismatch",
           "BRATS_2020", "BRATS_2023", "VOLUME_LAYOUTS"]

VOLUME_LAYOUTS = __doc__.split("::", 1)[1].split("\n\nArrays")[0]

#: geometry tolerance: spacings and direction cosines relative, origins in units of the smallest spacing
GEOMETRY_TOL = 1e-3


@dataclass
class VolumeCase:
    """One case: its channel files (or one 4-D file holding all channels, MSD) and its optional label file."""

    case_id: str
    images: List[Path]
    label: Optional[Path] = None
    four_d: bool = False
    problems: List[str] = field(default_factory=list)

    @property
    def files(self) -> List[Path]:
        return list(self.images) + ([self.label] if self.label is not None else [])


@dataclass
class VolumeSet:
    """A volumetric data set: layout, channels, labels (raw values -> class indices), regions, cases."""

    root: Path
    layout: str
    channel_names: List[str]
    label_values: List[int]                   # raw label values; class index = position in this list
    class_names: List[str]
    train: List[VolumeCase]                   # labelled training cases (imagesTr / case folders with a label)
    test: List[VolumeCase] = field(default_factory=list)   # imagesTs (labelled or not) / case folders without label
    regions: Optional[List[List[int]]] = None  # class indices per region (sigmoid outputs), e.g. BraTS WT/TC/ET
    region_names: Optional[List[str]] = None
    regions_class_order: Optional[List[int]] = None  # class index each region's voxels get when converted back
    normalization: List[str] = field(default_factory=list)  # scheme per channel ("CT", "zscore", "nonorm", ...)
    problems: List[str] = field(default_factory=list)
    splits_file: Optional[Path] = None
    labels_declared: bool = True
    notes: List[str] = field(default_factory=list)          # said once by the check, not problems

    @property
    def num_classes(self) -> int:
        return len(self.label_values)

    @property
    def in_channels(self) -> int:
        return len(self.channel_names)

    def label_lut(self) -> Dict[int, int]:
        return {int(v): i for i, v in enumerate(self.label_values)}


def _nii(d: Path) -> List[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.lower().endswith(NIFTI_EXTENSIONS))


def _scheme(name: str) -> str:
    """nnU-Net's channel name -> normalisation scheme (case-insensitive; anything unknown -> zscore)."""
    low = str(name).strip().lower()
    return {"ct": "CT", "nonorm": "nonorm", "zscore": "zscore", "rescale_to_0_1": "rescale_to_0_1",
            "rgb_to_0_1": "rgb_to_0_1"}.get(low, "zscore")


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except ValueError as e:
        raise DataError(f"{p} is not valid JSON: {e}") from None


# ----------------------------------------------------------------------------------------------------------------
# nnU-Net v2 raw
# ----------------------------------------------------------------------------------------------------------------
def _nnunet_labels(dj: dict, where: Path):
    """(raw values, class names, regions, region names, regions_class_order) of a v2 ``labels`` entry."""
    labels = dj["labels"]
    if "ignore" in labels:
        raise DataError(f"{where}: the nnU-Net 'ignore' label is not supported; remove it from 'labels'")
    vals, regions_raw = set(), []
    for name, v in labels.items():
        vs = [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
        vals.update(vs)
        if isinstance(v, (list, tuple)):
            regions_raw.append((name, vs))
        elif int(v) != 0:
            regions_raw.append((name, vs))
    values = sorted(vals)
    if not values or values[0] != 0:
        raise DataError(f"{where}: labels must include background 0, got values {values}")
    lut = {v: i for i, v in enumerate(values)}
    is_regions = any(isinstance(v, (list, tuple)) for v in labels.values())
    if not is_regions:
        by_val = {int(v): k for k, v in labels.items()}
        return values, [by_val[v] for v in values], None, None, None
    if "regions_class_order" not in dj:
        raise DataError(f"{where}: region labels (lists of values) need 'regions_class_order'")
    rco = [lut[int(v)] for v in dj["regions_class_order"]]
    regions = [[lut[v] for v in vs] for _, vs in regions_raw]
    if len(rco) != len(regions):
        raise DataError(f"{where}: regions_class_order has {len(rco)} entries for {len(regions)} regions")
    return values, [f"label {v}" if v else "background" for v in values], regions, [n for n, _ in regions_raw], rco


def _nnunet_folder(root: Path, folder: str, ending: str, n_ch: int, label_folder: Optional[str],
                   problems: List[str]) -> List[VolumeCase]:
    idir = root / folder
    if not idir.is_dir():
        return []
    chans: Dict[str, Dict[int, Path]] = {}
    for p in sorted(idir.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if not p.name.endswith(ending):
            if p.name.lower().endswith(NIFTI_EXTENSIONS):
                problems.append(f"{p}: file ending differs from dataset.json's file_ending {ending!r}")
            continue
        case, _, idx = p.name[: -len(ending)].rpartition("_")
        if not (idx.isdigit() and len(idx) == 4 and case):
            problems.append(f"{p}: images must be named <case>_XXXX{ending} (channel index)")
            continue
        chans.setdefault(case, {})[int(idx)] = p
    ldir = root / label_folder if label_folder else None
    labels = {}
    if ldir is not None and ldir.is_dir():
        labels = {p.name[: -len(ending)]: p for p in sorted(ldir.iterdir())
                  if p.is_file() and not p.name.startswith(".") and p.name.endswith(ending)}
        orphans = sorted(set(labels) - set(chans))
        if orphans:
            problems.append(f"{len(orphans)} label(s) in {ldir} have no image in {idir}: {orphans[:5]}")
    cases = []
    for case in sorted(chans):
        files = chans[case]
        c = VolumeCase(case, [files[i] for i in sorted(files)], labels.get(case))
        missing = [i for i in range(n_ch) if i not in files]
        extra = [i for i in files if i >= n_ch]
        if missing:
            c.problems.append(f"case {case!r}: channel file(s) {', '.join(f'{case}_{i:04d}{ending}' for i in missing)}"
                              f" missing in {idir} (dataset.json declares {n_ch} channel(s))")
        if extra:
            c.problems.append(f"case {case!r}: channel file(s) {[f'_{i:04d}' for i in extra]} beyond the {n_ch} "
                              "channel(s) dataset.json declares")
        if ldir is not None and ldir.is_dir() and c.label is None and folder == "imagesTr":
            c.problems.append(f"case {case!r}: no label {case}{ending} in {ldir}")
        cases.append(c)
    return cases


def read_nnunet_volumes(root) -> VolumeSet:
    """An nnU-Net v2 raw data set of NIfTI volumes (module docstring)."""
    r = require_dir(root, VOLUME_LAYOUTS)
    p = r / "dataset.json"
    if not p.is_file():
        raise MissingDataError(f"{r} has no dataset.json; expected layout:\n{VOLUME_LAYOUTS}")
    dj = _read_json(p)
    missing = [k for k in ("channel_names", "labels", "file_ending") if k not in dj]
    if missing:
        raise DataError(f"{p} lacks {missing}; nnU-Net v2 needs channel_names, labels, file_ending")
    ending = dj["file_ending"]
    if ending not in NIFTI_EXTENSIONS:
        raise DataError(f"{p}: file_ending {ending!r} is not a volume format (.nii.gz, .nii); a 2D data set needs a "
                        "2D network")
    ch = dj["channel_names"]
    names = [ch[k] for k in sorted(ch, key=lambda k: int(k))]
    values, cnames, regions, rnames, rco = _nnunet_labels(dj, p)
    problems: List[str] = []
    train = _nnunet_folder(r, "imagesTr", ending, len(names), "labelsTr", problems)
    if not (r / "imagesTr").is_dir():
        raise MissingDataError(f"{r} has no imagesTr/ folder; expected layout:\n{VOLUME_LAYOUTS}")
    if not (r / "labelsTr").is_dir():
        problems.append(f"{r} has no labelsTr/ folder (the labels of imagesTr); expected layout:\n{VOLUME_LAYOUTS}")
    test = _nnunet_folder(r, "imagesTs", ending, len(names), "labelsTs", problems)
    n = dj.get("numTraining")
    if n is not None and int(n) != len(train):
        problems.append(f"{p}: numTraining is {n} but imagesTr holds {len(train)} case(s); fix numTraining or the "
                        "files")
    sf = r / "splits_final.json"
    return VolumeSet(r, "nnunet", names, values, cnames, train, test, regions, rnames, rco,
                     [_scheme(n) for n in names], problems, sf if sf.is_file() else None)


# ----------------------------------------------------------------------------------------------------------------
# Medical Segmentation Decathlon
# ----------------------------------------------------------------------------------------------------------------
def read_msd(root) -> VolumeSet:
    """A Medical Segmentation Decathlon task folder (``TaskXX_Name``): 4-D images, ``dataset.json`` with
    ``modality``, ``labels``, ``training``, ``test``."""
    r = require_dir(root, VOLUME_LAYOUTS)
    p = r / "dataset.json"
    dj = _read_json(p)
    missing = [k for k in ("modality", "labels", "training") if k not in dj]
    if missing:
        raise DataError(f"{p} lacks {missing}; a Decathlon dataset.json has modality, labels, training, test")
    names = [dj["modality"][k] for k in sorted(dj["modality"], key=lambda k: int(k))]
    labels = {int(k): v for k, v in dj["labels"].items()}
    values = sorted(labels)
    problems: List[str] = []

    def resolve(rel: str) -> Path:
        return (r / rel).resolve() if not Path(rel).is_absolute() else Path(rel)

    train, listed = [], set()
    for entry in dj["training"]:
        ip, lp = resolve(entry["image"]), resolve(entry["label"])
        cid = strip_ext(ip.name)
        listed.add(ip.name)
        c = VolumeCase(cid, [ip], lp, four_d=True)
        for what, f in (("image", ip), ("label", lp)):
            if not f.is_file():
                c.problems.append(f"case {cid!r}: {p.name} lists the {what} {entry[what]} but {f} does not exist")
        train.append(c)
    test = []
    for rel in dj.get("test", []):
        ip = resolve(rel if isinstance(rel, str) else rel["image"])
        c = VolumeCase(strip_ext(ip.name), [ip], None, four_d=True)
        if not ip.is_file():
            c.problems.append(f"case {c.case_id!r}: {p.name} lists the test image {rel} but {ip} does not exist")
        test.append(c)
    if (r / "imagesTr").is_dir():
        unlisted = [f.name for f in _nii(r / "imagesTr") if f.name not in listed]
        if unlisted:
            problems.append(f"{len(unlisted)} image(s) in {r / 'imagesTr'} are not listed in {p.name}'s training: "
                            f"{unlisted[:5]}; add them or remove the files")
    n = dj.get("numTraining")
    if n is not None and int(n) != len(train):
        problems.append(f"{p}: numTraining is {n} but training lists {len(train)} case(s)")
    return VolumeSet(r, "msd", names, values, [labels[v] for v in values], train, test,
                     normalization=[_scheme(n) for n in names], problems=problems)


# ----------------------------------------------------------------------------------------------------------------
# BraTS and per-case folders
# ----------------------------------------------------------------------------------------------------------------
#: BraTS 2013-2020 naming: channel suffixes (order as the MSD BrainTumour task: FLAIR, T1, T1ce, T2), label values
BRATS_2020 = {"channels": ["flair", "t1", "t1ce", "t2"], "label": "seg", "sep": "_", "values": [0, 1, 2, 4],
              "class_names": ["background", "NCR/NET", "ED", "ET"]}
#: BraTS 2023 naming (SegMamba's channel order t1n, t1c, t2w, t2f), label values 0/1/2/3
BRATS_2023 = {"channels": ["t1n", "t1c", "t2w", "t2f"], "label": "seg", "sep": "-", "values": [0, 1, 2, 3],
              "class_names": ["background", "NCR", "SNFH", "ET"]}
#: WT, TC, ET in class indices (both conventions after remapping to 0..3: 1 necrotic core, 2 oedema, 3 enhancing)
BRATS_REGIONS = [[1, 2, 3], [1, 3], [3]]
BRATS_REGION_NAMES = ["WT", "TC", "ET"]
BRATS_REGIONS_CLASS_ORDER = [2, 1, 3]   # WT -> oedema, TC -> necrotic core, ET -> enhancing (outer -> inner)


def _is_glob(s: str) -> bool:
    return any(ch in s for ch in "*?[")


def _match(files: Sequence[Path], name: str) -> List[Path]:
    if _is_glob(name):
        return [f for f in files if fnmatch.fnmatch(f.name, name)]
    low = name.lower()
    out = []
    for f in files:
        stem = strip_ext(f.name).lower()
        if stem == low or any(stem.endswith(sep + low) for sep in ("_", "-", ".")):
            out.append(f)
    return out


def _case_dirs(r: Path) -> List[Path]:
    return sorted(d for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))


def _folder_cases(r: Path, channels: Sequence[str], label: Optional[str],
                  shown: Optional[Sequence[str]] = None) -> List[VolumeCase]:
    shown = list(shown) if shown is not None else list(channels)
    cases = []
    for d in _case_dirs(r):
        files = _nii(d)
        if not files:
            continue
        c = VolumeCase(d.name, [])
        lab = _match(files, label) if label else []
        for ch, name in zip(channels, shown):
            hits = [f for f in _match(files, ch) if f not in lab]
            if not hits:
                c.problems.append(f"case {d.name!r}: no {name!r} channel file in {d} (found "
                                  f"{[f.name for f in files]})")
            elif len(hits) > 1:
                c.problems.append(f"case {d.name!r}: {len(hits)} files match the channel {name!r} in {d}: "
                                  f"{[f.name for f in hits]}; name it more precisely (a glob)")
            else:
                c.images.append(hits[0])
        if len(lab) > 1:
            c.problems.append(f"case {d.name!r}: {len(lab)} files match the label {label!r}: {[f.name for f in lab]}")
        c.label = lab[0] if lab else None
        cases.append(c)
    return cases


def _brats_version(r: Path) -> Optional[dict]:
    for d in _case_dirs(r)[:5]:
        stems = [strip_ext(f.name).lower() for f in _nii(d)]
        for conv in (BRATS_2023, BRATS_2020):
            found = sum(any(s.endswith(conv["sep"] + ch) for s in stems) for ch in conv["channels"])
            if found >= 3:
                return conv
    return None


def read_brats(root) -> VolumeSet:
    """BraTS as downloaded: one folder per case, one file per sequence (2013-2020 or 2023 naming, detected)."""
    r = require_dir(root, VOLUME_LAYOUTS)
    conv = _brats_version(r)
    if conv is None:
        raise DataError(f"{r}: no BraTS case folder found (<case>/<case>_flair.nii.gz ... or <case>-t1c.nii.gz ...)"
                        f"; expected layout:\n{VOLUME_LAYOUTS}")
    sep = conv["sep"]
    cases = _folder_cases(r, [f"*{sep}{c}.nii*" for c in conv["channels"]], f"*{sep}{conv['label']}.nii*",
                          conv["channels"])
    train = [c for c in cases if c.label is not None]
    test = [c for c in cases if c.label is None]
    name = "brats2023" if conv is BRATS_2023 else "brats2020"
    vs = VolumeSet(r, name, list(conv["channels"]), list(conv["values"]), list(conv["class_names"]), train, test,
                   [list(x) for x in BRATS_REGIONS], list(BRATS_REGION_NAMES), list(BRATS_REGIONS_CLASS_ORDER),
                   ["zscore"] * 4)
    vs.notes += _unlabelled_note(train, test, conv["label"])
    return vs


def _unlabelled_note(train, test, label) -> List[str]:
    if train and test:
        return [f"{len(test)} case folder(s) have no {label!r} label file and are used as unlabelled (test) cases: "
                f"{[c.case_id for c in test][:5]}"]
    return []


def _labels_arg(labels, where) -> Tuple[Optional[List[int]], Optional[List[str]]]:
    if labels is None:
        return None, None
    if isinstance(labels, dict):  # {name: value} (nnU-Net style) or {value: name} (MSD style)
        items = [(int(v), str(k)) if not str(k).lstrip("-").isdigit() else (int(k), str(v)) for k, v in labels.items()]
        items.sort()
        return [v for v, _ in items], [n for _, n in items]
    vals = sorted(int(v) for v in labels)
    return vals, [str(v) for v in vals]


def _infer_label_values(cases: Sequence[VolumeCase]) -> List[int]:
    vals = {0}
    for c in cases:
        if c.label is not None and c.label.is_file():
            try:
                vals.update(int(v) for v in unique_values(read_nifti_volume(c.label, label=True).array))
            except DataError:
                pass  # the check reports it
    return sorted(vals)


def read_case_folders(root, channels: Sequence[str], label: Optional[str] = None, labels=None,
                      normalization=None) -> VolumeSet:
    """``root/<case>/<one file per channel> + <label file>`` with the channel and label files named by the user
    (names or globs, see the module docstring). ``labels``: the raw label values (list) or ``{name: value}``; None
    reads every label once to collect the values present."""
    r = require_dir(root, VOLUME_LAYOUTS)
    if isinstance(channels, str):
        channels = [channels]
    if not channels:
        raise DataError("per-case folders need channels=[...] naming the channel files (e.g. ['flair', 't1c'])")
    cases = _folder_cases(r, list(channels), label)
    if not cases:
        raise DataError(f"{r}: no case folder holds NIfTI files; expected layout:\n{VOLUME_LAYOUTS}")
    train = [c for c in cases if c.label is not None] if label else []
    test = [c for c in cases if c.label is None] if label else cases
    if label and not train:
        raise DataError(f"{r}: no case folder has a label file matching {label!r}")
    values, names = _labels_arg(labels, r)
    declared = values is not None
    if values is None:
        values = _infer_label_values(train)
        names = ["background"] + [f"label {v}" for v in values[1:]]
    ch_names = [c.strip("*?[]._-") or c for c in channels]
    return VolumeSet(r, "folders", ch_names, values, names, train, test,
                     normalization=_norm_arg(normalization, len(channels)), labels_declared=declared,
                     notes=_unlabelled_note(train, test, label) if label else [])


def _norm_arg(normalization, n: int) -> List[str]:
    if normalization is None:
        return ["zscore"] * n
    if isinstance(normalization, str):
        return [_scheme(normalization)] * n
    if len(normalization) != n:
        raise DataError(f"normalization names {len(normalization)} scheme(s) for {n} channel(s)")
    return [_scheme(s) for s in normalization]


def read_image_label_folders(root, labels=None, normalization=None) -> VolumeSet:
    """Today's one-channel NIfTI layouts (``images/ + labels/`` or one folder with ``<case>_gt``), as volumes."""
    from .nifti import nifti_pairs

    r = require_dir(root, VOLUME_LAYOUTS)
    triples = nifti_pairs(r)
    train = [VolumeCase(c, [a], b) for c, a, b in triples]
    values, names = _labels_arg(labels, r)
    declared = values is not None
    if values is None:
        values = _infer_label_values(train)
        names = ["background"] + [f"label {v}" for v in values[1:]]
    return VolumeSet(r, "nifti", ["image"], values, names, train, normalization=_norm_arg(normalization, 1),
                     labels_declared=declared)


def volume_set_from_files(files, like: Optional[VolumeSet] = None, case_id: Optional[str] = None) -> VolumeSet:
    """One unlabelled case (in ``test``) from its channel files (one 3-D file per channel, or one 4-D file holding
    every channel), with the channels, labels and regions of ``like`` (the training data set) when given: what
    ``predict`` needs for a single file."""
    paths = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
    if not paths:
        raise DataError("no file given")
    for p in paths:
        if not p.is_file():
            raise MissingDataError(f"file not found: {p}")
    cid = case_id or strip_ext(paths[0].name)
    four_d = len(paths) == 1 and (like is None or like.in_channels > 1)
    case = VolumeCase(cid, paths, None, four_d=four_d)
    root = paths[0].parent
    if like is not None:
        return VolumeSet(root, "files", list(like.channel_names), list(like.label_values), list(like.class_names), [],
                         [case], like.regions, like.region_names, like.regions_class_order, list(like.normalization))
    if four_d:
        from .nifti import nifti_header
        shp = nifti_header(paths[0]).shape
        n = shp[3] if len(shp) == 4 else 1
        case.four_d = len(shp) == 4
    else:
        n = len(paths)
    return VolumeSet(root, "files", [f"channel {i}" for i in range(n)], [0, 1], ["background", "label 1"], [], [case],
                     normalization=["zscore"] * n, labels_declared=False)


def _unlabelled_flat(r: Path, normalization) -> Optional[VolumeSet]:
    files = _nii(r)
    if not files or (r / "dataset.json").is_file():
        return None
    cases = [VolumeCase(strip_ext(f.name), [f], None, four_d=False) for f in files]
    return VolumeSet(r, "files", ["image"], [0, 1], ["background", "label 1"], [], cases,
                     normalization=_norm_arg(normalization, 1), labels_declared=False)


def _regions_arg(regions, values: Sequence[int], where) -> Tuple[List[List[int]], List[str], Optional[List[int]]]:
    """``{name: [raw label values]}`` (outer -> inner) -> (regions as class indices, names, regions_class_order:
    each region's one class not in a later region, None when that is not one class)."""
    if not isinstance(regions, dict) or not regions:
        raise DataError(f"regions must map a name to raw label values, e.g. {{WT: [1, 2, 4], TC: [1, 4], ET: [4]}}; "
                        f"got {regions!r}")
    lut = {int(v): i for i, v in enumerate(values)}
    out, names = [], []
    for name, vs in regions.items():
        vs = [vs] if isinstance(vs, int) else list(vs or [])
        bad = [v for v in vs if int(v) not in lut or lut[int(v)] == 0]
        if not vs or bad:
            raise DataError(f"{where}: region {name!r} lists {vs!r}; give foreground label values of the data "
                            f"({list(values)[1:]})")
        out.append(sorted(lut[int(v)] for v in vs))
        names.append(str(name))
    order: Optional[List[int]] = []
    for i, r in enumerate(out):
        own = set(r) - {c for later in out[i + 1:] for c in later}
        if len(own) != 1:
            order = None
            break
        order.append(own.pop())
    return out, names, order


def read_volume_set(root, channels: Optional[Sequence[str]] = None, label: Optional[str] = None, labels=None,
                    normalization=None, regions=None) -> VolumeSet:
    """Recognise the layout of ``root`` (module docstring) and read its case list (no voxel is read, except the
    labels of layouts that do not declare their label values). ``normalization`` overrides the scheme per channel
    (``"CT"``, ``"zscore"``, ``"nonorm"``; one name for all channels or a list). ``regions``: ``{name: [raw label
    values]}`` declared for the data set (outer -> inner, e.g. BraTS 2023 ``{WT: [1, 2, 3], TC: [1, 3], ET: [3]}``),
    replacing the layout's own."""
    r = require_dir(root, VOLUME_LAYOUTS)
    if channels:
        vs = read_case_folders(r, channels, label, labels, normalization)
    elif (r / "dataset.json").is_file():
        dj = _read_json(r / "dataset.json")
        if "channel_names" in dj:
            vs = read_nnunet_volumes(r)
        elif "modality" in dj and "training" in dj:
            vs = read_msd(r)
        else:
            raise DataError(f"{r / 'dataset.json'} is neither nnU-Net v2 (channel_names, labels, file_ending) nor "
                            "Decathlon (modality, labels, training)")
        if normalization is not None:
            vs.normalization = _norm_arg(normalization, vs.in_channels)
    elif _brats_version(r) is not None:
        vs = read_brats(r)
        if normalization is not None:
            vs.normalization = _norm_arg(normalization, vs.in_channels)
    elif any((r / d).is_dir() for d in ("images", "imagesTr", "image", "volumes")) or _nii(r):
        try:
            vs = read_image_label_folders(r, labels, normalization)
        except DataError:
            vs = _unlabelled_flat(r, normalization)  # a folder of volumes to predict (no labels)
            if vs is None:
                raise
    else:
        raise DataError(f"{r}: no volumetric layout recognised (no dataset.json, no BraTS case folders, no "
                        f"images/labels folders); for other per-case folders pass channels=[...] and label=...; "
                        f"layouts:\n{VOLUME_LAYOUTS}")
    if labels is not None and vs.layout in ("nnunet", "msd", "brats2020", "brats2023"):
        vals, names = _labels_arg(labels, r)
        vs.label_values, vs.class_names = vals, names
    if regions is not None:
        vs.regions, vs.region_names, vs.regions_class_order = _regions_arg(regions, vs.label_values, r)
    return vs


# ----------------------------------------------------------------------------------------------------------------
# splits
# ----------------------------------------------------------------------------------------------------------------
def select_cases(vs: VolumeSet, split: str = "train", fold: int = 0, splits_file=None,
                 ratios: Optional[Sequence[float]] = None, seed: int = 0) -> List[VolumeCase]:
    """The cases of ``split``: ``"all"`` = every labelled training case; ``"train"``/``"val"`` = fold ``fold`` of
    ``splits_file`` (or the data set's ``splits_final.json``), else of a ratio split when ``ratios`` are given,
    else of nnU-Net's default 5-fold split; ``"test"`` = the test cases (imagesTs, case folders without label) or
    the ratio split's test part."""
    from .splits import kfold_split, load_split, ratio_split

    by_id = {c.case_id: c for c in vs.train}
    if split in ("all", None):
        return list(vs.train)
    sf = splits_file if splits_file is not None else vs.splits_file
    if sf is not None:
        sp = load_split(sf)
        if isinstance(sp, list):
            sp = sp[fold]
    elif ratios is not None:
        sp = ratio_split(sorted(by_id), ratios, seed)
    elif split == "test":
        return list(vs.test)
    else:
        if len(by_id) < 2:
            raise DataError(f"{vs.root}: {len(by_id)} labelled case(s); a train/val split needs at least 2 (use "
                            "split='all')")
        sp = kfold_split(sorted(by_id), min(5, len(by_id)), fold, 12345)
    if split == "test" and "test" not in sp:
        return list(vs.test)
    if split not in sp:
        raise ValueError(f"split {split!r} not in {sorted(sp)}; choose one of them or 'all'")
    test_ids = {c.case_id: c for c in vs.test}
    missing = [c for c in sp[split] if c not in by_id and c not in test_ids]
    if missing:
        raise DataError(f"the split lists cases not in {vs.root}: {missing[:5]}")
    return [by_id.get(c) or test_ids[c] for c in sp[split]]


# ----------------------------------------------------------------------------------------------------------------
# loading one case
# ----------------------------------------------------------------------------------------------------------------
def _direction(affine: np.ndarray) -> np.ndarray:
    m = np.asarray(affine, np.float64)[:3, :3]
    n = np.linalg.norm(m, axis=0)
    return m / np.where(n > 0, n, 1.0)


def geometry_mismatch(a: NiftiVolume, b: NiftiVolume, tol: float = GEOMETRY_TOL) -> Optional[str]:
    """None when ``a`` and ``b`` share the voxel grid (shape, spacing, orientation, origin within ``tol``), else a
    phrase saying what differs."""
    sa, sb = tuple(a.shape[:3]), tuple(b.shape[:3])
    if sa != sb:
        return f"shape {sa} vs {sb}"
    spa, spb = np.asarray(a.spacing, float), np.asarray(b.spacing, float)
    if not np.allclose(spa, spb, rtol=tol, atol=0):
        return f"spacing {tuple(round(float(x), 4) for x in spa)} vs {tuple(round(float(x), 4) for x in spb)}"
    if not np.allclose(_direction(a.affine), _direction(b.affine), atol=tol):
        import nibabel as nib
        oa = "".join(nib.aff2axcodes(a.affine))
        ob = "".join(nib.aff2axcodes(b.affine))
        return f"orientation {oa} vs {ob} (direction cosines differ)"
    unit = max(float(np.min(np.abs(spa))), 1e-6)
    if not np.allclose(a.affine[:3, 3], b.affine[:3, 3], atol=tol * unit * 100):
        return (f"origin {tuple(round(float(x), 3) for x in a.affine[:3, 3])} vs "
                f"{tuple(round(float(x), 3) for x in b.affine[:3, 3])}")
    return None


def label_to_index(raw: np.ndarray, values: Sequence[int], source: str) -> np.ndarray:
    """Raw label values -> class indices (position in ``values``); raises naming the values outside them."""
    vals = unique_values(raw) if raw.size else np.zeros(0, np.int64)
    vset = np.asarray(values, np.int64)
    bad = [int(v) for v in vals if int(v) not in set(vset.tolist())]
    if bad:
        raise DataError(f"{source}: label values {bad[:16]} are outside the data set's labels {list(values)} "
                        f"(values found: {vals[:16].tolist()}); fix the label file or declare the labels")
    if list(values) == list(range(len(values))):
        return raw.astype(np.int64, copy=False)
    return np.searchsorted(vset, raw).astype(np.int64)


def _channel_volumes(case: VolumeCase, n_channels: int) -> List[NiftiVolume]:
    """The case's channels as 3-D NiftiVolumes (a 4-D MSD file is split along its last axis)."""
    out = []
    for f in case.images:
        v = read_nifti_volume(f)
        a = v.array
        if a.ndim == 4 and (case.four_d or a.shape[3] == 1):
            for ch in range(a.shape[3]):
                out.append(NiftiVolume(f, a[..., ch], v.affine, v.spacing, v.header, a.shape[:3], v.dtype))
            continue
        if a.ndim == 4:
            raise DataError(four_d_message(f, a.shape))
        if a.ndim != 3 or a.shape[2] == 1:
            raise DataError(two_d_message(f, a.shape))
        out.append(v)
    if len(out) != n_channels:
        raise DataError(f"case {case.case_id!r}: {len(out)} channel(s) in {[f.name for f in case.images]} but the "
                        f"data set has {n_channels}")
    return out


def four_d_message(path, shape) -> str:
    return (f"{path} is 4-D {tuple(shape)} (x, y, z, {shape[3]} channels) but this layout wants one 3-D file per "
            f"channel: split it into {shape[3]} files (nibabel.funcs.four_to_three) or use the Decathlon layout "
            "(dataset.json with modality, 4-D images)")


def two_d_message(path, shape) -> str:
    return (f"{path} is a 2-D image {tuple(shape)}; a 3D network needs volumes (x, y, z with z > 1): use a 2D "
            "network for 2-D data or give the volumes")


def load_case(case: VolumeCase, vs: VolumeSet, with_label: bool = True):
    """Read one case: ``(image float32 (C, I, J, K), label int64 (I, J, K) class indices or None, meta)``.

    ``meta``: case_id, source_files, affine (4x4 list of the first channel file), spacing, shape, header (nibabel
    header of the first channel), reference_file. Raises :class:`DataError` on every problem the check reports."""
    if case.problems:
        raise DataError(case.problems[0])
    chans = _channel_volumes(case, vs.in_channels)
    ref = chans[0]
    for k, v in enumerate(chans[1:], 1):
        why = geometry_mismatch(ref, v)
        if why is not None:
            raise DataError(f"case {case.case_id!r}: channel {k} ({v.path.name}) and channel 0 ({ref.path.name}) "
                            f"differ in {why}; resample the channels onto one grid")
    from .base import nonfinite_summary
    for v in chans:
        bad = nonfinite_summary(v.array, locate=True)
        if bad:
            raise DataError(f"case {case.case_id!r}: {v.path} holds NaN or inf values ({bad}); fix or replace the "
                            "file")
    if any(float(s) <= 0 for s in ref.spacing):
        raise DataError(f"{ref.path}: spacing {ref.spacing} has a zero or negative value; fix the header's pixdim")
    image = np.stack([np.asarray(v.array, np.float32) for v in chans])
    label = None
    if with_label and case.label is not None:
        lv = read_nifti_volume(case.label, label=True)
        if lv.array.ndim == 4 and lv.array.shape[3] == 1:
            lv = NiftiVolume(lv.path, lv.array[..., 0], lv.affine, lv.spacing, lv.header, lv.array.shape[:3], lv.dtype)
        why = geometry_mismatch(ref, lv)
        if why is not None:
            raise DataError(f"case {case.case_id!r}: label {lv.path.name} and image {ref.path.name} differ in {why}; "
                            "the label must lie on the image's grid")
        label = label_to_index(lv.array, vs.label_values, f"label {lv.path}")
    meta = {"case_id": case.case_id, "source_files": [str(f) for f in case.files],
            "affine": np.asarray(ref.affine).tolist(), "spacing": tuple(float(s) for s in ref.spacing),
            "shape": tuple(int(s) for s in image.shape[1:]), "header": ref.header,
            "reference_file": str(case.images[0])}
    return image, label, meta
