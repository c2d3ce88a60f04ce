"""Joint image/mask transforms in numpy (no albumentations: frozen, and its successor is AGPL).

Every transform is a callable ``(image, mask) -> (image, mask)`` on a float32 ``(H, W, C)`` image and an integer
``(H, W)`` mask. Geometric transforms move both with the same coordinate map (the mask always with nearest
neighbour, so it keeps class indices); photometric transforms touch the image only. Any other callable of that
signature (e.g. an albumentations pipeline wrapped as ``lambda i, m: (lambda r: (r["image"], r["mask"]))(A(image=i,
mask=m))``) works wherever these do.

Randomness: each transform draws from its own ``numpy.random.Generator`` (``seed=None`` -> fresh OS entropy) at
**every call** — in particular :class:`RandomRotation` draws a new angle per sample (VM-UNet/VM-UNetV2's
``myRandomRotation`` draws one angle in ``__init__`` and reuses it for the whole run). For reproducible
DataLoader workers pass ``worker_init_fn=mambaseg.data.transforms.worker_init_fn`` (it calls
:func:`seed_transforms` with the worker's seed).

Paper pipelines (:func:`preset_transforms`):

========================  ===============================================================================
``"vmunet_isic"``         VM-UNet / VM-UNetV2 / HMT-UNet (ISIC, polyp): per-image min-max to [0, 255]; train:
                          hflip 0.5, vflip 0.5, rotation U[0, 360) p=0.5 (nearest), resize 256 (bilinear image,
                          nearest mask; upstream resizes the mask bilinearly and thresholds at 0.5 later).
``"mamba_unet_acdc"``     Mamba-UNet / SSL4MIS (ACDC): train: p=0.5 rot90(k~U{0..3}) + flip, else p=0.5
                          rotation U[-20, 20) (nearest); resize 224 with nearest for image and mask. No
                          normalisation (the h5 files are already scaled).
``"synapse"``             TransUNet / VM-UNet Synapse: as ACDC but the image is resized with cubic interpolation.
``"default"``             ours: hflip, vflip, rotation ±20° (bilinear), resize, mild intensity jitter, per-image
                          min-max to [0, 1].
========================  ===============================================================================
Eval pipelines are the resize + normalisation of the train pipeline.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from mambaseg.utils.convert import as_size
from mambaseg.utils.errors import close_matches

__all__ = [
    "Compose", "RandomHFlip", "RandomVFlip", "RandomRotation", "RandomRot90", "RandomRotFlip", "RandomChoice",
    "Resize", "RandomCrop", "CenterCrop", "IntensityJitter", "Normalize", "ToFloat", "preset_transforms",
    "PRESETS", "seed_transforms", "worker_init_fn", "IMAGENET_MEAN", "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _as_size(size) -> Tuple[int, int]:
    return as_size(size, 2)


class _Random:
    """Mixin: own generator, reseedable."""

    def __init__(self, seed=None):
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed):
        self.rng = np.random.default_rng(seed)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image, mask):
        for t in self.transforms:
            image, mask = t(image, mask)
        return image, mask

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


class RandomHFlip(_Random):
    """Left-right flip with probability ``p``."""

    def __init__(self, p: float = 0.5, seed=None):
        super().__init__(seed)
        self.p = p

    def __call__(self, image, mask):
        if self.rng.random() < self.p:
            return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
        return image, mask

    def __repr__(self):
        return f"RandomHFlip(p={self.p})"


class RandomVFlip(_Random):
    """Up-down flip with probability ``p``."""

    def __init__(self, p: float = 0.5, seed=None):
        super().__init__(seed)
        self.p = p

    def __call__(self, image, mask):
        if self.rng.random() < self.p:
            return np.ascontiguousarray(image[::-1]), np.ascontiguousarray(mask[::-1])
        return image, mask

    def __repr__(self):
        return f"RandomVFlip(p={self.p})"


class RandomRot90(_Random):
    """With probability ``p``, rotate by ``k * 90`` degrees, ``k`` uniform in {1, 2, 3}."""

    def __init__(self, p: float = 0.5, seed=None):
        super().__init__(seed)
        self.p = p

    def __call__(self, image, mask):
        if self.rng.random() < self.p:
            k = int(self.rng.integers(1, 4))
            return (np.ascontiguousarray(np.rot90(image, k, axes=(0, 1))),
                    np.ascontiguousarray(np.rot90(mask, k, axes=(0, 1))))
        return image, mask

    def __repr__(self):
        return f"RandomRot90(p={self.p})"


class RandomRotFlip(_Random):
    """SSL4MIS/TransUNet ``random_rot_flip`` with probability ``p``: rot90 by ``k ~ U{0..3}``, then a flip along a
    random axis."""

    def __init__(self, p: float = 1.0, seed=None):
        super().__init__(seed)
        self.p = p

    def __call__(self, image, mask):
        if self.rng.random() >= self.p:
            return image, mask
        k = int(self.rng.integers(0, 4))
        image, mask = np.rot90(image, k, axes=(0, 1)), np.rot90(mask, k, axes=(0, 1))
        axis = int(self.rng.integers(0, 2))
        return np.ascontiguousarray(np.flip(image, axis)), np.ascontiguousarray(np.flip(mask, axis))

    def __repr__(self):
        return f"RandomRotFlip(p={self.p})"


def _sample_coords(h, w, oh, ow, matrix, center_in, center_out):
    """Source (y, x) for each output pixel under the inverse 2x2 ``matrix`` about the centres."""
    yy, xx = np.meshgrid(np.arange(oh, dtype=np.float64), np.arange(ow, dtype=np.float64), indexing="ij")
    dy, dx = yy - center_out[0], xx - center_out[1]
    sy = matrix[0, 0] * dy + matrix[0, 1] * dx + center_in[0]
    sx = matrix[1, 0] * dy + matrix[1, 1] * dx + center_in[1]
    return sy, sx


def _warp(image, mask, sy, sx, order: int, fill: float, mask_fill: int):
    """Sample image (``order``) and mask (nearest) at source coordinates ``(sy, sx)``. Nearest neighbour is one
    gather shared by image (order 0) and mask, so both move identically (round half up, outside -> fill)."""
    iy, ix = np.floor(sy + 0.5).astype(np.int64), np.floor(sx + 0.5).astype(np.int64)
    inside = (iy >= 0) & (iy < mask.shape[0]) & (ix >= 0) & (ix < mask.shape[1])
    m = np.full(sy.shape, mask_fill, dtype=mask.dtype)
    m[inside] = mask[iy[inside], ix[inside]]
    if order == 0:
        out = np.full(sy.shape + (image.shape[2],), fill, np.float32)
        out[inside] = image[iy[inside], ix[inside]]
        return out, m
    from scipy import ndimage

    coords = np.stack([sy, sx])
    out = np.empty(sy.shape + (image.shape[2],), np.float32)
    for c in range(image.shape[2]):
        out[..., c] = ndimage.map_coordinates(image[..., c], coords, order=order, mode="constant", cval=fill,
                                              prefilter=order > 1)
    return out, m


class RandomRotation(_Random):
    """Rotate image and mask by a fresh random angle per call, about the image centre, keeping the size.

    Args:
        degrees: a number ``d`` (angle uniform in ``[-d, d]``) or a range ``(lo, hi)``.
        p: probability of rotating.
        order: interpolation of the image (0 nearest, 1 bilinear, 3 cubic); the mask is always nearest.
        fill: image value outside the rotated input; ``mask_fill`` the mask's (background, 0).
    """

    def __init__(self, degrees: Union[float, Tuple[float, float]] = 20.0, p: float = 0.5, order: int = 1,
                 fill: float = 0.0, mask_fill: int = 0, seed=None):
        super().__init__(seed)
        if isinstance(degrees, (int, float)):
            degrees = (-abs(degrees), abs(degrees))
        self.degrees = (float(degrees[0]), float(degrees[1]))
        self.p, self.order, self.fill, self.mask_fill = p, order, fill, mask_fill
        self.last_angle: Optional[float] = None

    def __call__(self, image, mask):
        if self.rng.random() >= self.p:
            return image, mask
        angle = float(self.rng.uniform(*self.degrees))
        self.last_angle = angle
        return rotate(image, mask, angle, self.order, self.fill, self.mask_fill)

    def __repr__(self):
        return f"RandomRotation(degrees={self.degrees}, p={self.p}, order={self.order})"


def rotate(image, mask, angle: float, order: int = 1, fill: float = 0.0, mask_fill: int = 0):
    """Rotate counter-clockwise (as displayed, rows down) by ``angle`` degrees about the centre."""
    h, w = mask.shape
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    # output -> input map (inverse rotation) in (y, x) with y pointing down
    inv = np.array([[c, -s], [s, c]])
    ctr = ((h - 1) / 2.0, (w - 1) / 2.0)
    sy, sx = _sample_coords(h, w, h, w, inv, ctr, ctr)
    return _warp(image, mask, sy, sx, order, fill, mask_fill)


class RandomChoice(_Random):
    """Apply ``transforms[i]`` with probability ``probs[i]`` (at most one; nothing with the remaining
    probability)."""

    def __init__(self, transforms: Sequence[Callable], probs: Sequence[float], seed=None):
        super().__init__(seed)
        if len(transforms) != len(probs) or sum(probs) > 1 + 1e-9:
            raise ValueError("one probability per transform, summing to at most 1")
        self.transforms, self.probs = list(transforms), list(probs)

    def __call__(self, image, mask):
        u = self.rng.random()
        acc = 0.0
        for t, p in zip(self.transforms, self.probs):
            acc += p
            if u < acc:
                return t(image, mask)
        return image, mask

    def __repr__(self):
        return f"RandomChoice({self.transforms}, probs={self.probs})"


def _resize_linear_axis(arr, out_len, axis):
    n = arr.shape[axis]
    if n == out_len:
        return arr
    pos = (np.arange(out_len) + 0.5) * (n / out_len) - 0.5
    pos = np.clip(pos, 0, n - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    wt = (pos - i0).astype(np.float32)
    shape = [1] * arr.ndim
    shape[axis] = out_len
    wt = wt.reshape(shape)
    return np.take(arr, i0, axis=axis) * (1 - wt) + np.take(arr, i1, axis=axis) * wt


def resize_image(image: np.ndarray, size, interpolation: str = "bilinear") -> np.ndarray:
    """Resize ``(H, W, C)`` to ``size`` with half-pixel centres (as ``F.interpolate(align_corners=False)``, no
    antialiasing). ``interpolation``: ``"nearest"``, ``"bilinear"`` or ``"bicubic"`` (scipy cubic spline)."""
    oh, ow = _as_size(size)
    h, w = image.shape[:2]
    if (h, w) == (oh, ow):
        return image
    if interpolation == "nearest":
        iy = np.minimum(np.floor((np.arange(oh) + 0.5) * h / oh).astype(np.int64), h - 1)
        ix = np.minimum(np.floor((np.arange(ow) + 0.5) * w / ow).astype(np.int64), w - 1)
        return np.ascontiguousarray(image[iy][:, ix])
    if interpolation == "bilinear":
        out = _resize_linear_axis(image.astype(np.float32), oh, 0)
        return np.ascontiguousarray(_resize_linear_axis(out, ow, 1), dtype=np.float32)
    if interpolation == "bicubic":
        from scipy import ndimage

        sy = (np.arange(oh) + 0.5) * h / oh - 0.5
        sx = (np.arange(ow) + 0.5) * w / ow - 0.5
        yy, xx = np.meshgrid(sy, sx, indexing="ij")
        out = np.empty((oh, ow, image.shape[2]), np.float32)
        for c in range(image.shape[2]):
            out[..., c] = ndimage.map_coordinates(image[..., c].astype(np.float64), [yy, xx], order=3,
                                                  mode="nearest")
        return out
    raise ValueError(f"interpolation must be 'nearest', 'bilinear' or 'bicubic', got {interpolation!r}")


def resize_mask(mask: np.ndarray, size) -> np.ndarray:
    """Nearest-neighbour resize of an ``(H, W)`` label map (half-pixel centres)."""
    return resize_image(mask[..., None], size, "nearest")[..., 0]


class Resize:
    """Resize image (``interpolation``, default bilinear) and mask (nearest) to ``size`` (int or (H, W))."""

    def __init__(self, size, interpolation: str = "bilinear"):
        self.size = _as_size(size)
        if interpolation not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'nearest', 'bilinear' or 'bicubic', got {interpolation!r}")
        self.interpolation = interpolation

    def __call__(self, image, mask):
        return resize_image(image, self.size, self.interpolation), resize_mask(mask, self.size)

    def __repr__(self):
        return f"Resize({self.size}, {self.interpolation!r})"


class RandomCrop(_Random):
    """Random ``size`` crop; smaller inputs are padded first (image with ``fill``, mask with ``mask_fill``)."""

    def __init__(self, size, fill: float = 0.0, mask_fill: int = 0, seed=None):
        super().__init__(seed)
        self.size = _as_size(size)
        self.fill, self.mask_fill = fill, mask_fill

    def _pad(self, image, mask):
        th, tw = self.size
        h, w = mask.shape
        ph, pw = max(0, th - h), max(0, tw - w)
        if ph or pw:
            pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
            image = np.pad(image, pads + ((0, 0),), constant_values=self.fill)
            mask = np.pad(mask, pads, constant_values=self.mask_fill)
        return image, mask

    def __call__(self, image, mask):
        image, mask = self._pad(image, mask)
        th, tw = self.size
        h, w = mask.shape
        y = int(self.rng.integers(0, h - th + 1))
        x = int(self.rng.integers(0, w - tw + 1))
        return np.ascontiguousarray(image[y:y + th, x:x + tw]), np.ascontiguousarray(mask[y:y + th, x:x + tw])

    def __repr__(self):
        return f"RandomCrop({self.size})"


class CenterCrop(RandomCrop):
    """Centre ``size`` crop (padding smaller inputs)."""

    def __call__(self, image, mask):
        image, mask = self._pad(image, mask)
        th, tw = self.size
        h, w = mask.shape
        y, x = (h - th) // 2, (w - tw) // 2
        return np.ascontiguousarray(image[y:y + th, x:x + tw]), np.ascontiguousarray(mask[y:y + th, x:x + tw])


class IntensityJitter(_Random):
    """Photometric jitter of the image only, with probability ``p``.

    ``x <- mean + c * (b * x - mean)`` with ``b ~ U[1-brightness, 1+brightness]``, ``c ~ U[1-contrast,
    1+contrast]`` (``mean`` of ``b * x``), then optional gamma ``g ~ U[1-gamma, 1+gamma]`` applied to the image
    min-max-scaled to [0, 1] and scaled back. Results are clipped to ``clip`` (``(lo, hi)`` or None).
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, gamma: float = 0.0, p: float = 0.8,
                 clip: Optional[Tuple[float, float]] = None, seed=None):
        super().__init__(seed)
        self.brightness, self.contrast, self.gamma, self.p, self.clip = brightness, contrast, gamma, p, clip

    def __call__(self, image, mask):
        if self.rng.random() >= self.p:
            return image, mask
        img = image.astype(np.float32) * np.float32(self.rng.uniform(1 - self.brightness, 1 + self.brightness))
        m = img.mean()
        img = (img - m) * np.float32(self.rng.uniform(1 - self.contrast, 1 + self.contrast)) + m
        if self.gamma > 0:
            lo, hi = float(img.min()), float(img.max())
            if hi > lo:
                g = float(self.rng.uniform(1 - self.gamma, 1 + self.gamma))
                img = ((img - lo) / (hi - lo)) ** g * (hi - lo) + lo
        if self.clip is not None:
            img = np.clip(img, *self.clip)
        return img.astype(np.float32), mask

    def __repr__(self):
        return f"IntensityJitter(brightness={self.brightness}, contrast={self.contrast}, gamma={self.gamma}, p={self.p})"


class Normalize:
    """Intensity normalisation presets (image only).

    * ``"imagenet"``: ``(x / max_value - mean) / std`` with ImageNet's mean/std (grayscale: their averages
      0.449/0.226); ``max_value`` defaults to 255 (8-bit images).
    * ``"minmax255"``: per-image min-max to ``[0, 255]`` (what VM-UNet/VM-UNetV2's ``myNormalize`` amounts to).
    * ``"minmax"``: per-image min-max to ``[0, 1]``.
    * ``"zscore"``: per-image zero mean, unit variance.
    * ``"none"``: unchanged.
    A constant image maps to 0 under the per-image presets.
    """

    PRESETS = ("imagenet", "minmax255", "minmax", "zscore", "none")

    def __init__(self, preset: str = "imagenet", max_value: float = 255.0, mean=None, std=None):
        if preset not in self.PRESETS:
            raise ValueError(f"Normalize preset must be one of {self.PRESETS}, got {preset!r}")
        self.preset, self.max_value = preset, float(max_value)
        self.mean, self.std = mean, std

    def __call__(self, image, mask):
        x = image.astype(np.float32)
        if self.preset == "none":
            return x, mask
        if self.preset == "imagenet":
            c = x.shape[2]
            mean = np.asarray(self.mean if self.mean is not None else
                              (IMAGENET_MEAN if c == 3 else [float(np.mean(IMAGENET_MEAN))] * c), np.float32)
            std = np.asarray(self.std if self.std is not None else
                             (IMAGENET_STD if c == 3 else [float(np.mean(IMAGENET_STD))] * c), np.float32)
            if mean.size != c:
                raise ValueError(f"imagenet normalisation needs {mean.size} channels, image has {c}")
            return (x / self.max_value - mean) / std, mask
        if self.preset == "zscore":
            sd = float(x.std())
            return ((x - x.mean()) / sd if sd > 0 else np.zeros_like(x)), mask
        lo, hi = float(x.min()), float(x.max())
        scale = 255.0 if self.preset == "minmax255" else 1.0
        if hi <= lo:
            return np.zeros_like(x), mask
        return ((x - lo) / (hi - lo) * scale).astype(np.float32), mask

    def __repr__(self):
        return f"Normalize({self.preset!r})"


class ToFloat:
    """Divide the image by ``max_value`` (e.g. 255)."""

    def __init__(self, max_value: float = 255.0):
        self.max_value = float(max_value)

    def __call__(self, image, mask):
        return image.astype(np.float32) / np.float32(self.max_value), mask


PRESETS = {
    "vmunet_isic": "VM-UNet/VM-UNetV2/HMT-UNet: min-max to [0,255], flips, rotation U[0,360) nearest, resize 256",
    "mamba_unet_acdc": "Mamba-UNet/SSL4MIS ACDC: rot90+flip or rotation ±20 (nearest), nearest resize 224",
    "synapse": "TransUNet/VM-UNet Synapse: rot90+flip or rotation ±20 (nearest), cubic resize 224",
    "default": "flips, rotation ±20 bilinear, resize, intensity jitter, min-max to [0,1]",
}
_DEFAULT_SIZES = {"vmunet_isic": 256, "mamba_unet_acdc": 224, "synapse": 224, "default": 256}


def preset_transforms(name: str = "default", size=None, train: bool = True, seed=None) -> Compose:
    """The augmentation/preprocessing pipeline of a paper (see the module docstring); ``size=None`` uses the
    paper's input size (256 for ISIC, 224 for ACDC/Synapse, 256 default)."""
    if name not in PRESETS:
        near = close_matches(name, PRESETS, n=3, cutoff=0.6)
        raise ValueError(f"unknown transform preset {name!r}; choose from {list(PRESETS)}"
                         + (f" (did you mean {near[0]!r}?)" if near else ""))
    size = _as_size(size if size is not None else _DEFAULT_SIZES[name])
    ss = np.random.SeedSequence(seed).spawn(8) if seed is not None else [None] * 8
    if name == "vmunet_isic":
        eval_t = [Normalize("minmax255"), Resize(size, "bilinear")]
        train_t = [Normalize("minmax255"), RandomHFlip(0.5, ss[0]), RandomVFlip(0.5, ss[1]),
                   RandomRotation((0.0, 360.0), p=0.5, order=0, seed=ss[2]), Resize(size, "bilinear")]
    elif name in ("mamba_unet_acdc", "synapse"):
        interp = "nearest" if name == "mamba_unet_acdc" else "bicubic"
        eval_t = [Resize(size, interp)]
        train_t = [RandomChoice([RandomRotFlip(1.0, ss[0]), RandomRotation(20.0, p=1.0, order=0, seed=ss[1])],
                                [0.5, 0.25], seed=ss[2]), Resize(size, interp)]
    else:
        eval_t = [Resize(size, "bilinear"), Normalize("minmax")]
        train_t = [RandomHFlip(0.5, ss[0]), RandomVFlip(0.5, ss[1]),
                   RandomRotation(20.0, p=0.5, order=1, seed=ss[2]), Resize(size, "bilinear"),
                   IntensityJitter(0.1, 0.1, 0.0, p=0.5, seed=ss[3]), Normalize("minmax")]
    return Compose(train_t if train else eval_t)


def seed_transforms(transform, seed: int):
    """Reseed every random transform inside ``transform`` (recursing into Compose/RandomChoice) from ``seed``;
    call it in a DataLoader ``worker_init_fn`` with the worker's seed."""
    found: List[_Random] = []

    def walk(t):
        if isinstance(t, _Random):
            found.append(t)
        for sub in getattr(t, "transforms", []) or []:
            walk(sub)

    walk(transform)
    for t, s in zip(found, np.random.SeedSequence(seed).spawn(len(found))):
        t.reseed(s)
    return transform


def worker_init_fn(worker_id: int):
    """DataLoader ``worker_init_fn``: reseed the random transforms of the worker's data set copy from the
    worker's torch seed, so that workers do not repeat each other's augmentations (each worker process starts
    with a copy of the same generator states)."""
    import torch

    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    stack = [info.dataset]
    while stack:
        ds = stack.pop()
        if getattr(ds, "transform", None) is not None:
            seed_transforms(ds.transform, int(info.seed % 2 ** 32))
        stack.extend(getattr(ds, "datasets", []) or [])
