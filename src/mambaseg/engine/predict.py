"""Predict masks for a folder of images or NIfTI volumes with a trained checkpoint.

* 2D images (PNG/JPG/BMP/TIFF) -> ``<out>/masks/<name>.png``: 0/255 for binary models, class indices (uint8) for
  multi-class ones; ``<out>/overlays/<name>.png``: the prediction blended over the image in colour.
* NIfTI volumes (``.nii``/``.nii.gz``) -> ``<out>/masks/<case>.nii.gz`` with the input's affine and header
  (slice-wise inference along z, as in training), plus an overlay PNG of the slice with the most foreground.

Every input is preprocessed with the evaluation transform the model was trained with (``preprocess`` preset at
``image_size``) and the logits are resized back to the input size. An unreadable input is skipped, listed at the
end (and in ``<out>/errors.txt``), and the rest are processed. Existing outputs are never overwritten.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import MambasegUserError
from .inference import logits_to_labels, predict_logits_2d, predict_volume

__all__ = ["PredictResult", "load_module", "collect_inputs", "predict_paths", "overlay"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_EXTS = (".nii.gz", ".nii")


@dataclass
class PredictResult:
    written: List[str] = field(default_factory=list)
    errors: List[Tuple[str, str]] = field(default_factory=list)


def load_module(ckpt: str, device: str = "cpu"):
    """``SegmentationModule`` from a mambaseg checkpoint (clear errors for a missing or foreign file), or the
    equivalent of one from a pretrained folder (``save_pretrained`` / ``mambaseg export --format folder``)."""
    from mambaseg.models.hub import is_pretrained_folder
    if is_pretrained_folder(ckpt):
        from .pretrained_folder import load_folder_module
        return load_folder_module(ckpt, device=device)
    from .module import SegmentationModule
    if not os.path.isfile(ckpt):
        raise FileNotFoundError(f"checkpoint {ckpt!r} does not exist (expected RUN/checkpoints/best.ckpt)")
    try:
        data = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as e:
        raise MambasegUserError(f"cannot read checkpoint {ckpt!r}: {e}") from None
    if not isinstance(data, dict) or "state_dict" not in data or "hyper_parameters" not in data:
        raise MambasegUserError(f"{ckpt!r} is not a mambaseg training checkpoint (no state_dict/hyper_parameters)")
    module = SegmentationModule.load_from_checkpoint(ckpt, map_location=device, weights_only=False, pretrained=None)
    module.eval()
    return module


def _name(path: Path) -> str:
    n = path.name
    for ext in NIFTI_EXTS + IMAGE_EXTS:
        if n.lower().endswith(ext):
            return n[: -len(ext)]
    return path.stem


def collect_inputs(inputs: Sequence[str]) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """Files to predict (folders are listed, sorted) and errors for inputs that do not exist."""
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
    return files, errors


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
    from mambaseg.data.transforms import preset_transforms
    return preset_transforms(hp.preprocess, hp.image_size, train=False)


def _save_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image
    Image.fromarray(arr).save(str(path))


def _check_free(path: Path) -> Path:
    if path.exists():
        raise FileExistsError(f"{path} exists; choose another --out or remove it (nothing is overwritten)")
    return path


@torch.no_grad()
def predict_paths(module, inputs: Sequence[str], out_dir: str, overlays: bool = True, threshold: Optional[float] = None,
                  progress: bool = True, device: str = "cpu") -> PredictResult:
    """Predict every image / NIfTI file in ``inputs`` (files or folders) into ``out_dir``."""
    from mambaseg.data.base import read_image
    hp = module.hparams
    thr = hp.threshold if threshold is None else float(threshold)
    transform = _eval_transform(module)
    size = module.input_size
    res = PredictResult()
    files, res.errors = collect_inputs(inputs)
    out = Path(out_dir)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    if overlays:
        (out / "overlays").mkdir(parents=True, exist_ok=True)
    binary = hp.num_classes == 2
    net = module.net.to(device).eval()
    it = files
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(files, desc="predict", unit="file")
    for f in it:
        try:
            name = _name(f)
            if f.name.lower().endswith(NIFTI_EXTS):
                from mambaseg.data.nifti import read_nifti, save_nifti
                arr, spacing = read_nifti(f)
                vol = arr if arr.ndim == 4 else arr[None]  # (C, D, H, W)
                if vol.shape[0] != hp.in_channels:
                    vol = _fit_channels(vol, hp.in_channels, axis=0, where=str(f))
                slices = []
                for d in range(vol.shape[1]):
                    img = np.ascontiguousarray(vol[:, d].transpose(1, 2, 0))
                    if transform is not None:
                        img, _ = transform(img, np.zeros(img.shape[:2], np.int64))
                    slices.append(torch.from_numpy(np.ascontiguousarray(np.asarray(img, np.float32).transpose(2, 0, 1))))
                x = torch.stack(slices).to(device)
                labels = predict_volume(net, x, vol.shape[-2:], thr, input_size=size).numpy()
                dest = _check_free(out / "masks" / f"{name}.nii.gz")
                save_nifti(labels.astype(np.int64), dest, spacing=spacing, reference=f)
                res.written.append(str(dest))
                if overlays:
                    k = int((labels > 0).reshape(labels.shape[0], -1).sum(1).argmax())
                    _save_png(overlay(vol[:, k].transpose(1, 2, 0), labels[k], hp.num_classes),
                              _check_free(out / "overlays" / f"{name}_z{k}.png"))
                continue
            image = read_image(f)
            if image.shape[2] != hp.in_channels:
                image = _fit_channels(image, hp.in_channels, axis=2, where=str(f))
            h, w = image.shape[:2]
            x = image
            if transform is not None:
                x, _ = transform(image, np.zeros((h, w), np.int64))
            xt = torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(2, 0, 1)))[None].to(device)
            logits = predict_logits_2d(net, xt, input_size=size, output_size=(h, w))
            labels = logits_to_labels(logits, thr)[0].cpu().numpy()
            mask = (labels * 255).astype(np.uint8) if binary else labels.astype(np.uint8)
            dest = _check_free(out / "masks" / f"{name}.png")
            _save_png(mask, dest)
            res.written.append(str(dest))
            if overlays:
                _save_png(overlay(image, labels, hp.num_classes), _check_free(out / "overlays" / f"{name}.png"))
        except FileExistsError:
            raise
        except Exception as e:  # skip this file, keep going; listed at the end
            res.errors.append((str(f), f"{type(e).__name__}: {e}"))
    if res.errors:
        with open(out / "errors.txt", "a") as fh:
            for p, msg in res.errors:
                fh.write(f"{p}\t{msg}\n")
    return res


def _fit_channels(arr: np.ndarray, channels: int, axis: int, where: str) -> np.ndarray:
    c = arr.shape[axis]
    if c == 1 and channels == 3:
        return np.repeat(arr, 3, axis=axis)
    if c == 3 and channels == 1:
        w = np.array([0.299, 0.587, 0.114], np.float32).reshape([-1 if i == axis else 1 for i in range(arr.ndim)])
        return (arr * w).sum(axis=axis, keepdims=True)
    raise MambasegUserError(f"{where}: {c} channels, the model takes {channels}")
