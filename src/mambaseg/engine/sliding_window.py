"""Sliding-window inference over whole images or volumes (any number of spatial axes), nnU-Net or MONAI style.

One function, :func:`sliding_window_logits`, runs a network over a ``(C, *spatial)`` input in windows of
``patch_size`` and blends the window logits into a float32 accumulator **on the CPU** (so a 240x240x155 BraTS
volume with 4 outputs needs ``(4 + 1) * 240*240*155 * 4 B`` = 179 MB there; only a batch of windows lives on the
network's device). Written from ``shared/spec/volumetric_pipeline.md`` §7 (nnU-Net v2
``inference/sliding_window_prediction.py``, MONAI ``inferers/utils.py::sliding_window_inference``).

Two placements/weightings (``mode``), which differ exactly here:

===================  ==========================================  ============================================
                     ``"nnunet"`` (default)                      ``"monai"``
===================  ==========================================  ============================================
window starts        ``n = ceil((size - patch) / (patch*(1-o)))    interval ``int(patch*(1-o))`` (min 1; patch
per axis             + 1``, step ``(size - patch)/(n - 1)``,       when patch == size); starts ``0, i, 2i, ..``
                     starts ``round(step*k)``: spread evenly,      until one reaches the end, the last shifted
                     last one ends at the border                   back to end at the border
                     (110, 64 -> 0, 23, 46)                        (110, 64 -> 0, 32, 46)
Gaussian (σ =        product over axes of ``exp(-x²/2σ²)`` with    product of ``exp(-x²/2σ²)`` with
``sigma_scale`` ·    ``x = i - patch//2`` (scipy's filtered        ``x = i - (patch-1)/2`` (centred, symmetric),
patch per axis)      delta: 0 beyond ``int(4σ + 0.5)``), scaled   peak 1; clamped below at ``max(min, 1e-3)``
                     to max 10, zeros -> smallest non-zero value
===================  ==========================================  ============================================

Both modes then: pad the input (constant 0, symmetric: ``diff // 2`` before) to at least the patch size; for every
window ``acc += w * logits``, ``cnt += w``; ``logits = acc / cnt``; crop the padding away. ``mode="monai"``
reproduces MONAI's ``sliding_window_inference(mode="gaussian", sigma_scale=...)`` to float32 precision (a test
checks); ``mode="nnunet"`` is nnU-Net's predictor, except that nnU-Net accumulates in fp16 on the GPU and we in
float32 on the CPU. ``gaussian=False`` uses constant weights (plain averaging) in both modes.

Mirroring test-time augmentation (``mirror_axes``, spatial axis indices, nnU-Net's default all axes): every window
is predicted as ``(net(x) + Σ_S flip_S(net(flip_S(x)))) / 2^k`` over every non-empty subset ``S`` of the ``k``
axes, before the Gaussian weighting (nnU-Net's ``_internal_maybe_mirror_and_predict``).
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "SLIDING_WINDOW_MODES",
    "window_starts",
    "importance_map",
    "sliding_window_logits",
    "logits_to_segmentation",
    "regions_class_order",
]

SLIDING_WINDOW_MODES = ("nnunet", "monai")


def _check_mode(mode: str) -> str:
    if mode not in SLIDING_WINDOW_MODES:
        raise ValueError(f"sliding-window mode must be one of {SLIDING_WINDOW_MODES}, got {mode!r}.")
    return mode


def window_starts(size: int, patch: int, overlap: float = 0.5, mode: str = "nnunet") -> List[int]:
    """Start indices of the windows along one axis of length ``size >= patch`` (see module table)."""
    _check_mode(mode)
    size, patch = int(size), int(patch)
    if patch < 1 or size < patch:
        raise ValueError(f"window_starts needs 1 <= patch <= size, got patch {patch}, size {size} (pad first).")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}.")
    if mode == "nnunet":
        target = patch * (1.0 - float(overlap))
        n = int(math.ceil((size - patch) / target)) + 1
        if n == 1:
            return [0]
        step = (size - patch) / (n - 1)
        return [int(round(step * k)) for k in range(n)]
    interval = patch if patch == size else max(int(patch * (1.0 - float(overlap))), 1)
    starts = []
    k = 0
    while True:
        s = k * interval
        starts.append(min(s, size - patch))
        if s + patch >= size:
            return starts
        k += 1


def importance_map(patch_size: Sequence[int], mode: str = "nnunet", sigma_scale: float = 0.125,
                   gaussian: bool = True) -> torch.Tensor:
    """Float32 window weights of shape ``patch_size`` (see module table); ones when ``gaussian=False``."""
    _check_mode(mode)
    patch = [int(p) for p in patch_size]
    if not gaussian:
        return torch.ones(patch, dtype=torch.float32)
    m: Optional[torch.Tensor] = None
    for i, p in enumerate(patch):
        sigma = p * float(sigma_scale)
        if mode == "nnunet":
            x = torch.arange(p, dtype=torch.float64) - (p // 2)
            g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
            g[x.abs() > int(4.0 * sigma + 0.5)] = 0.0  # scipy gaussian_filter's truncate=4.0
        else:
            x = torch.arange(p, dtype=torch.float32) - (p - 1) / 2.0
            g = torch.exp(x ** 2 / (-2 * sigma ** 2))
        m = g if m is None else m.unsqueeze(-1) * g[(None,) * i]
    assert m is not None
    if mode == "nnunet":
        m = m / m.max() * 10.0
        nz = m[m > 0]
        m = torch.where(m > 0, m, nz.min()).float()
    else:
        m = torch.clamp(m.float(), min=max(float(m.min()), 1e-3))
    return m


def _forward(net: Callable, x: torch.Tensor) -> torch.Tensor:
    out = net(x)
    if isinstance(out, (list, tuple)):  # deep supervision: the full-resolution output comes first
        out = out[0]
    return out


def _mirrored(net: Callable, x: torch.Tensor, mirror_axes: Sequence[int]) -> torch.Tensor:
    pred = _forward(net, x).float()
    if not mirror_axes:
        return pred
    axes = [int(a) + 2 for a in mirror_axes]
    combos = [c for k in range(1, len(axes) + 1) for c in itertools.combinations(axes, k)]
    for c in combos:
        pred += torch.flip(_forward(net, torch.flip(x, c)).float(), c)
    return pred / (len(combos) + 1)


@torch.no_grad()
def sliding_window_logits(net: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                          patch_size: Sequence[int], overlap: float = 0.5, mode: str = "nnunet",
                          gaussian: bool = True, sigma_scale: float = 0.125,
                          mirror_axes: Optional[Sequence[int]] = None, batch_size: int = 1,
                          device: Optional[Union[str, torch.device]] = None, progress: bool = False,
                          desc: Optional[str] = None) -> torch.Tensor:
    """Blended logits of ``net`` over ``image`` by sliding windows.

    Args:
        net: network ``(B, C, *patch) -> (B, K, *patch)`` logits (a list/tuple: its first element), in eval mode.
        image: ``(C, *spatial)`` (or ``(1, C, *spatial)``) float tensor, any device; windows are cut on
            ``device``.
        patch_size: window size, one value per spatial axis.
        overlap: fraction of a window shared with its neighbour (nnU-Net ``tile_step_size = 1 - overlap``).
        mode: ``"nnunet"`` or ``"monai"`` placement and Gaussian (module table).
        gaussian: Gaussian importance weighting (σ = ``sigma_scale`` · patch); ``False`` = constant.
        mirror_axes: spatial axes for mirroring TTA (``None``/``()`` = off; nnU-Net 3D: ``(0, 1, 2)``).
        batch_size: windows per forward pass.
        device: where the network runs (default: the device of its first parameter, else the image's).
        progress: a tqdm bar over the window batches (``desc`` names the case).

    Returns:
        ``(K, *spatial)`` float32 CPU tensor of blended logits.
    """
    _check_mode(mode)
    x = image
    if x.ndim >= 2 and x.shape[0] == 1 and x.ndim == len(patch_size) + 2:
        x = x[0]
    nd = len(patch_size)
    if x.ndim != nd + 1:
        raise ValueError(f"sliding_window_logits expects an image (C, *spatial) with {nd} spatial axes to match "
                         f"patch_size {tuple(patch_size)}, got shape {tuple(image.shape)}.")
    patch = [int(p) for p in patch_size]
    if any(p < 1 for p in patch):
        raise ValueError(f"patch_size values must be >= 1, got {tuple(patch_size)}.")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if mirror_axes:
        bad = [a for a in mirror_axes if not 0 <= int(a) < nd]
        if bad:
            raise ValueError(f"mirror_axes {list(mirror_axes)} must be spatial axes in 0..{nd - 1}.")
    if device is None:
        try:
            device = next(net.parameters()).device  # type: ignore[union-attr]
        except (AttributeError, StopIteration):
            device = x.device
    device = torch.device(device)
    spatial = list(x.shape[1:])
    # pad to at least the patch (constant 0, diff // 2 before), as nnU-Net and MONAI
    pads: List[Tuple[int, int]] = []
    for s, p in zip(spatial, patch):
        diff = max(p - s, 0)
        pads.append((diff // 2, diff - diff // 2))
    x = x.to(device=device, dtype=torch.float32)
    if any(a or b for a, b in pads):
        flat = [v for a, b in reversed(pads) for v in (a, b)]
        x = F.pad(x, flat, mode="constant", value=0.0)
    padded = list(x.shape[1:])
    starts = [window_starts(s, p, overlap, mode) for s, p in zip(padded, patch)]
    windows = list(itertools.product(*starts))
    weight = importance_map(patch, mode, sigma_scale, gaussian)
    weight_dev = weight.to(device)
    acc: Optional[torch.Tensor] = None
    cnt = torch.zeros(padded, dtype=torch.float32)
    batches = range(0, len(windows), int(batch_size))
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc=desc or "sliding window", leave=False, unit="batch")
    for b0 in batches:
        chunk = windows[b0:b0 + int(batch_size)]
        sl = [tuple(slice(s, s + p) for s, p in zip(st, patch)) for st in chunk]
        xb = torch.stack([x[(slice(None),) + s] for s in sl])
        pred = _mirrored(net, xb, mirror_axes or ())
        if tuple(pred.shape[2:]) != tuple(patch):
            raise ValueError(f"the network returned logits of spatial shape {tuple(pred.shape[2:])} for windows "
                             f"of {tuple(patch)}; sliding windows need same-size outputs (is patch_size a "
                             f"multiple of the network's downsample factor?).")
        pred = (pred * weight_dev).float().cpu()
        if acc is None:
            acc = torch.zeros([pred.shape[1]] + padded, dtype=torch.float32)
        for i, s in enumerate(sl):
            acc[(slice(None),) + s] += pred[i]
            cnt[s] += weight
    assert acc is not None
    acc /= cnt
    crop = tuple(slice(a, a + s) for (a, _), s in zip(pads, spatial))
    return acc[(slice(None),) + crop].contiguous()


def regions_class_order(regions: Sequence[Sequence[int]]) -> List[int]:
    """The label written for each region when regions are turned back into a label map (nnU-Net's
    ``regions_class_order``): region ``i``'s one class not in any later region (regions listed outer -> inner).

    BraTS remapped (1 NCR, 2 ED, 3 ET) with WT ``[1, 2, 3]``, TC ``[1, 3]``, ET ``[3]`` -> ``[2, 1, 3]``.
    """
    order = []
    for i, r in enumerate(regions):
        later = set(v for q in regions[i + 1:] for v in q)
        own = sorted(set(int(v) for v in r) - later)
        if len(own) != 1:
            raise ValueError(f"region {i} {list(r)} does not own exactly one class beyond the later regions "
                             f"({own}); list nested regions outer -> inner (e.g. WT, TC, ET).")
        order.append(own[0])
    return order


def logits_to_segmentation(logits: torch.Tensor, regions: Optional[Sequence[Sequence[int]]] = None,
                           threshold: float = 0.5, channel_axis: int = 0) -> torch.Tensor:
    """Logits with channels on ``channel_axis`` (0 for ``(K, *spatial)``, 1 for a batch) -> int64 label map
    without the channel axis.

    Label-based: argmax over channels (one channel: ``sigmoid >= threshold``). Region-based (``regions``):
    zeros, then for each region in order, voxels with ``sigmoid > threshold`` get
    :func:`regions_class_order`'s label (later, inner regions overwrite earlier ones), as nnU-Net.
    """
    k = logits.shape[channel_axis]
    if regions is None:
        if k == 1:
            return (torch.sigmoid(logits.select(channel_axis, 0).float()) >= threshold).long()
        return logits.argmax(channel_axis)
    order = regions_class_order(regions)
    if k != len(order):
        raise ValueError(f"{len(order)} regions but the logits have {k} channels.")
    prob = torch.sigmoid(logits.float())
    seg = torch.zeros(prob.select(channel_axis, 0).shape, dtype=torch.long, device=logits.device)
    for i, lab in enumerate(order):
        seg[prob.select(channel_axis, i) > threshold] = lab
    return seg
