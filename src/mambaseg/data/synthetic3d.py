"""``synthetic-brats``: generated brain-MR-like volumes with a nested tumour (no download), the embedded 3D default.

Each case is a skull-stripped brain (an ellipsoid with a wavy surface; zero outside, as the BraTS files) with grey
matter (an outer shell of uneven thickness), white matter, two ventricles (CSF) and one tumour made of three nested
parts with BraTS 2017-2021 semantics, remapped to consecutive labels as in the volumetric contract:

=====  ==========================================  ============================================================
label  tissue (BraTS label)                        geometry
=====  ==========================================  ============================================================
0      background and healthy brain                --
1      necrotic / non-enhancing core (NCR/NET, 1)  inside the enhancing rim, never touching oedema or brain   
2      oedema (ED, 2)                              an irregular blob around the core, at least 2 voxels thick
3      enhancing tumour (ET, 4)                    a rim of uneven thickness around the necrosis
=====  ==========================================  ============================================================

Regions (``label_mode="regions"``): whole tumour WT = [1, 2, 3], tumour core TC = [1, 3], enhancing tumour ET = [3],
listed outer to inner (``regions``, ``region_names``); the mask stays the label map 0..3 (the loss/metrics build the
region targets, see the contract). ``label_mode="labels"`` (default) declares no regions: plain 4-class softmax.

Channels (``channels`` = 2, 3 or 4, or a list of names) in the order ``flair, t1ce, t2, t1`` (the first ``n``), each
with its own noise level, a smooth bias field and a smooth texture. FLAIR: oedema and tumour bright; T1ce: the rim
bright, necrosis dark; T2: CSF, oedema and necrosis bright; T1: tumour slightly dark. Healthy look-alikes (label 0) make
intensity alone insufficient, as in real scans: FLAIR/T2-bright white-matter lesions that look like oedema, T1ce-bright
vessels that look like the enhancing rim, and CSF (ventricles, sulci) that looks like necrosis. The tumour lies in one
hemisphere beside the ventricles.

How hard: a per-voxel Gaussian classifier of the 4 channel values (:func:`voxel_baseline`: one full-covariance
Gaussian per class, fitted on 8 training cases at 48³, Dice over 4 test cases, seed 0) gets NCR 0.40, ED 0.81, ET 0.87,
WT 0.76, TC 0.66 (``python -m mambaseg.data.synthetic3d``); a network must use shape and context to do better.
A small 3D U-Net trained for only 300 steps of batch 2 on 32³ patches from 16 cases (:func:`unet_baseline`, ~1
CPU-minute; ``python -m mambaseg.data.synthetic3d --unet``) already gets NCR 0.81, ED 0.66, ET 0.92, WT 0.75, TC 0.91 on the whole
test volumes (necrosis and core from context; oedema still below the voxel classifier at that length of training).

Geometry: the field of view is ``size`` mm along every axis; the voxel spacing is ``spacing`` (mm, default 1 mm
isotropic), so the array shape is ``round(size / spacing)`` per axis and an anisotropic ``spacing=(1, 1, 3)`` gives
the same anatomy with thick slices along axis 2. Arrays are in (i, j, k) order with a non-identity affine (diagonal
spacing, origin at minus half the field of view), as the contract asks.

Intensities: ``normalize=True`` (default) z-scores every channel over the brain (non-zero) voxels and leaves the
outside at 0 (nnU-Net's ZScoreNormalization with ``use_mask_for_norm``, as the BraTS plans use); ``False`` gives the
raw positive "scanner units" (0 outside the brain), e.g. to run them through the preprocessing of ``vol_data``.

Deterministic from ``(seed, split, index)`` (train/val/test never share a case; case ``i`` does not depend on
``num_samples``), cached in memory after the first read. 32³ takes a few ms, 64³ about 0.1 s per case on one core.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["SyntheticBraTS", "generate_brats_volume", "BRATS_REGIONS", "BRATS_REGION_NAMES", "BRATS_CLASS_NAMES",
           "BRATS_CHANNELS"]

GENERATOR_VERSION = 2
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_DATA_CODE = 21
_DEFAULT_N = {"train": 20, "val": 5, "test": 5}

BRATS_CLASS_NAMES = ["background", "NCR/NET", "ED", "ET"]
BRATS_REGIONS = [[1, 2, 3], [1, 3], [3]]
BRATS_REGION_NAMES = ["WT", "TC", "ET"]
BRATS_CHANNELS = ("flair", "t1ce", "t2", "t1")

# tissue intensity per channel: background, WM, GM, CSF, NCR, ED, ET, lesion mimic (label 0, looks like ED),
# enhancing vessel (label 0, looks like ET on T1ce)
_TISSUE = {
    "flair": (0.0, 0.70, 0.85, 0.20, 0.25, 1.30, 1.15, 1.28, 1.12),
    "t1ce": (0.0, 1.00, 0.78, 0.30, 0.33, 0.72, 1.45, 0.72, 1.45),
    "t2": (0.0, 0.55, 0.80, 1.50, 1.47, 1.20, 1.00, 1.18, 0.98),
    "t1": (0.0, 1.00, 0.75, 0.30, 0.32, 0.66, 0.72, 0.68, 0.74),
}
_NOISE = {"flair": 0.10, "t1ce": 0.09, "t2": 0.12, "t1": 0.08}


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], cells: int) -> np.ndarray:
    """Smooth noise (~unit std) of the given voxel shape with about ``cells`` blobs across the field of view
    (the same physical scale along every axis whatever the voxel shape): trilinear upsampling of white noise."""
    import torch.nn.functional as F

    g = max(2, int(cells))
    low = torch.from_numpy(rng.standard_normal((g,) * 3).astype(np.float32))
    out = F.interpolate(low[None, None], size=tuple(int(s) for s in shape), mode="trilinear",
                        align_corners=False)[0, 0].numpy()
    return out / (out.std() + 1e-6)


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, iterations=iterations, border_value=0) if iterations > 0 else mask


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=iterations) if iterations > 0 else mask


def generate_brats_volume(rng: np.random.Generator, size: int = 64, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                          channels: Sequence[str] = BRATS_CHANNELS) -> Tuple[np.ndarray, np.ndarray]:
    """One case: image ``(C, I, J, K)`` float32 of raw positive intensities (0 outside the brain) and label map
    ``(I, J, K)`` int64 in 0..3 (table in the module docstring). ``size`` is the field of view in mm."""
    from scipy.ndimage import gaussian_filter

    spacing = tuple(float(s) for s in spacing)
    shape = tuple(max(8, int(round(size / s))) for s in spacing)
    axes = [((np.arange(n, dtype=np.float32) + 0.5) * (size / n)) / size * 2 - 1 for n in shape]  # [-1, 1] per axis
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)

    # brain: ellipsoid with a wavy surface
    semi = np.array([0.80, 0.68, 0.62]) * rng.uniform(0.92, 1.05, 3)
    wave = _smooth_noise(rng, shape, 4)
    rho = np.sqrt((x / semi[0]) ** 2 + (y / semi[1]) ** 2 + (z / semi[2]) ** 2)
    brain = rho < 1 + 0.04 * wave
    gm = brain & (rho > 0.80 + 0.06 * _smooth_noise(rng, shape, 6))
    vent = np.zeros(shape, bool)
    for side in (-1, 1):
        c = np.array([0.15 * side, rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.1)])
        r = np.array([0.10, 0.30, 0.16]) * rng.uniform(0.8, 1.2, 3)
        vent |= ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 < 1

    # tumour: centre well inside the brain, radii in normalised units
    r_core = rng.uniform(0.2, 0.3)
    r_ed = r_core * rng.uniform(1.35, 1.7)
    # in one hemisphere, beside the ventricles (it may press on one of them, never swallows both)
    centre = np.array([rng.choice([-1, 1]) * rng.uniform(0.35, 0.5), rng.uniform(-0.35, 0.35),
                       rng.uniform(-0.3, 0.3)]) * semi
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    dist = np.sqrt(dx * dx + dy * dy + dz * dz)
    d_core = dist / (1 + 0.22 * _smooth_noise(rng, shape, 5))
    d_ed = dist / (1 + 0.30 * _smooth_noise(rng, shape, 4))
    inner = _erode(brain, 3)
    tc = (d_core < r_core) & inner
    wt = ((d_ed < r_ed) | _dilate(tc, 2)) & brain
    rim = rng.uniform(0.25, 0.45)  # ET thickness as a fraction of the core radius, uneven via the noise below
    ncr = (d_core < r_core * (1 - rim) * (1 + 0.15 * _smooth_noise(rng, shape, 7))) & _erode(tc, 1)
    label = np.zeros(shape, np.int64)
    label[wt] = 2
    label[tc] = 3
    label[ncr] = 1

    # healthy look-alikes (label 0): FLAIR/T2-bright white-matter lesions like oedema, T1ce-bright vessels like the
    # enhancing rim, and the ventricles look like necrosis: intensity alone cannot tell them apart
    mimic = np.zeros(shape, bool)
    for _ in range(int(rng.integers(3, 8))):
        c = rng.uniform(-0.55, 0.55, 3) * semi
        r = rng.uniform(0.06, 0.11)
        mimic |= ((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) < r * r
    vessel = np.zeros(shape, bool)
    for _ in range(int(rng.integers(5, 10))):
        p0, p1 = rng.uniform(-0.7, 0.7, 3) * semi, rng.uniform(-0.7, 0.7, 3) * semi
        d = p1 - p0
        t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / float(d @ d), 0, 1)
        dist2 = (x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2
        vessel |= dist2 < rng.uniform(0.035, 0.05) ** 2
    tissue = np.zeros(shape, np.int64)  # 0 bg, 1 WM, 2 GM, 3 CSF, 4 NCR, 5 ED, 6 ET, 7 mimic, 8 vessel
    tissue[brain] = 1
    tissue[gm] = 2
    tissue[mimic & brain & ~gm] = 7
    tissue[vessel & brain] = 8
    tissue[vent & brain] = 3
    tissue[gm & (_smooth_noise(rng, shape, 14) > 1.0)] = 3  # CSF in the sulci
    tissue[label == 2] = 5
    tissue[label == 3] = 6
    tissue[label == 1] = 4
    sig_vox = [0.6 / s for s in spacing]  # partial-volume blur of ~0.6 mm
    texture = _smooth_noise(rng, shape, 12)
    bias = _smooth_noise(rng, shape, 2)
    image = np.empty((len(channels),) + shape, np.float32)
    for ci, name in enumerate(channels):
        lut = np.asarray(_TISSUE[name], np.float32) * np.float32(rng.uniform(0.9, 1.1))
        ch = lut[tissue]
        ch = gaussian_filter(ch, sig_vox, mode="nearest")
        ch *= 1 + 0.05 * texture + 0.08 * rng.uniform(0.5, 1.0) * bias
        ch += rng.normal(0, _NOISE[name], shape).astype(np.float32)
        ch *= np.float32(rng.uniform(300, 900))  # arbitrary scanner units
        ch[~brain] = 0
        image[ci] = np.maximum(ch, 0) + brain * 1e-3  # strictly positive inside the brain (non-zero crop = brain)
    return image, label


def _zscore_inside(image: np.ndarray) -> np.ndarray:
    nz = np.any(image != 0, axis=0)
    out = np.zeros_like(image)
    for c in range(image.shape[0]):
        v = image[c][nz]
        out[c][nz] = (v - v.mean()) / max(float(v.std()), 1e-8)
    return out


class SyntheticBraTS(Dataset):
    """Generated BraTS-like volumes (module docstring). ``dataset[i]`` is a contract 3D sample::

        {"image": float32 (C, I, J, K), "mask": int64 (I, J, K) in 0..3,
         "meta": {"case_id", "spacing", "original_spacing", "affine", "original_shape", "crop_bbox",
                  "source_files": [], "channel_names"}}

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (independent cases).
        num_samples: cases in the split (default 20 / 5 / 5).
        size: field of view in mm (= voxels per axis at 1 mm); >= 16. 32 for tests, 64 for a short demo.
        spacing: voxel spacing in mm per axis (i, j, k); e.g. ``(1, 1, 3)`` for thick slices along k.
        channels: 2, 3 or 4 (the first of ``flair, t1ce, t2, t1``), or a list of those names.
        label_mode: ``"labels"`` (4-class softmax; ``regions`` None) or ``"regions"`` (BraTS WT/TC/ET declared).
        normalize: z-score each channel inside the brain (0 outside); False keeps raw intensities.
        seed: base seed.
        transform: optional callable ``sample -> sample`` on the finished sample dict (e.g. a dict transform).

    Attributes read by the pipeline: ``num_classes`` (4, the label map's classes), ``in_channels``, ``class_names``,
    ``channel_names``, ``regions`` / ``region_names`` (None in label mode), ``spatial_dims`` (3), ``spacing``.
    """

    spatial_dims = 3

    def __init__(self, split: str = "train", num_samples: Optional[int] = None, size: int = 64,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0), channels: Union[int, Sequence[str]] = 4,
                 label_mode: str = "labels", normalize: bool = True, seed: int = 0,
                 transform: Optional[Callable[[Dict], Dict]] = None, cache: bool = True):
        if split not in _SPLIT_CODE:
            raise ValueError(f"split must be one of {list(_SPLIT_CODE)}, got {split!r}")
        if int(size) < 16:
            raise ValueError(f"size must be >= 16 (the field of view in mm), got {size}")
        spacing = tuple(float(s) for s in (spacing if isinstance(spacing, (list, tuple)) else (spacing,) * 3))
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive numbers (mm per axis i, j, k), got {spacing}")
        if isinstance(channels, (int, np.integer)):
            if not 1 <= int(channels) <= 4:
                raise ValueError(f"channels must be 1..4 or a list of {list(BRATS_CHANNELS)}, got {channels}")
            names = BRATS_CHANNELS[: int(channels)]
        else:
            names = tuple(str(c).lower() for c in channels)
            bad = [c for c in names if c not in _TISSUE]
            if bad or not names:
                raise ValueError(f"unknown channel(s) {bad}; choose from {list(BRATS_CHANNELS)}")
        if label_mode not in ("labels", "regions"):
            raise ValueError(f"label_mode must be 'labels' or 'regions', got {label_mode!r}")
        self.split, self.size, self.seed = split, int(size), int(seed)
        self.num_samples = _DEFAULT_N[split] if num_samples is None else int(num_samples)
        self.spacing = spacing
        self.channel_names = list(names)
        self.in_channels = len(names)
        self.num_classes = 4
        self.class_names = list(BRATS_CLASS_NAMES)
        self.label_mode = label_mode
        self.regions = [list(r) for r in BRATS_REGIONS] if label_mode == "regions" else None
        self.region_names = list(BRATS_REGION_NAMES) if label_mode == "regions" else None
        self.normalize = bool(normalize)
        self.transform = transform
        self._cache: Optional[Dict[int, Tuple[np.ndarray, np.ndarray]]] = {} if cache else None

    def __len__(self) -> int:
        return self.num_samples

    def case_ids(self) -> List[str]:
        return [f"brats_{self.split}_{i:04d}" for i in range(len(self))]

    def volumes(self) -> "SyntheticBraTS":
        """The data set itself (its samples are already whole volumes; for ``build_volume_dataset``)."""
        return self

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(image (C, I, J, K) float32, label (I, J, K) int64)`` of case ``index`` (cached)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _DATA_CODE, _SPLIT_CODE[self.split],
                                                             int(index), GENERATOR_VERSION]))
        image, label = generate_brats_volume(rng, self.size, self.spacing, self.channel_names)
        if self.normalize:
            image = _zscore_inside(image)
        if self._cache is not None:
            self._cache[index] = (image, label)
        return image, label

    def __getitem__(self, index) -> Dict:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} cases")
        index %= len(self)
        image, label = self.load(index)
        shape = tuple(int(s) for s in label.shape)
        affine = np.diag(list(self.spacing) + [1.0])
        affine[:3, 3] = [-self.size / 2.0] * 3
        sample = {"image": torch.from_numpy(image.copy()), "mask": torch.from_numpy(label.copy()),
                  "meta": {"case_id": self.case_ids()[index], "spacing": self.spacing,
                           "original_spacing": self.spacing, "affine": affine.tolist(), "original_shape": shape,
                           "crop_bbox": [[0, s] for s in shape], "source_files": [],
                           "channel_names": list(self.channel_names)}}
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def __repr__(self):
        return (f"SyntheticBraTS(split={self.split!r}, num_samples={len(self)}, size={self.size}, "
                f"spacing={self.spacing}, channels={self.channel_names}, label_mode={self.label_mode!r})")


# ----------------------------------------------------------------------------------------------------------------
def voxel_baseline(size: int = 48, n_train: int = 8, n_test: int = 4, seed: int = 0, channels: int = 4) -> Dict:
    """How far intensity alone gets: a per-voxel Gaussian classifier (one full-covariance Gaussian per class over the
    channel values, class priors from the training voxels) fitted on the brain voxels of ``n_train`` cases; Dice per
    class and per region (WT/TC/ET) over the ``n_test`` test cases (all voxels pooled)."""
    tr = SyntheticBraTS("train", n_train, size, channels=channels, seed=seed)
    te = SyntheticBraTS("test", n_test, size, channels=channels, seed=seed)

    def arrays(ds):
        xs, ys = [], []
        for i in range(len(ds)):
            img, lab = ds.load(i)
            brain = np.any(img != 0, axis=0)
            xs.append(img[:, brain].T.astype(np.float64))
            ys.append(lab[brain])
        return np.concatenate(xs), np.concatenate(ys)

    xtr, ytr = arrays(tr)
    xte, yte = arrays(te)
    scores = []
    for c in range(4):
        x = xtr[ytr == c]
        mu, cov = x.mean(0), np.cov(x.T) + 1e-6 * np.eye(x.shape[1])
        inv, (_, logdet) = np.linalg.inv(cov), np.linalg.slogdet(cov)
        d = xte - mu
        scores.append(-0.5 * np.einsum("ni,ij,nj->n", d, inv, d) - 0.5 * logdet + np.log(len(x) / len(xtr)))
    pred = np.argmax(np.stack(scores, 1), 1)

    # Dice over the brain voxels (outside the brain both are 0 and add nothing)
    return _dice_report(pred, yte)


def _dice_report(pred: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
    def dice(a, b):
        return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))

    out = {BRATS_CLASS_NAMES[c]: dice(pred == c, gt == c) for c in (1, 2, 3)}
    for name, r in zip(BRATS_REGION_NAMES, BRATS_REGIONS):
        out[name] = dice(np.isin(pred, r), np.isin(gt, r))
    return out


def unet_baseline(size: int = 48, n_train: int = 16, n_test: int = 4, steps: int = 300, patch: int = 32,
                  seed: int = 0) -> Dict[str, float]:
    """A small 3D U-Net (3 levels, 8-16-32 channels, instance norm) trained on :class:`~mambaseg.data.patches.
    PatchDataset` patches (nnU-Net's sampling and augmentation, batch 2, CE + soft Dice, Adam 3e-3 with cosine decay)
    and applied to the whole test volumes; Dice as in :func:`voxel_baseline`. An end-to-end check that the set is
    learnable from patches; self-contained (the data layer does not import the models)."""
    import torch.nn as nn
    import torch.nn.functional as F

    from .base import collate_samples
    from .patches import PatchDataset

    torch.manual_seed(seed)
    tr = SyntheticBraTS("train", n_train, size, seed=seed)
    te = SyntheticBraTS("test", n_test, size, seed=seed)
    pd = PatchDataset(tr, (patch,) * 3, batch_size=2, samples_per_epoch=2 * steps, seed=seed, cache_size=n_train)
    loader = torch.utils.data.DataLoader(pd, batch_size=2, collate_fn=collate_samples)

    def block(i, o):
        return nn.Sequential(nn.Conv3d(i, o, 3, padding=1), nn.InstanceNorm3d(o, affine=True), nn.LeakyReLU(0.01),
                             nn.Conv3d(o, o, 3, padding=1), nn.InstanceNorm3d(o, affine=True), nn.LeakyReLU(0.01))

    class UNet(nn.Module):
        def __init__(self, c=8):
            super().__init__()
            self.e1, self.e2, self.e3 = block(4, c), block(c, 2 * c), block(2 * c, 4 * c)
            self.u2, self.d2 = nn.ConvTranspose3d(4 * c, 2 * c, 2, 2), block(4 * c, 2 * c)
            self.u1, self.d1 = nn.ConvTranspose3d(2 * c, c, 2, 2), block(2 * c, c)
            self.out = nn.Conv3d(c, 4, 1)

        def forward(self, x):
            a = self.e1(x)
            b = self.e2(F.max_pool3d(a, 2))
            c = self.e3(F.max_pool3d(b, 2))
            b = self.d2(torch.cat([self.u2(c), b], 1))
            return self.out(self.d1(torch.cat([self.u1(b), a], 1)))

    net = UNet()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    net.train()
    for batch in loader:
        logits = net(batch["image"])
        target = batch["mask"]
        prob = logits.softmax(1)
        onehot = F.one_hot(target, 4).permute(0, 4, 1, 2, 3).float()
        inter = (prob * onehot).sum((2, 3, 4))[:, 1:]
        denom = (prob + onehot).sum((2, 3, 4))[:, 1:]
        loss = F.cross_entropy(logits, target) + (1 - (2 * inter + 1e-5) / (denom + 1e-5)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    preds, gts = [], []
    with torch.no_grad():
        for i in range(len(te)):
            s = te[i]
            preds.append(net(s["image"][None]).argmax(1)[0].numpy().ravel())
            gts.append(s["mask"].numpy().ravel())
    return _dice_report(np.concatenate(preds), np.concatenate(gts))


if __name__ == "__main__":  # python -m mambaseg.data.synthetic3d [--unet]
    import sys

    print("voxel classifier:", {k: round(v, 3) for k, v in voxel_baseline().items()})
    if "--unet" in sys.argv:
        print("small 3D U-Net:", {k: round(v, 3) for k, v in unet_baseline().items()})
