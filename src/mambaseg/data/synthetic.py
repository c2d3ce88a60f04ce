"""Built-in synthetic data sets that a model must really learn (no download needed).

Three generators, deterministic from ``(seed, split, index)`` (a different sub-seed per split, so train, val and
test never share a sample), vectorised numpy, generated on demand and cached in memory (optionally on disk):

* ``synthetic-skin`` (:class:`SyntheticSkin`): RGB dermoscopy-like images, one lesion of irregular shape with
  uneven colour and texture and a blurred border, on skin of random tone with freckles (not labelled), hair-like
  occluders, vignetting and sometimes the dark circular border of the dermatoscope; binary mask of the lesion.
* ``synthetic-polyp`` (:class:`SyntheticPolyp`): RGB endoscopy-like images: reddish mucosa with folds and
  vessels, uneven illumination with a dark lumen, one to three polyps (domes with shading and their own texture,
  colour close to the mucosa) and specular highlights; binary mask of the polyps.
* ``synthetic-cardiac`` (:class:`SyntheticCardiac`): grayscale MRI-like short-axis volumes (``depth`` slices,
  base to apex, spacing ``(z, y, x)`` in mm in the metadata) with a body, lungs, a bright fat layer, a liver, and a
  heart: right ventricle (1), myocardium ring (2), left ventricle with papillary muscles (3) — ACDC's label order;
  bias field and Rician noise. LV and RV blood have the same brightness and the myocardium that of other muscle,
  so intensity alone cannot separate the classes.

Images are quantised like files: skin/polyp are 0..255 (float32 holding integers, as if read from PNG), cardiac is
float in [0, 1] per volume (as the SSL4MIS h5 files). ``size`` is the side of the square image (any int >= 32;
multiples of 32 suit the models); shapes scale with it, so a 64-px set is a downsampled-looking 256-px set.

**How hard are they?** Measured on the test split at 64 px, seed 0 (baselines fitted on 256 training images /
32 training volumes; scored on 64 test images / 8 test volumes). Dice of the foreground per image, averaged over
images; cardiac: per class 1..3 over the slices containing it, then the mean of the classes.

========================  =====  =================  ==========  ====================
data set                  Otsu   best pixel-colour  tiny CNN    small U-Net
========================  =====  =================  ==========  ====================
synthetic-skin            0.38   0.41               0.54        0.97
synthetic-polyp           0.10   0.27               0.39        0.95
synthetic-cardiac         --     0.13               0.57        0.91
========================  =====  =================  ==========  ====================

* Otsu: Otsu threshold of the gray image per image; foreground = the darker or the brighter side, whichever
  scores better on the training split (skin: darker; polyp: brighter).
* best pixel-colour: a histogram classifier of the pixel value (16³ RGB bins / 64 gray levels) fitted on the
  training split; binary: threshold on P(foreground | colour) chosen for the best training Dice; cardiac:
  class-balanced maximum likelihood. An upper bound for any per-pixel threshold or colour rule.
* tiny CNN: three 3x3 conv layers (16 channels, receptive field 7 px), class-weighted cross-entropy, 300 Adam
  steps of batch 16 (~15 s on one CPU core).
  Command for these three columns: ``python benchmarks/synthetic_baselines.py --baseline`` (about a minute on one
  core; ``--no-cnn`` skips the CNN).
* small U-Net: a 3-level U-Net (16-32-64-64 channels, BatchNorm), CE + Dice, Adam 3e-3 with cosine decay, 800
  steps of batch 16 with flips (~3 min per set on one CPU core): ``python benchmarks/synthetic_baselines.py
  --baseline --unet``. It shows the sets are learnable by a model that sees shape and context.
"""

from __future__ import annotations

import os
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from mambaseg.utils.fileio import atomic_path

from .base import SegDataset, VolumeDataset, VolumeSliceDataset, VolumeSource

__all__ = ["SyntheticSkin", "SyntheticPolyp", "SyntheticCardiac", "generate_skin", "generate_polyp",
           "generate_cardiac_volume", "cache_root", "GENERATOR_VERSION"]

#: bump when a generator changes, so that disk caches of older versions are not reused
GENERATOR_VERSION = 1
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_DATA_CODE = {"skin": 11, "polyp": 12, "cardiac": 13}
_DEFAULT_N = {"train": 256, "val": 64, "test": 64}
_DEFAULT_VOLUMES = {"train": 24, "val": 6, "test": 8}


def cache_root() -> Path:
    """Disk cache folder: ``$MAMBASEG_CACHE`` or ``~/.cache/mambaseg``."""
    return Path(os.environ.get("MAMBASEG_CACHE") or Path.home() / ".cache" / "mambaseg")


def _rng(seed: int, data: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _DATA_CODE[data], _SPLIT_CODE[split],
                                                         int(index)]))


# ----------------------------------------------------------------------------------------------------------------
# noise and drawing helpers (all vectorised)
# ----------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _interp_taps(n_out: int, n_in: int):
    """4-tap Gaussian interpolation (sigma 0.8 low-res pixels): indices and weights ``(n_out, 4)``."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    base = np.floor(pos).astype(np.int64)
    idx = base[:, None] + np.arange(-1, 3)[None]
    w = np.exp(-0.5 * ((pos[:, None] - idx) / 0.8) ** 2)
    w = (w / w.sum(1, keepdims=True)).astype(np.float32)
    return np.clip(idx, 0, n_in - 1), w


def smooth_noise(rng, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """``(channels, size, size)`` smooth noise (~unit std) with about ``cells`` blobs across.

    Separable 4-tap Gaussian upsampling of white noise (elementwise numpy only: no BLAS, whose threads thrash on
    a busy machine)."""
    g = max(2, int(cells))
    low = rng.standard_normal((channels, g, g)).astype(np.float32)
    idx, w = _interp_taps(size, g)
    rows = sum(low[:, idx[:, t], :] * w[None, :, t, None] for t in range(4))  # (c, size, g)
    out = sum(rows[:, :, idx[:, t]] * w[None, None, :, t] for t in range(4))  # (c, size, size)
    return out / (out.std(axis=(1, 2), keepdims=True) + 1e-6)


@lru_cache(maxsize=16)
def _grid(size: int):
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return yy, xx


def _blob(rng, size, cy, cx, r0, aspect, theta, irregular, harmonics=7):
    """Signed depth ``1 - rho / r(angle)`` of an irregular star-shaped blob (> 0 inside)."""
    yy, xx = _grid(size)
    cy, cx, r0, aspect, theta = float(cy), float(cx), float(r0), float(aspect), float(theta)
    dy, dx = yy - cy, xx - cx
    ct, st = np.cos(theta), np.sin(theta)
    u = (ct * dx + st * dy) / aspect
    v = -st * dx + ct * dy
    rho = np.sqrt(u * u + v * v) + 1e-6
    c1, s1 = u / rho, v / rho  # cos/sin of the polar angle; cos(k a), sin(k a) by recurrence (no trig per pixel)
    amp = rng.normal(0, irregular, harmonics - 1) / np.arange(2, harmonics + 1) ** 0.9
    ph = rng.uniform(0, 2 * np.pi, harmonics - 1)
    ck, sk = c1, s1
    r = np.ones_like(rho)
    for j in range(harmonics - 1):  # k = j + 2
        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
        r += np.float32(amp[j] * np.cos(ph[j])) * ck - np.float32(amp[j] * np.sin(ph[j])) * sk
    r *= np.float32(r0)
    return 1 - rho / np.maximum(r, 0.2 * r0)


def _stamp(size, pts_y, pts_x, sigma_px):
    """Blurred point canvas in [0, 1] (lines/spots drawn as dense points)."""
    from scipy.ndimage import gaussian_filter

    canvas = np.zeros((size, size), np.float32)
    iy = np.clip(((pts_y + 1) / 2 * size).astype(np.int64), 0, size - 1)
    ix = np.clip(((pts_x + 1) / 2 * size).astype(np.int64), 0, size - 1)
    canvas[iy, ix] = 1.0
    sig = max(sigma_px, 0.5)
    out = gaussian_filter(canvas, sig, truncate=3.0) * (2.5 * sig) ** 2 / 2.5
    return np.clip(out, 0, 1)


def _quantise(img):
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# skin
# ----------------------------------------------------------------------------------------------------------------
def generate_skin(rng: np.random.Generator, size: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """One dermoscopy-like image ``(size, size, 3)`` uint8 and its lesion mask ``(size, size)`` uint8 (0/1)."""
    S = size
    yy, xx = _grid(S)
    # skin: tone, low-frequency shading, fine texture
    tone = np.array([rng.uniform(175, 235), rng.uniform(125, 185), rng.uniform(100, 160)], np.float32)
    shade = smooth_noise(rng, S, 4, 1)[0] * rng.uniform(0.03, 0.08)
    tex = smooth_noise(rng, S, S // 6, 1)[0] * rng.uniform(0.01, 0.04)
    img = tone[None, None] * (1 + shade + tex)[..., None]
    # lesion
    cy, cx = map(float, rng.uniform(-0.3, 0.3, 2))
    r0 = rng.uniform(0.2, 0.5)
    depth = _blob(rng, S, cy, cx, r0, rng.uniform(0.7, 1.3), rng.uniform(0, np.pi), rng.uniform(0.1, 0.35))
    depth = depth + smooth_noise(rng, S, 12, 1)[0] * 0.04  # fine boundary irregularity
    mask = depth > 0
    dark = np.array([rng.uniform(70, 160), rng.uniform(35, 105), rng.uniform(25, 85)], np.float32)
    alt = np.array([rng.uniform(110, 190), rng.uniform(70, 140), rng.uniform(70, 150)], np.float32)  # grey-blue/light
    zones = 1 / (1 + np.exp(-smooth_noise(rng, S, 6, 1)[0] * 2.5))
    lesion_col = dark[None, None] * (1 - zones[..., None]) + alt[None, None] * zones[..., None]
    lesion_col = lesion_col * (1 + smooth_noise(rng, S, S // 8, 1)[0] * rng.uniform(0.03, 0.1))[..., None]
    contrast = rng.uniform(0.45, 1.0)  # faint lesions exist
    tau = rng.uniform(0.03, 0.15)  # border blur, in units of the lesion radius
    alpha = contrast / (1 + np.exp(-np.clip(depth / tau, -30, 30)))
    img = img * (1 - alpha[..., None]) + lesion_col * alpha[..., None]
    # freckles (unlabelled dark spots)
    for _ in range(int(rng.integers(0, 6))):
        fy, fx = (float(v) for v in rng.uniform(-0.9, 0.9, 2))
        if np.hypot(fy - cy, fx - cx) < r0 * 1.4:
            continue
        fr = rng.uniform(0.015, 0.05)
        y0, y1 = (max(0, int((fy - fr + 1) / 2 * S) - 1), min(S, int((fy + fr + 1) / 2 * S) + 2))
        x0, x1 = (max(0, int((fx - fr + 1) / 2 * S) - 1), min(S, int((fx + fr + 1) / 2 * S) + 2))
        d = np.clip(1 - np.sqrt((yy[y0:y1, x0:x1] - fy) ** 2 + (xx[y0:y1, x0:x1] - fx) ** 2) / fr, 0, 1) ** 0.6
        img[y0:y1, x0:x1] *= (1 - rng.uniform(0.3, 0.6) * d[..., None])
    # hair: dark quadratic Bezier curves over everything
    n_hair = int(rng.choice([0, 0, 1, 2, 3, 5, 8]))
    if n_hair:
        t = np.linspace(0, 1, 3 * S, dtype=np.float32)[None]
        p0, p1, p2 = (rng.uniform(-1.2, 1.2, (3, n_hair, 2)).astype(np.float32))
        pts = ((1 - t) ** 2)[..., None] * p0[:, None] + (2 * (1 - t) * t)[..., None] * p1[:, None] + \
              (t ** 2)[..., None] * p2[:, None]
        hair = _stamp(S, pts[..., 0].ravel(), pts[..., 1].ravel(), rng.uniform(0.4, 0.8) * S / 256 * 1.5)
        hair_col = np.array([rng.uniform(20, 60)] * 3, np.float32) * np.array([1.0, 0.8, 0.7], np.float32)
        img = img * (1 - hair[..., None]) + hair_col * hair[..., None]
    # vignetting and the dermatoscope's dark circle
    rr = np.sqrt(yy ** 2 + xx ** 2)
    img = img * (1 - rng.uniform(0.1, 0.45) * np.clip(rr / 1.41, 0, 1) ** 2)[..., None]
    if rng.random() < 0.35:
        rad = rng.uniform(1.0, 1.3)
        edge = 1 / (1 + np.exp(-(rr - rad) / 0.02))
        img = img * (1 - 0.92 * edge[..., None])
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(1.5, 5))
    return _quantise(img), mask.astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# polyp
# ----------------------------------------------------------------------------------------------------------------
def generate_polyp(rng: np.random.Generator, size: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """One endoscopy-like image ``(size, size, 3)`` uint8 and its polyp mask ``(size, size)`` uint8 (0/1)."""
    from scipy.ndimage import gaussian_filter

    S = size
    yy, xx = _grid(S)
    base = np.array([rng.uniform(170, 225), rng.uniform(80, 125), rng.uniform(65, 105)], np.float32)
    # folds: warped sinusoidal ridges
    phi = rng.uniform(0, np.pi)
    warp = smooth_noise(rng, S, 3, 1)[0]
    ridge = np.sin(rng.uniform(4, 9) * (np.cos(phi) * xx + np.sin(phi) * yy) + 1.5 * warp)
    shade = 1 + rng.uniform(0.05, 0.15) * ridge
    # vessels: zero crossings of mid-frequency noise
    vn = smooth_noise(rng, S, 10, 1)[0]
    vessels = np.exp(-(vn / 0.08) ** 2) * rng.uniform(0.05, 0.2)
    img = base[None, None] * shade[..., None] * (1 - vessels[..., None] * np.array([0.3, 1.0, 0.8], np.float32))
    # polyps
    n = int(rng.choice([1, 1, 1, 1, 1, 1, 2, 2, 2, 3]))
    mask = np.zeros((S, S), bool)
    ly, lx = map(float, rng.normal(0, 0.5, 2))  # light direction for the dome shading
    for _ in range(n):
        cy, cx = map(float, rng.uniform(-0.65, 0.65, 2))
        r0 = rng.uniform(0.1, 0.32) / (1 + 0.3 * (n - 1))
        d = _blob(rng, S, cy, cx, r0, rng.uniform(0.75, 1.3), rng.uniform(0, np.pi), rng.uniform(0.05, 0.2), 5)
        inside = d > 0
        h = np.sqrt(np.clip(d, 0, 1))  # dome height
        gy, gx = np.gradient(h * r0 * S / 2)
        lit = np.clip(1 + 0.35 * (gy * ly + gx * lx) / (np.abs(gy) + np.abs(gx) + 1).max(), 0.5, 1.5)
        col = base * np.array([rng.uniform(0.85, 1.12), rng.uniform(0.8, 1.3), rng.uniform(0.85, 1.3)], np.float32)
        pit = 1 + smooth_noise(rng, S, max(8, int(S / 8 * (0.3 / max(r0, 0.05)) / 3)), 1)[0] * rng.uniform(0.03, 0.08)
        soft = 1 / (1 + np.exp(-np.clip(d / rng.uniform(0.04, 0.12), -30, 30)))
        poly = col[None, None] * (lit * pit * (0.75 + 0.25 * h))[..., None]
        rim = np.exp(-(d / 0.06) ** 2) * rng.uniform(0.05, 0.25)  # shadow at the base of the dome
        img = img * (1 - rim[..., None])
        img = img * (1 - soft[..., None]) + poly * soft[..., None]
        mask |= inside
    # illumination and the dark lumen
    lcy, lcx = map(float, rng.uniform(-0.5, 0.5, 2))
    illum = 1.1 - rng.uniform(0.2, 0.5) * np.clip(np.sqrt((yy - lcy) ** 2 + (xx - lcx) ** 2) / 1.5, 0, 1) ** 1.5
    img = img * illum[..., None]
    if rng.random() < 0.7:
        my, mx = map(float, rng.uniform(-0.8, 0.8, 2))
        lum = np.exp(-(((yy - my) ** 2 + (xx - mx) ** 2) / rng.uniform(0.03, 0.12)))
        img = img * (1 - rng.uniform(0.5, 0.9) * lum[..., None])
    # specular highlights: small saturated spots, partly on the polyps
    k = int(rng.integers(6, 30))
    on_p = np.flatnonzero(mask.ravel())
    sy = rng.uniform(-1, 1, k)
    sx = rng.uniform(-1, 1, k)
    if on_p.size:
        sel = rng.random(k) < 0.4
        pick = rng.choice(on_p, int(sel.sum()))
        sy[sel] = (pick // S + 0.5) / S * 2 - 1
        sx[sel] = (pick % S + 0.5) / S * 2 - 1
    spots = np.zeros((S, S), np.float32)
    iy = np.clip(((sy + 1) / 2 * S).astype(int), 0, S - 1)
    ix = np.clip(((sx + 1) / 2 * S).astype(int), 0, S - 1)
    spots[iy, ix] = rng.uniform(0.5, 3.0, k)
    sig = max(0.5, S / 256 * 1.3)
    spots = gaussian_filter(spots, sig) * sig ** 2 * 8
    spots = np.clip(spots, 0, 1)
    img = img * (1 - spots[..., None]) + 255 * spots[..., None]
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(1.5, 4))
    return _quantise(img), mask.astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# cardiac
# ----------------------------------------------------------------------------------------------------------------
def generate_cardiac_volume(rng: np.random.Generator, size: int = 256, depth: int = 8):
    """One short-axis volume: image ``(depth, size, size)`` float32 in [0, 1], labels ``(depth, size, size)``
    uint8 (0 bg, 1 RV, 2 MYO, 3 LV), spacing ``(z, y, x)`` in mm."""
    from scipy.ndimage import gaussian_filter

    S, D = size, depth
    yy, xx = _grid(S)
    spacing = (float(rng.uniform(5, 10)), *(2 * [float(rng.uniform(1.2, 1.9)) * 256 / S]))
    # body and surroundings (constant along z with drift)
    by, bx = map(float, rng.uniform(-0.05, 0.05, 2))
    ba, bb = rng.uniform(0.78, 0.92), rng.uniform(0.6, 0.78)
    hy, hx = map(float, rng.uniform(-0.15, 0.15, 2))  # heart centre
    rot = rng.uniform(-0.6, 0.6)
    rv_dir = np.pi + rot + rng.uniform(-0.35, 0.35)  # RV on the image's left, as in ACDC
    a0 = rng.uniform(0.15, 0.23)
    thick = rng.uniform(0.035, 0.07)
    lv_aspect = rng.uniform(0.85, 1.15)
    rv_len = int(np.ceil(D * rng.uniform(0.6, 0.9)))
    rv_w, rv_h = rng.uniform(0.8, 1.1), rng.uniform(1.5, 2.0)
    I_blood = rng.uniform(0.75, 0.9)
    I_myo = rng.uniform(0.25, 0.35)
    I_muscle = I_myo + rng.uniform(-0.03, 0.08)
    I_fat = rng.uniform(0.8, 0.95)
    I_liver = rng.uniform(0.35, 0.5)
    bias = 1 + 0.18 * smooth_noise(rng, S, 3, 1)[0]
    n_pap = int(rng.integers(1, 3))
    pap_ang = rng.uniform(0, 2 * np.pi, n_pap)
    lung_off = rng.uniform(0.35, 0.55)
    vol = np.zeros((D, S, S), np.float32)
    lab = np.zeros((D, S, S), np.uint8)
    shape_rng_state = rng.integers(0, 2 ** 31)
    for k in range(D):
        f = k / max(D - 1, 1)  # 0 base .. 1 apex
        srng = np.random.default_rng(shape_rng_state)  # same shape harmonics every slice
        jrng = np.random.default_rng([shape_rng_state, k])
        cy = hy + 0.02 * f + jrng.normal(0, 0.006)
        cx = hx + 0.02 * f + jrng.normal(0, 0.006)
        r_lv = a0 * (1 - 0.75 * f ** 1.6)
        lv = _blob(srng, S, cy, cx, r_lv, lv_aspect, rot, 0.08, 4) > 0
        outer_d = _blob(srng, S, cy, cx, r_lv + thick * (1 + 0.3 * f), lv_aspect, rot, 0.05, 4)
        epi = outer_d > 0
        body = ((yy - by) / bb) ** 2 + ((xx - bx) / ba) ** 2 < 1
        fat_ring = body & ~(((yy - by) / (bb - 0.05)) ** 2 + ((xx - bx) / (ba - 0.05)) ** 2 < 1)
        img = np.where(body, I_muscle, 0.02).astype(np.float32)
        # lungs: dark lobes left and right of the heart
        for side in (-1, 1):
            lg = ((yy - hy + 0.05) / 0.45) ** 2 + ((xx - (hx + side * (lung_off + a0))) / 0.28) ** 2 < 1
            img[lg & body] = 0.06
        # liver: lower right of the image, in apical slices
        if f > 0.4:
            lvr = ((yy - 0.55) / 0.35) ** 2 + ((xx + 0.35 - 0.2) / 0.5) ** 2 < (f - 0.3)
            img[lvr & body] = I_liver
        img[fat_ring] = I_fat
        # epicardial fat around the heart (bright, unlabelled)
        fat_d = _blob(srng, S, cy, cx, r_lv + thick * 1.9, lv_aspect, rot, 0.15, 5)
        img[(fat_d > 0) & ~epi] = I_fat * 0.9
        labels = np.zeros((S, S), np.uint8)
        if k < rv_len:
            fr = k / max(rv_len - 1, 1)
            ra = a0 * rv_w * (1 - 0.45 * fr)          # half-thickness of the crescent (along rv_dir)
            rb = a0 * rv_h * (1 - 0.35 * fr)          # half-length (around the LV)
            off = (r_lv + thick) * 0.55 + ra * 0.6
            rcy, rcx = cy + off * np.sin(rv_dir), cx + off * np.cos(rv_dir)
            rv = _blob(srng, S, rcy, rcx, rb, ra / rb, rv_dir + np.pi / 2, 0.06, 4) > 0
            rv &= ~_dilate_disk(epi, max(1, S // 128))
            img[rv] = I_blood * rng.uniform(0.92, 1.0)
            labels[rv] = 1
        img[epi] = I_myo
        img[lv] = I_blood
        labels[epi] = 2
        labels[lv] = 3
        # papillary muscles: myocardium-dark spots inside the LV cavity, labelled LV (as ACDC)
        for ang in pap_ang:
            py = cy + 0.6 * r_lv * np.sin(ang + rot)
            px = cx + 0.6 * r_lv * np.cos(ang + rot)
            pm = ((yy - py) ** 2 + (xx - px) ** 2) < (0.22 * r_lv) ** 2
            img[pm & lv] = I_myo
        img = gaussian_filter(img, 0.6 * S / 128) * bias
        vol[k], lab[k] = img, labels
    sigma = rng.uniform(0.03, 0.06)
    n1 = rng.standard_normal(vol.shape, dtype=np.float32) * np.float32(sigma)
    n2 = rng.standard_normal(vol.shape, dtype=np.float32) * np.float32(sigma)
    vol = np.sqrt((vol + n1) ** 2 + n2 ** 2)
    vol = (vol - vol.min()) / (vol.max() - vol.min() + 1e-6)
    return vol.astype(np.float32), lab, spacing


def _dilate_disk(mask, r):
    from scipy.ndimage import binary_dilation

    st = np.add.outer(np.arange(-r, r + 1) ** 2, np.arange(-r, r + 1) ** 2) <= r * r
    return binary_dilation(mask, st)


# ----------------------------------------------------------------------------------------------------------------
# data sets
# ----------------------------------------------------------------------------------------------------------------
def _check_args(split, size):
    if split not in _SPLIT_CODE:
        raise ValueError(f"synthetic split must be 'train', 'val' or 'test', got {split!r}")
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an int >= 32 (a multiple of 32 suits the models), got {size!r}")


class _Synthetic2D(SegDataset):
    data: str = ""
    generator: Callable = None  # type: ignore[assignment]

    def __init__(self, split: str = "train", num_samples: Optional[int] = None, size: int = 256, seed: int = 0,
                 transform: Optional[Callable] = None, disk_cache: bool = False, cache_dir=None):
        super().__init__(transform)
        _check_args(split, size)
        self.split, self.size, self.seed = split, int(size), int(seed)
        self.num_samples = int(num_samples if num_samples is not None else _DEFAULT_N[split])
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_classes, self.in_channels = 2, 3
        self._mem: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
        if disk_cache:
            self._load_or_build_disk(Path(cache_dir) if cache_dir is not None else cache_root())

    def _cache_file(self, root: Path) -> Path:
        return root / "synthetic" / (f"{self.data}-v{GENERATOR_VERSION}-{self.split}-seed{self.seed}-"
                                     f"n{self.num_samples}-{self.size}px.npz")

    def _load_or_build_disk(self, root: Path):
        path = self._cache_file(root)
        if path.is_file():
            try:
                with np.load(path) as z:
                    images, masks = z["images"], z["masks"]
                if images.shape[0] == self.num_samples:
                    self._mem = {i: (images[i], masks[i]) for i in range(self.num_samples)}
                    return
            except (OSError, ValueError, KeyError):
                pass  # unreadable cache: regenerate into a fresh file
        pairs = [self._generate(i) for i in range(self.num_samples)]
        self._mem = dict(enumerate(pairs))
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(str(path)) as tmp:  # same suffix (.npz): numpy adds none
            np.savez_compressed(tmp, images=np.stack([p[0] for p in pairs]), masks=np.stack([p[1] for p in pairs]))

    def _generate(self, index: int):
        return type(self).generator(_rng(self.seed, self.data, self.split, index), self.size)

    def __len__(self):
        return self.num_samples

    def case_ids(self):
        return [f"{self.data}_{self.split}_{i:05d}" for i in range(self.num_samples)]

    def load(self, index):
        if index not in self._mem:
            self._mem[index] = self._generate(index)
        img, msk = self._mem[index]
        meta = {"case_id": f"{self.data}_{self.split}_{index:05d}", "original_size": (self.size, self.size)}
        return img.astype(np.float32), msk.astype(np.int64), meta


class SyntheticSkin(_Synthetic2D):
    """``synthetic-skin``: RGB dermoscopy-like lesions, binary masks (module docstring for the baselines).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (each its own sub-seed).
        num_samples: number of images (default 256 train / 64 val / 64 test).
        size: image side in pixels (int >= 32).
        seed: base seed.
        transform: joint transform.
        disk_cache: also cache the generated set as ``.npz`` under ``cache_dir`` (default ``$MAMBASEG_CACHE`` or
            ``~/.cache/mambaseg``).
    """

    data = "skin"
    generator = staticmethod(generate_skin)
    class_names = ["background", "lesion"]


class SyntheticPolyp(_Synthetic2D):
    """``synthetic-polyp``: RGB endoscopy-like images with 1-3 polyps, binary masks (arguments as
    :class:`SyntheticSkin`)."""

    data = "polyp"
    generator = staticmethod(generate_polyp)
    class_names = ["background", "polyp"]


def _cardiac_volume(seed, split, index, size, depth):
    image, label, spacing = generate_cardiac_volume(_rng(seed, "cardiac", split, index), size, depth)
    return image[None], label.astype(np.int64), spacing, True


class SyntheticCardiac(VolumeSliceDataset):
    """``synthetic-cardiac``: MRI-like short-axis volumes, 4 classes in ACDC's order; a 2D data set of their slices
    (``len = num_samples * depth``), ``.volumes()`` for per-volume evaluation.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_samples: number of **volumes** (default 24 train / 6 val / 8 test); alias ``num_volumes``.
        size: slice side in pixels (int >= 32).
        depth: slices per volume (default 8).
        seed: base seed.
        transform: joint 2D transform.
        cache_size: decoded volumes kept in memory (default: all).
    """

    class_names_default = ["background", "right_ventricle", "myocardium", "left_ventricle"]

    def __init__(self, split: str = "train", num_samples: Optional[int] = None, size: int = 256, seed: int = 0,
                 transform: Optional[Callable] = None, depth: int = 8, num_volumes: Optional[int] = None,
                 cache_size: Optional[int] = None):
        _check_args(split, size)
        if num_volumes is not None:
            num_samples = num_volumes
        n = int(num_samples if num_samples is not None else _DEFAULT_VOLUMES[split])
        if n < 1 or depth < 1:
            raise ValueError(f"num_samples (volumes) and depth must be >= 1, got {n} and {depth}")
        self.split, self.size, self.seed, self.depth, self.num_volumes = split, int(size), int(seed), int(depth), n
        sources = [VolumeSource(f"cardiac_{split}_{i:04d}", depth, partial(_cardiac_volume, self.seed, split, i,
                                                                           self.size, self.depth)) for i in range(n)]
        super().__init__(sources, 4, 1, transform, cache_size if cache_size is not None else n,
                         self.class_names_default)

    def volumes(self) -> VolumeDataset:
        ds = VolumeDataset(self.sources, 4, 1, self.class_names, cache_size=self.cache_size)
        ds._cache = self._cache  # share decoded volumes with the slice view
        return ds
