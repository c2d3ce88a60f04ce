"""Predict masks for a folder of images or NIfTI volumes with a trained checkpoint.

* 2D images (PNG/JPG/BMP/TIFF) -> ``<out>/masks/<name>.png``: 0/255 for binary models, class indices (uint8) for
  multi-class ones; ``<out>/overlays/<name>.png``: the prediction blended over the image in colour.
* NIfTI volumes (``.nii``/``.nii.gz``) -> ``<out>/masks/<case>.nii.gz`` with the input's affine and header
  (slice-wise inference along z, as in training), plus an overlay PNG of the slice with the most foreground.
* A 3-D model (``spatial_dims == 3``): volumes in any layout, preprocessed as in training, sliding window, inverse
  preprocessing, NIfTI with the input's affine (:mod:`mambaseg.engine.predict_volumes`).

Every input is preprocessed with the evaluation transform the model was trained with (``preprocess`` preset at
``image_size``) and the logits are resized back to the input size. An unreadable input is skipped, listed at the
end (and in ``<out>/errors.txt``), and the rest are processed. Existing outputs are never overwritten unless
``overwrite=True`` (``mambaseg predict --overwrite``).

Output names are the input names without extension; inputs that share one (``a.jpg``, ``a.png``) keep their
extension (``a.jpg.png``, ``a.png.png``), and the same file name in two folders gets ``-2``, ``-3``, ...

Inputs that do not match what the model was trained on are converted, with one warning per kind of conversion
and run (``PredictResult.warnings``): a grayscale image for an RGB model has its channel copied to R, G and B, a
colour image for a grayscale model is converted with ITU-R 601 luma, an alpha channel is dropped, and a 16-bit
image is scaled to the 8-bit range (divided by 257) that ``read_image`` gives 8-bit images in, before the model's
preprocessing.
"""

from __future__ import annotations

import inspect
import os

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mambaseg.data.base import read_image
from mambaseg.data.nifti import read_nifti, save_nifti
from mambaseg.data.transforms import preset_transforms
from mambaseg.models.hub import is_pretrained_folder, not_a_model_folder

from .errors import MambasegUserError
from .inference import PredictResult, logits_to_labels, predict_logits_2d, predict_volume
from .io import (DiskFullError, UnwritableError, atomic_path, atomic_write_bytes, atomic_write_text,
                 check_mambaseg_checkpoint, load_checkpoint)
from .module import SegmentationModule
from .pretrained_folder import load_folder_module

__all__ = ["PredictResult", "load_module", "collect_inputs", "output_names", "predict_paths", "overlay"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_EXTS = (".nii.gz", ".nii")


def load_module(ckpt: str, device: str = "cpu"):
    """``SegmentationModule`` from a mambaseg checkpoint (clear errors for a missing or foreign file), or the
    equivalent of one from a pretrained folder (``save_pretrained`` / ``mambaseg export --format folder``)."""
    if is_pretrained_folder(ckpt):
        return load_folder_module(ckpt, device=device)
    if os.path.isdir(ckpt):  # a folder that is no pretrained folder: say what it lacks
        raise MambasegUserError(not_a_model_folder(ckpt))
    if not os.path.isfile(ckpt):
        raise FileNotFoundError(f"checkpoint {ckpt!r} does not exist (expected RUN/checkpoints/best.ckpt)")
    data = load_checkpoint(ckpt)  # weights_only=True: a checkpoint is data, never code
    check_mambaseg_checkpoint(data, ckpt)
    known = set(inspect.signature(SegmentationModule.__init__).parameters)
    hp = {k: v for k, v in dict(data["hyper_parameters"]).items() if k in known}
    hp["pretrained"] = None  # the weights come from the checkpoint
    module = SegmentationModule(**hp)
    missing, unexpected = module.load_state_dict(data["state_dict"], strict=False)
    if missing or unexpected:
        raise MambasegUserError(f"checkpoint {ckpt!r} does not fit its own network ({len(missing)} missing, "
                                f"{len(unexpected)} unexpected weights, e.g. {(list(missing) + list(unexpected))[0]}"
                                "); it was edited or written by another mambaseg version")
    if data.get("volumetric"):
        module.volumetric_info = data["volumetric"]  # 3-D: the preprocessing plan and label values for predict
    module.to(device)
    module.eval()
    return module


def _name(path: Path) -> str:
    n = path.name
    for ext in NIFTI_EXTS + IMAGE_EXTS:
        if n.lower().endswith(ext):
            return n[: -len(ext)]
    return path.stem


def output_names(files: Sequence[Path]) -> List[str]:
    """Distinct output base names: the name without extension, with the extension kept for inputs that share it
    (``a.jpg`` / ``a.png`` -> ``a.jpg`` / ``a.png``), then ``-2``, ``-3`` for equal file names in other folders."""
    stems = [_name(f) for f in files]
    count: Dict[str, int] = {}
    for st in stems:
        count[st.lower()] = count.get(st.lower(), 0) + 1
    names = [f.name if count[st.lower()] > 1 else st for f, st in zip(files, stems)]
    seen: Dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n.lower(), 0) + 1
        seen[n.lower()] = k
        out.append(n if k == 1 else f"{n}-{k}")
    return out


def collect_inputs(inputs: Sequence[str]) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """Files to predict (folders are listed, sorted; a file named twice is predicted once) and errors for inputs
    that do not exist."""
    files, errors = [], []
    for s in inputs:
        p = Path(os.path.expanduser(s))
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                           and f.name.lower().endswith(IMAGE_EXTS + NIFTI_EXTS))
            if not found:
                errors.append((str(p), f"no images ({', '.join(IMAGE_EXTS)}) or NIfTI files in this folder"))
            files += found
        elif p.is_file():
            files.append(p)
        else:
            errors.append((str(p), "no such file or folder"))
    unique, seen = [], set()
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, errors


def _palette(k: int) -> np.ndarray:
    base = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], dtype=np.uint8)
    return base[np.arange(k) % len(base)]


def overlay(image: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 overlay of ``labels`` (H, W) on ``image`` (H, W[, C], any range)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    colours = _palette(max(num_classes, 2)).astype(np.float32)
    out = img.copy()
    fg = labels > 0
    out[fg] = (1 - alpha) * img[fg] + alpha * colours[labels[fg]]
    return np.clip(out, 0, 255).astype(np.uint8)


def _eval_transform(module) -> Optional[Callable]:
    hp = module.hparams
    if not hp.get("preprocess"):
        return None
    return preset_transforms(hp.preprocess, hp.image_size, train=False)


def _save_png(arr: np.ndarray, path: Path) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(str(path), buf.getvalue())


def _check_free(path: Path, overwrite: bool = False) -> Path:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another --out, or pass --overwrite to replace it")
    return path


class _Conversions:
    """Input conversions of one run: counted per kind, reported once (``messages()``)."""

    def __init__(self):
        self.kinds: Dict[str, List] = {}   # kind -> [message, count, first input]

    def add(self, kind: str, message: str, where: str) -> None:
        entry = self.kinds.setdefault(kind, [message, 0, where])
        entry[1] += 1

    def messages(self) -> List[str]:
        return [f"{n} input(s) {msg} (first: {first})" for msg, n, first in self.kinds.values()]


def _image_mode(path: Path) -> str:
    from PIL import Image
    try:
        with Image.open(str(path)) as im:
            return im.mode
    except Exception:  # read_image reports unreadable files
        return ""


def _fit_image(image: np.ndarray, mode: str, channels: int, conv: _Conversions, where: str,
               preprocess: Optional[str]) -> np.ndarray:
    """Bit depth and channels of a read image brought to what the model takes, each conversion recorded."""
    if mode.startswith("I;16") or (mode == "I" and 255 < float(image.max(initial=0)) <= 65535):
        image = image / np.float32(257.0)
        conv.add("16bit", "were 16-bit: scaled to the 8-bit range (divided by 257) before the model's "
                          f"preprocessing ({preprocess or 'none'})", where)
    if mode in ("RGBA", "LA", "PA"):
        conv.add("alpha", "had an alpha channel: dropped", where)
    c = image.shape[2]
    if c != channels:
        if c == 1 and channels == 3:
            conv.add("gray2rgb", "were grayscale (1 channel) for a model trained on RGB (3 channels): the grey "
                                 "channel was copied to R, G and B", where)
        elif c == 3 and channels == 1:
            conv.add("rgb2gray", "were colour (3 channels) for a model trained on grayscale (1 channel): converted "
                                 "to grey with ITU-R 601 luma", where)
        image = _fit_channels(image, channels, axis=2, where=where)
    return image


@torch.no_grad()
def predict_paths(module, inputs: Sequence[str], out_dir: str, overlays: bool = True, threshold: Optional[float] = None,
                  progress: bool = True, device: str = "cpu", overwrite: bool = False) -> PredictResult:
    """Predict every image / NIfTI file in ``inputs`` (files or folders) into ``out_dir``.

    Unreadable inputs are skipped and listed in ``PredictResult.errors`` and ``<out>/errors.txt``; when no input
    exists at all, ``MambasegUserError`` is raised before anything is written. ``overwrite`` replaces outputs of
    the same name (other files in ``out_dir`` are kept)."""
    if getattr(module, "spatial_dims", 2) == 3:  # volumes -> sliding window -> NIfTI (engine.predict_volumes)
        from .predict_volumes import predict_volumes
        return predict_volumes(module, inputs, out_dir, progress=progress, device=device, overwrite=overwrite)
    hp = module.hparams
    thr = hp.threshold if threshold is None else float(threshold)
    transform = _eval_transform(module)
    size = module.input_size
    res = PredictResult()
    files, res.errors = collect_inputs(inputs)
    if not files:
        raise MambasegUserError("nothing to predict: " + "; ".join(f"{p}: {m}" for p, m in res.errors)
                                + " (pass image / NIfTI files or folders holding them)")
    names = output_names(files)
    conv = _Conversions()
    out = Path(out_dir)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    if overlays:
        (out / "overlays").mkdir(parents=True, exist_ok=True)
    binary = hp.num_classes == 2
    net = module.net.to(device).eval()
    it = list(zip(files, names))
    made: Dict[str, List[str]] = {}  # input -> the outputs this run wrote for it (OUTPUTS_RECORD)
    n_written = 0
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="predict", unit="file")
    for f, name in it:
        try:
            if f.name.lower().endswith(NIFTI_EXTS):
                arr, spacing = read_nifti(f)
                vol = arr if arr.ndim == 4 else arr[None]  # (C, D, H, W)
                if vol.shape[0] != hp.in_channels:
                    conv.add(f"nifti{vol.shape[0]}to{hp.in_channels}", f"were {vol.shape[0]}-channel volumes for a "
                             f"model trained on {hp.in_channels} channel(s): "
                             + ("the channel was copied" if vol.shape[0] == 1 else "converted with luma"), str(f))
                    vol = _fit_channels(vol, hp.in_channels, axis=0, where=str(f))
                slices = []
                for d in range(vol.shape[1]):
                    img = np.ascontiguousarray(vol[:, d].transpose(1, 2, 0))
                    if transform is not None:
                        img, _ = transform(img, np.zeros(img.shape[:2], np.int64))
                    slices.append(torch.from_numpy(np.ascontiguousarray(np.asarray(img, np.float32).transpose(2, 0, 1))))
                x = torch.stack(slices).to(device)
                labels = predict_volume(net, x, vol.shape[-2:], thr, input_size=size).numpy()
                dest = _check_free(out / "masks" / f"{name}.nii.gz", overwrite)
                with atomic_path(str(dest)) as tmp:
                    save_nifti(labels.astype(np.int64), tmp, spacing=spacing, reference=f)
                res.written.append(str(dest))
                if overlays:
                    k = int((labels > 0).reshape(labels.shape[0], -1).sum(1).argmax())
                    _save_png(overlay(vol[:, k].transpose(1, 2, 0), labels[k], hp.num_classes),
                              _check_free(out / "overlays" / f"{name}_z{k}.png", overwrite))
                continue
            image = _fit_image(read_image(f), _image_mode(f), hp.in_channels, conv, str(f), hp.get("preprocess"))
            h, w = image.shape[:2]
            x = image
            if transform is not None:
                x, _ = transform(image, np.zeros((h, w), np.int64))
            xt = torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(2, 0, 1)))[None].to(device)
            logits = predict_logits_2d(net, xt, input_size=size, output_size=(h, w))
            labels = logits_to_labels(logits, thr)[0].cpu().numpy()
            mask = (labels * 255).astype(np.uint8) if binary else labels.astype(np.uint8)
            dest = _check_free(out / "masks" / f"{name}.png", overwrite)
            _save_png(mask, dest)
            res.written.append(str(dest))
            if overlays:
                _save_png(overlay(image, labels, hp.num_classes), _check_free(out / "overlays" / f"{name}.png", overwrite))
        except (FileExistsError, DiskFullError, UnwritableError):
            raise
        except Exception as e:  # skip this file, keep going; listed at the end
            res.errors.append((str(f), f"{type(e).__name__}: {e}"))
        else:
            made[str(f.resolve())] = [str(Path(p).relative_to(out)) for p in res.written[n_written:]]
            made[str(f.resolve())] += [f"overlays/{name}.png"] if overlays and not f.name.lower().endswith(
                NIFTI_EXTS) else []
        n_written = len(res.written)
    _record_outputs(out, made, overwrite)
    res.warnings = conv.messages()
    if res.errors:
        atomic_write_text(str(out / "errors.txt"), "".join(f"{p}\t{msg}\n" for p, msg in res.errors))
    elif overwrite and (out / "errors.txt").exists():
        (out / "errors.txt").unlink()  # the list of an earlier run into this folder; this one skipped nothing
    return res


OUTPUTS_RECORD = ".mambaseg-predict.json"


def _record_outputs(out: Path, made: Dict[str, List[str]], overwrite: bool) -> None:
    """Keep ``OUT/.mambaseg-predict.json`` (input file -> the outputs written for it). With ``overwrite``, an
    input predicted again loses the outputs an earlier run wrote for it under another name (``a.png.png`` when
    ``a.jpg`` sat beside it then, ``a.png`` now): the overwrite removes what it replaced, nothing else."""
    import json
    path = out / OUTPUTS_RECORD
    old: Dict[str, List[str]] = {}
    if path.is_file():
        try:
            old = {str(k): [str(x) for x in v] for k, v in dict(json.loads(path.read_text())).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            old = {}
    if overwrite:
        now = {x for v in made.values() for x in v}
        for inp, outputs in made.items():
            for stale in set(old.get(inp, [])) - set(outputs) - now:
                target = (out / stale).resolve()
                if out.resolve() in target.parents and target.is_file():
                    target.unlink()
    old.update(made)
    from .io import atomic_write_text
    atomic_write_text(str(path), json.dumps(old, indent=1, sort_keys=True))


def _fit_channels(arr: np.ndarray, channels: int, axis: int, where: str) -> np.ndarray:
    c = arr.shape[axis]
    if c == 1 and channels == 3:
        return np.repeat(arr, 3, axis=axis)
    if c == 3 and channels == 1:
        w = np.array([0.299, 0.587, 0.114], np.float32).reshape([-1 if i == axis else 1 for i in range(arr.ndim)])
        return (arr * w).sum(axis=axis, keepdims=True)
    raise MambasegUserError(f"{where}: {c} channels, the model takes {channels}")
