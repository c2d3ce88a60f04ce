"""nnU-Net's training augmentation for patches of any number of spatial axes (2D and 3D), in torch on the CPU.

What it does (defaults = nnU-Net v2 ``nnUNetTrainer.get_training_transforms``, spec ``volumetric_pipeline.md`` §5),
in nnU-Net's order:

==========================  =========================================================================================
step                        rule (``p`` = probability per sample unless said)
==========================  =========================================================================================
spatial                     rotation p 0.2: an angle per axis U(±30°) in 3D (U(±180°) in 2D and in "dummy 2D",
                            i.e. when ``max(patch) / patch[0] > 3``: in-plane only); scaling p 0.2 (drawn apart from
                            the rotation): one factor U(0.7, 1.4) for all axes (> 1 zooms out); elastic optional
                            (``p_elastic``, off as in nnU-Net). The rotated/scaled patch is sampled straight from the
                            whole volume around the patch centre (:func:`extract_patch`), image linear with 0 outside,
                            label nearest with -1 ("outside") beyond the volume.
Gaussian noise              p 0.1, one std U(0, 0.1) for all channels (batchgenerators calls it "variance" but uses
                            it as the std), fresh noise per voxel.
Gaussian blur               p 0.2; each channel with p 0.5; sigma U(0.5, 1) per axis and channel; kernel radius
                            ``int(4 sigma + 0.5)``, mirrored borders (= ``scipy.ndimage.gaussian_filter1d(mode=
                            "mirror")``).
brightness                  p 0.15, per channel ``x * f``.
contrast                    p 0.15, per channel ``(x - mean) * f + mean`` clipped to the channel's old [min, max].
low resolution              p 0.25; each channel with p 0.5 and its own zoom U(0.5, 1), the same for all axes (not
                            axis 0 in dummy 2D): nearest-exact down, (bi/tri)linear up.
gamma, inverted             p 0.1, per channel, on ``-x``; then gamma p 0.3 on ``x``: ``((x - min) / range) ** g *
                            range + min``, mean and std restored afterwards.
mirroring                   every axis with p 0.5 (exact flips of image and label).
==========================  =========================================================================================

Brightness, contrast and gamma factors are drawn as batchgenerators' ``BGContrast``: with probability 1/2 from
U(lo, 1), otherwise from U(1, hi) (half the draws darken/flatten, half brighten/steepen; a plain U(lo, hi) would
not).
The label is only moved by the spatial step and the flips; -1 passes through (the patch sampler maps it, see
:mod:`mambaseg.data.patches`).

**Why our own code and not MONAI's Rand* dictionary transforms or batchgeneratorsv2.** MONAI 1.6.1 runs on the CPU
without torchvision and is deterministic under ``set_random_state``, but its random transforms draw parameters
differently from nnU-Net: uniform instead of BGContrast factors, one probability for rotation + scaling together
(``RandAffine``), per-axis rather than one isotropic scale factor, no per-channel probabilities for blur and low
resolution, no label border value -1, and a rotation applied to an already cropped patch (corners filled with zeros)
instead of sampling the rotated patch from the volume. Each operation is a few lines of torch; matching nnU-Net's
sampling through MONAI would need as much code around it. batchgeneratorsv2 matches nnU-Net exactly but is not
installed (a new dependency with its own dependencies) and draws from the global ``np.random`` state, which makes
per-sample seeding awkward. So: our own N-D torch code, with MONAI kept where it serves: the optional elastic
deformation (``Rand3DElastic`` / ``Rand2DElastic``, seeded per sample) and as the oracle of the tests (gamma =
``AdjustContrast(retain_stats, invert_image)``, contrast = ``ScaleIntensityFixedMean(preserve_range)``).

Determinism: every random draw comes from the ``numpy.random.Generator`` passed in (torch noise from a
``torch.Generator`` seeded from it), so a sample depends only on its seed, not on the worker that makes it.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["NnUNetAugmentation", "crop_pad", "extract_patch", "gaussian_blur", "gamma_transform", "contrast_transform",
           "rotation_matrix", "bg_contrast", "is_dummy_2d"]

ANISO_THRESHOLD = 3.0


def bg_contrast(rng: np.random.Generator, lo: float, hi: float) -> float:
    """batchgenerators' BGContrast draw: U(lo, 1) with probability 1/2 (if lo < 1), else U(max(lo, 1), hi)."""
    if rng.random() < 0.5 and lo < 1:
        return float(rng.uniform(lo, 1))
    return float(rng.uniform(max(lo, 1), hi))


def is_dummy_2d(patch_size: Sequence[int]) -> bool:
    """nnU-Net's "dummy 2D" augmentation for anisotropic 3D patches: ``max(patch) / patch[0] > 3``."""
    return len(patch_size) == 3 and max(patch_size) / patch_size[0] > ANISO_THRESHOLD


# ----------------------------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------------------------
def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """Rotation in voxel space: 2D ``[a]`` (radians) or 3D ``[a0, a1, a2]`` about axes 0, 1, 2 (``R0 @ R1 @ R2``)."""
    if len(angles) == 1:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    m = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        m = m @ r
    return m


def crop_pad(array: torch.Tensor, lo: Sequence[int], hi: Sequence[int], value=0, copy: bool = True) -> torch.Tensor:
    """``array[..., lo:hi]`` over the last ``len(lo)`` axes, where the box may extend beyond the array: the part
    outside is filled with ``value``. Exact (no interpolation). A box inside the array is one contiguous copy (or,
    with ``copy=False``, a view to be read only)."""
    n = len(lo)
    spatial = array.shape[-n:]
    lead = (slice(None),) * (array.dim() - n)
    if all(l >= 0 and h <= s for l, h, s in zip(lo, hi, spatial)):
        view = array[lead + tuple(slice(l, h) for l, h in zip(lo, hi))]
        return view.clone(memory_format=torch.contiguous_format) if copy else view
    out = torch.full(tuple(array.shape[:-n]) + tuple(h - l for l, h in zip(lo, hi)), value, dtype=array.dtype)
    src, dst = [], []
    for l, h, s in zip(lo, hi, spatial):
        a, b = max(l, 0), min(h, s)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - l, b - l))
    out[lead + tuple(dst)] = array[lead + tuple(src)]
    return out


def extract_patch(image: torch.Tensor, mask: Optional[torch.Tensor], origin: Sequence[int],
                  patch_size: Sequence[int], matrix: Optional[np.ndarray] = None,
                  label_pad: int = -1) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The patch of ``patch_size`` whose corner is ``origin`` (may lie outside the volume: padded with 0 /
    ``label_pad``), optionally rotated/scaled by ``matrix`` (N x N, voxel space) about the patch centre.

    With ``matrix`` the output voxel ``o`` takes the input at ``c + matrix @ (o - (P - 1) / 2)`` with ``c = origin +
    (P - 1) / 2``: image linear (0 outside), label nearest (``label_pad`` outside). Only the input box the rotated
    patch touches is read, so the cost does not grow with the volume.
    """
    n = len(patch_size)
    psz = np.asarray(patch_size, np.int64)
    origin = np.asarray(origin, np.int64)
    if matrix is None:
        hi = origin + psz
        img = crop_pad(image, origin.tolist(), hi.tolist(), 0.0)
        msk = None if mask is None else crop_pad(mask, origin.tolist(), hi.tolist(), label_pad)
        return img, msk
    matrix = np.asarray(matrix, np.float64)
    half = (psz - 1) / 2.0
    centre = origin + half
    # input box covering the transformed output box (corners suffice for an affine map)
    corners = np.array(np.meshgrid(*[[-h, h] for h in half], indexing="ij")).reshape(n, -1)
    mapped = matrix @ corners
    lo = np.floor(centre + mapped.min(1)).astype(np.int64) - 1
    hi = np.ceil(centre + mapped.max(1)).astype(np.int64) + 2
    box = crop_pad(image, lo.tolist(), hi.tolist(), 0.0, copy=False)
    size_in = hi - lo
    # affine_grid over normalised coordinates (align_corners=True): output u in [-1, 1] is the offset u * half,
    # input voxel x = (centre - lo) + matrix @ (u * half), normalised v = x * 2 / (S - 1) - 1; axes reversed (x, y, z)
    inv = 2.0 / np.maximum(size_in - 1, 1)
    a = inv[:, None] * matrix * half[None, :]
    b = inv * (centre - lo) - 1.0
    rev = list(range(n))[::-1]
    theta = np.concatenate([a[np.ix_(rev, rev)], b[rev][:, None]], axis=1)
    grid = F.affine_grid(torch.from_numpy(theta).float()[None], [1, 1] + [int(p) for p in psz], align_corners=True)
    img = F.grid_sample(box.unsqueeze(0).float(), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)[0]
    msk = None
    if mask is not None:
        mbox = crop_pad(mask, lo.tolist(), hi.tolist(), label_pad, copy=False)
        shifted = (mbox - label_pad).to(torch.float32)[None, None]  # >= 0 inside; 0 = pad after sampling
        m = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=True)[0, 0]
        msk = m.round().to(torch.int64) + label_pad
    return img.contiguous(), msk


# ----------------------------------------------------------------------------------------------------------------
# intensity operations (image (C, *spatial), one channel at a time where per channel)
# ----------------------------------------------------------------------------------------------------------------
def gaussian_blur(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur of one channel ``x`` (spatial axes only), sigma per axis in voxels, kernel radius
    ``int(4 sigma + 0.5)``, mirrored borders (scipy's ``mode="mirror"``; edge values where an axis is too short).
    Each axis is a weighted sum of shifted views (faster on the CPU than ``conv1d`` over many short rows)."""
    out = x
    for axis, s in enumerate(sigmas):
        if s <= 0:
            continue
        r = int(4.0 * s + 0.5)
        t = np.arange(-r, r + 1, dtype=np.float64)
        k = np.exp(-0.5 * (t / s) ** 2)
        k /= k.sum()
        n = out.shape[axis]
        if n > r:  # mirror: index -i -> i, n - 1 + i -> n - 1 - i
            idx = np.concatenate([np.arange(r, 0, -1), np.arange(n), np.arange(n - 2, n - 2 - r, -1)])
        else:
            idx = np.clip(np.arange(-r, n + r), 0, n - 1)
        padded = out.index_select(axis, torch.from_numpy(idx))
        acc = padded.narrow(axis, 0, n) * float(k[0])
        for j in range(1, 2 * r + 1):
            acc.add_(padded.narrow(axis, j, n), alpha=float(k[j]))
        out = acc
    return out


def gamma_transform(x: torch.Tensor, gamma: float, invert: bool = False, retain_stats: bool = True) -> torch.Tensor:
    """batchgenerators' gamma on one channel: ``((x - min) / (range + 1e-7)) ** gamma * range + min``, on ``-x`` if
    ``invert``; mean and std (unbiased) restored if ``retain_stats``."""
    if invert:
        x = -x
    if retain_stats:
        mn, sd = x.mean(), x.std()
    lo = x.min()
    rng_ = x.max() - lo
    out = ((x - lo) / (rng_ + 1e-7)) ** gamma * rng_ + lo
    if retain_stats:
        out = out - out.mean()
        out = out / (out.std() + 1e-8) * sd + mn
    return -out if invert else out


def contrast_transform(x: torch.Tensor, factor: float, preserve_range: bool = True) -> torch.Tensor:
    """``(x - mean) * factor + mean`` on one channel, clipped to its previous [min, max] if ``preserve_range``."""
    mn = x.mean()
    out = (x - mn) * factor + mn
    return out.clamp(x.min(), x.max()) if preserve_range else out


def _simulate_lowres(x: torch.Tensor, zoom: Sequence[float]) -> torch.Tensor:
    shape = x.shape
    small = [max(1, int(round(s * z))) for s, z in zip(shape, zoom)]
    down = F.interpolate(x[None, None], size=small, mode="nearest-exact")
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.dim()]
    return F.interpolate(down, size=tuple(shape), mode=mode, align_corners=False)[0, 0]


# ----------------------------------------------------------------------------------------------------------------
class NnUNetAugmentation:
    """nnU-Net's training augmentation (module docstring) for ``spatial_dims`` = 2 or 3.

    Use inside :class:`mambaseg.data.patches.PatchDataset` (it draws :meth:`spatial_matrix`, samples the patch from
    the volume with it and then calls :meth:`augment_patch`), or standalone on a patch: ``aug(sample, rng)`` rotates
    and scales about the patch centre (same size out) and applies the rest.

    Args:
        spatial_dims: 2 or 3.
        patch_size: the training patch (decides dummy-2D mode for 3D); None: from the input in ``__call__``.
        p_rotation, rotation_deg: probability and max angle in degrees (None: 30 for 3D, 180 for 2D / dummy 2D).
        p_scaling, scaling: probability and range of the one isotropic scale factor (> 1 zooms out).
        p_elastic: probability of MONAI's elastic deformation (``elastic_sigma``, ``elastic_magnitude``); 0 = off.
        p_noise, noise_std; p_blur, blur_sigma, p_blur_per_channel; p_brightness, brightness; p_contrast, contrast;
        p_lowres, lowres_zoom, p_lowres_per_channel; p_gamma_inverted, p_gamma, gamma: intensity steps.
        mirror_axes: spatial axes to flip (default all), each with ``p_mirror``.
        dummy_2d: force (True/False) or detect (None) nnU-Net's dummy-2D mode for anisotropic 3D patches.
    """

    def __init__(self, spatial_dims: int = 3, patch_size: Optional[Sequence[int]] = None,
                 p_rotation: float = 0.2, rotation_deg: Optional[float] = None,
                 p_scaling: float = 0.2, scaling: Tuple[float, float] = (0.7, 1.4),
                 p_elastic: float = 0.0, elastic_sigma: Tuple[float, float] = (5.0, 8.0),
                 elastic_magnitude: Tuple[float, float] = (100.0, 200.0),
                 p_noise: float = 0.1, noise_std: Tuple[float, float] = (0.0, 0.1),
                 p_blur: float = 0.2, blur_sigma: Tuple[float, float] = (0.5, 1.0), p_blur_per_channel: float = 0.5,
                 p_brightness: float = 0.15, brightness: Tuple[float, float] = (0.75, 1.25),
                 p_contrast: float = 0.15, contrast: Tuple[float, float] = (0.75, 1.25),
                 p_lowres: float = 0.25, lowres_zoom: Tuple[float, float] = (0.5, 1.0),
                 p_lowres_per_channel: float = 0.5,
                 p_gamma_inverted: float = 0.1, p_gamma: float = 0.3, gamma: Tuple[float, float] = (0.7, 1.5),
                 mirror_axes: Optional[Sequence[int]] = None, p_mirror: float = 0.5,
                 dummy_2d: Optional[bool] = None):
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.patch_size = None if patch_size is None else tuple(int(p) for p in patch_size)
        if self.patch_size is not None and len(self.patch_size) != spatial_dims:
            raise ValueError(f"patch_size {self.patch_size} does not have {spatial_dims} axes")
        self.dummy_2d = dummy_2d
        self.p_rotation, self.rotation_deg = p_rotation, rotation_deg
        self.p_scaling, self.scaling = p_scaling, tuple(scaling)
        self.p_elastic, self.elastic_sigma, self.elastic_magnitude = p_elastic, elastic_sigma, elastic_magnitude
        self.p_noise, self.noise_std = p_noise, tuple(noise_std)
        self.p_blur, self.blur_sigma, self.p_blur_per_channel = p_blur, tuple(blur_sigma), p_blur_per_channel
        self.p_brightness, self.brightness = p_brightness, tuple(brightness)
        self.p_contrast, self.contrast = p_contrast, tuple(contrast)
        self.p_lowres, self.lowres_zoom, self.p_lowres_per_channel = p_lowres, tuple(lowres_zoom), p_lowres_per_channel
        self.p_gamma_inverted, self.p_gamma, self.gamma = p_gamma_inverted, p_gamma, tuple(gamma)
        self.mirror_axes = tuple(range(spatial_dims)) if mirror_axes is None else tuple(int(a) for a in mirror_axes)
        if any(not 0 <= a < spatial_dims for a in self.mirror_axes):
            raise ValueError(f"mirror_axes {self.mirror_axes} must be spatial axes 0..{spatial_dims - 1}")
        self.p_mirror = p_mirror

    def _dummy(self, patch_size) -> bool:
        if self.dummy_2d is not None:
            return bool(self.dummy_2d) and self.spatial_dims == 3
        return is_dummy_2d(patch_size)

    # -- spatial -------------------------------------------------------------------------------------------------
    def spatial_matrix(self, rng: np.random.Generator, patch_size: Optional[Sequence[int]] = None
                       ) -> Optional[np.ndarray]:
        """Draw rotation (p_rotation) and scaling (p_scaling) independently; the N x N voxel-space matrix mapping
        output offsets to input offsets, or None when neither fires (the patch is then an exact crop)."""
        patch_size = tuple(patch_size or self.patch_size or (1,) * self.spatial_dims)
        n = self.spatial_dims
        dummy = self._dummy(patch_size)
        m = np.eye(n)
        changed = False
        if rng.random() < self.p_rotation:
            deg = self.rotation_deg if self.rotation_deg is not None else (180.0 if (n == 2 or dummy) else 30.0)
            a = math.radians(deg)
            if n == 2:
                m = rotation_matrix([rng.uniform(-a, a)])
            elif dummy:  # in-plane only: about axis 0
                m = rotation_matrix([rng.uniform(-a, a), 0.0, 0.0])
            else:
                m = rotation_matrix(rng.uniform(-a, a, 3).tolist())
            changed = True
        if rng.random() < self.p_scaling:
            s = float(rng.uniform(*self.scaling))
            scale = np.full(n, s)
            if dummy:
                scale[0] = 1.0
            m = m @ np.diag(scale)
            changed = True
        return m if changed else None

    def _elastic(self, image, mask, rng):
        from monai.transforms import Rand2DElastic, Rand3DElastic

        shape = tuple(image.shape[1:])
        if self.spatial_dims == 3:
            t = Rand3DElastic(sigma_range=self.elastic_sigma, magnitude_range=self.elastic_magnitude, prob=1.0,
                              spatial_size=shape, padding_mode="zeros")
        else:
            t = Rand2DElastic(spacing=tuple(max(2, s // 4) for s in shape), magnitude_range=(1.0, 2.0), prob=1.0,
                              spatial_size=shape, padding_mode="zeros")
        t.set_random_state(seed=int(rng.integers(2 ** 31)))
        t.randomize(shape)
        img = t(image, mode="bilinear", randomize=False)
        out_mask = None
        if mask is not None:
            shifted = (mask + 1).to(torch.float32)[None]  # -1 -> 0 (the padding value)
            m = t(shifted, mode="nearest", randomize=False)
            m = m.as_tensor() if hasattr(m, "as_tensor") else m
            out_mask = m[0].round().to(torch.int64) - 1
        img = img.as_tensor() if hasattr(img, "as_tensor") else img
        return img.float(), out_mask

    # -- everything after the spatial sampling -------------------------------------------------------------------
    def augment_patch(self, image: torch.Tensor, mask: Optional[torch.Tensor], rng: np.random.Generator,
                      inplace: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Elastic (optional), noise, blur, brightness, contrast, low resolution, gammas, mirroring on a patch
        ``image (C, *P)`` float32 / ``mask (*P)`` int64 (or None). ``inplace`` lets it overwrite ``image`` (a patch
        that is already a private copy) instead of cloning it first."""
        if not inplace:
            image = image.clone()
        n = self.spatial_dims
        c = image.shape[0]
        dummy = self._dummy(tuple(image.shape[1:]) if self.patch_size is None else self.patch_size)
        if self.p_elastic > 0 and rng.random() < self.p_elastic:
            image, mask = self._elastic(image, mask, rng)
        tgen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        if rng.random() < self.p_noise:
            std = float(rng.uniform(*self.noise_std))
            image += torch.randn(image.shape, generator=tgen, dtype=image.dtype) * std
        if rng.random() < self.p_blur:
            for ch in range(c):
                if rng.random() < self.p_blur_per_channel:
                    image[ch] = gaussian_blur(image[ch], rng.uniform(*self.blur_sigma, n).tolist())
        if rng.random() < self.p_brightness:
            for ch in range(c):
                image[ch] *= bg_contrast(rng, *self.brightness)
        if rng.random() < self.p_contrast:
            for ch in range(c):
                image[ch] = contrast_transform(image[ch], bg_contrast(rng, *self.contrast))
        if rng.random() < self.p_lowres:
            for ch in range(c):
                if rng.random() < self.p_lowres_per_channel:
                    zoom = float(rng.uniform(*self.lowres_zoom))  # per channel, the same for every axis
                    image[ch] = _simulate_lowres(image[ch], [1.0 if (dummy and ax == 0) else zoom for ax in range(n)])
        if rng.random() < self.p_gamma_inverted:
            for ch in range(c):
                image[ch] = gamma_transform(image[ch], bg_contrast(rng, *self.gamma), invert=True)
        if rng.random() < self.p_gamma:
            for ch in range(c):
                image[ch] = gamma_transform(image[ch], bg_contrast(rng, *self.gamma), invert=False)
        flip = [ax for ax in self.mirror_axes if rng.random() < self.p_mirror]
        if flip:
            image = image.flip([1 + ax for ax in flip])
            if mask is not None:
                mask = mask.flip(flip)
        return image.contiguous(), (None if mask is None else mask.contiguous())

    def __call__(self, sample: Dict, rng: Optional[np.random.Generator] = None) -> Dict:
        """Standalone use on a patch sample ``{"image": (C, *P), "mask": (*P), ...}``: rotation/scaling about the patch
        centre (out-of-patch voxels: image 0, label -1), then :meth:`augment_patch`. Returns a new dict."""
        rng = rng if rng is not None else np.random.default_rng()
        image, mask = sample["image"], sample.get("mask")
        shape = tuple(image.shape[1:])
        if len(shape) != self.spatial_dims:
            raise ValueError(f"image has {len(shape)} spatial axes, the augmentation was built for "
                             f"spatial_dims={self.spatial_dims}")
        m = self.spatial_matrix(rng, self.patch_size or shape)
        if m is not None:
            image, mask = extract_patch(image, mask, [0] * len(shape), shape, m)
        image, mask = self.augment_patch(image, mask, rng)
        out = dict(sample)
        out["image"] = image
        if mask is not None:
            out["mask"] = mask
        return out

    def __repr__(self):
        return (f"NnUNetAugmentation(spatial_dims={self.spatial_dims}, patch_size={self.patch_size}, "
                f"p_rotation={self.p_rotation}, p_scaling={self.p_scaling}, p_elastic={self.p_elastic}, "
                f"mirror_axes={self.mirror_axes})")
