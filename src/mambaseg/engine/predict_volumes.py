"""``predict`` for 3-D networks: volumes in any layout -> preprocessing of training -> sliding window -> inverse
preprocessing -> NIfTI with the input's affine and header.

Inputs (``mambaseg predict --input``): single NIfTI files (3-D: one channel; 4-D: the channels on the last axis, as
the Decathlon ships them) or folders in any layout of :mod:`mambaseg.data.volumes` (nnU-Net raw, Decathlon, BraTS
2020/2023 case folders, image/label folders; per-case folders with the reader options the model was trained with);
a folder that is none of these is read as a flat folder of volumes, one NIfTI file per case.
Labelled and unlabelled cases are predicted alike; labels are not read.

Per case, as nnU-Net's predictor: the checkpoint's preprocessing plan (``checkpoint["volumetric"]["plan"]``:
target spacing, normalisation per channel, CT statistics) is applied (crop to the non-zero region, normalise,
resample), the sliding window gives logits on that grid, they become probabilities (softmax, or sigmoid per
region), are resampled back to the cropped original shape (order 1, ``mambaseg.data.preprocess.
invert_probabilities``) and pasted into the original shape, then argmax (or the regions in order) gives labels,
mapped back to the data set's raw label values (BraTS 2020: class 3 -> label 4). The file
``<out>/masks/<case>.nii.gz`` gets the first channel file's affine and header
(:func:`mambaseg.engine.volume_io.write_label_nifti`).

A case that cannot be read or predicted is skipped and listed (``PredictResult.errors`` and ``<out>/errors.txt``;
the CLI exits 3), the others are written.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import MambasegUserError
from .inference import PredictResult

__all__ = ["predict_volumes"]

_NIFTI = (".nii.gz", ".nii")


def _single_file_set(path: Path, info: dict):
    """A one-case VolumeSet for a NIfTI file (3-D: one channel, 4-D: channels last)."""
    from mambaseg.data.nifti import nifti_header
    from mambaseg.data.volumes import VolumeCase, VolumeSet
    shape = tuple(nifti_header(path).shape)
    four_d = len(shape) == 4 and shape[3] > 1
    name = path.name
    for ext in _NIFTI:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    if name.endswith("_0000"):
        name = name[:-5]
    n_ch = len(info["channel_names"])
    return VolumeSet(root=path.parent, layout="file", channel_names=list(info["channel_names"]),
                     label_values=list(info["label_values"]), class_names=[str(v) for v in info["label_values"]],
                     train=[VolumeCase(name, [path], None, four_d=four_d)],
                     normalization=list(info["plan"]["normalization"])[:n_ch])


def _cases(inputs: Sequence[str], info: dict, reader: dict):
    """``[(case, volume set)]`` of every input and ``[(input, error)]`` for inputs that cannot be listed."""
    from mambaseg.data.volumes import read_volume_set
    out, errors = [], []
    for s in inputs:
        p = Path(s).expanduser()
        try:
            if p.is_file():
                if not p.name.lower().endswith(_NIFTI):
                    raise MambasegUserError(f"not a NIfTI file (.nii.gz / .nii): a 3-D model predicts volumes")
                vs = _single_file_set(p, info)
            elif p.is_dir():
                try:
                    vs = read_volume_set(p, channels=reader.get("channels"), label=reader.get("label"))
                    if vs.layout == "files" and vs.in_channels != len(info["channel_names"]):
                        raise ValueError("flat folder of multi-channel (4-D) volumes")
                except Exception:  # noqa: BLE001 - no layout for this model: a flat folder of volumes to predict
                    flat = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                                  and f.name.lower().endswith(_NIFTI))
                    if not flat:
                        raise
                    for f in flat:
                        try:
                            one = _single_file_set(f, info)
                        except Exception as e:  # noqa: BLE001
                            errors.append((str(f), f"{type(e).__name__}: {e}"))
                            continue
                        out.append((one.train[0], one))
                    continue
            else:
                raise FileNotFoundError("no such file or folder")
        except Exception as e:  # noqa: BLE001 - listed, the other inputs go on
            errors.append((str(p), f"{type(e).__name__}: {e}"))
            continue
        vs.label_values = list(info["label_values"])  # class index -> the training data's raw label values
        for c in list(vs.train) + list(vs.test):
            out.append((c, vs))
    return out, errors


@torch.no_grad()
def predict_volumes(module, inputs: Sequence[str], out_dir: str, progress: bool = True, device: str = "cpu",
                    overwrite: bool = False):
    """Predict every volume of ``inputs`` into ``<out_dir>/masks/<case>.nii.gz`` (module docstring)."""
    from mambaseg.data.preprocess import PreprocessPlan, invert_probabilities, preprocess_case
    from mambaseg.data.volumes import load_case

    from .volume_io import write_label_nifti
    from .volumetric import infer_volume, probabilities_to_labels

    info = getattr(module, "volumetric_info", None)
    if not info:
        raise MambasegUserError("this 3-D checkpoint holds no preprocessing plan (checkpoint['volumetric']); it "
                                "was written before 3-D predict existed: retrain, or save it again from a run")
    plan = PreprocessPlan.from_dict(info["plan"])
    hp = module.hparams
    regions = getattr(module, "_regions", None)
    reader = {k: v for k, v in (info.get("reader") or {}).items() if v is not None}
    res = PredictResult()
    cases, res.errors = _cases(inputs, info, reader)
    if not cases:
        raise MambasegUserError("nothing to predict: " + "; ".join(f"{p}: {m}" for p, m in res.errors)
                                + " (pass NIfTI files or folders of volumes)")
    out = Path(out_dir)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    net = module.net.to(device).eval()
    values = np.asarray(info["label_values"], np.int64)
    names: List[str] = []
    it = cases
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(cases, desc="predict", unit="volume")
    for case, vs in it:
        name = case.case_id
        k = 2
        while name in names:  # the same case id in two inputs
            name = f"{case.case_id}-{k}"
            k += 1
        names.append(name)
        dest = out / "masks" / f"{name}.nii.gz"
        try:
            if dest.exists() and not overwrite:
                raise FileExistsError(f"{dest} exists; choose another --out, or pass --overwrite to replace it")
            image, _, meta = load_case(case, vs, with_label=False)
            if image.shape[0] != int(hp.in_channels):
                raise MambasegUserError(f"{image.shape[0]} channel(s), the model takes {hp.in_channels} "
                                        f"({', '.join(info['channel_names'])})")
            img, _, props = preprocess_case(image, None, meta["spacing"], plan)
            logits, _ = infer_volume(net, torch.from_numpy(img), module.sliding_window, regions,
                                     progress=progress, desc=name)
            probs = (torch.sigmoid(logits) if regions is not None else torch.softmax(logits, 0)).numpy()
            probs = invert_probabilities(probs, props, regions=regions is not None)
            labels = values[probabilities_to_labels(probs, regions)]
            write_label_nifti(labels, dest, meta["reference_file"], overwrite=overwrite)
            res.written.append(str(dest))
        except FileExistsError:
            raise
        except Exception as e:  # noqa: BLE001 - skip this case, keep going; listed at the end
            res.errors.append((", ".join(str(f) for f in case.images), f"{type(e).__name__}: {e}"))
    if res.errors:
        from .io import atomic_write_text
        atomic_write_text(str(out / "errors.txt"), "".join(f"{p}\t{msg}\n" for p, msg in res.errors))
    elif overwrite and (out / "errors.txt").exists():
        (out / "errors.txt").unlink()
    return res
