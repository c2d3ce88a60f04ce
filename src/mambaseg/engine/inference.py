"""Inference helpers shared by validation, test and ``mambaseg predict``.

* 2D: one forward pass on the (already resized) batch; optional resize of the logits back to the original size.
* Volumes: slice-wise inference. Every axial slice is resized to the network input size (bilinear), passed
  through the network in chunks, and the logits are resized back to the slice size (bilinear) before the
  threshold / argmax, so the 3D label volume has the input's shape and can be scored with its voxel spacing.
  (Upstream Synapse/ACDC code resizes the *labels* back with nearest neighbour; resizing logits is smoother and
  otherwise equivalent.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from mambaseg.metrics.segmentation import logits_to_labels  # its one home (the metrics' own rule)


@dataclass
class PredictResult:
    """What a predict run wrote (2D masks or 3D NIfTI), what it skipped and why, and its conversion warnings."""
    written: List[str] = field(default_factory=list)
    errors: List[Tuple[str, str]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)   # one per kind of input conversion, with its count

__all__ = ["logits_to_labels", "logits_to_probs", "predict_logits_2d", "predict_volume"]


def logits_to_probs(logits: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) logits -> probabilities: sigmoid for one channel (binary), softmax otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def predict_logits_2d(net: torch.nn.Module, images: torch.Tensor, input_size: Optional[Sequence[int]] = None,
                      output_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Logits for a (B, C, H, W) batch; resized to ``input_size`` for the network and back to ``output_size``."""
    x = _resize(images, input_size) if input_size is not None else images
    logits = net(x)
    if output_size is not None:
        logits = _resize(logits, output_size)
    return logits.float()


@torch.no_grad()
def predict_volume(net: torch.nn.Module, slices: torch.Tensor, output_size: Sequence[int], threshold: float = 0.5,
                   chunk: int = 16, input_size: Optional[Sequence[int]] = None, progress: bool = False) -> torch.Tensor:
    """Slice-wise inference on one volume.

    Args:
        net: 2D network returning logits.
        slices: (D, C, h, w) float tensor: the volume's slices, already preprocessed by the evaluation transform
            (``mambaseg.data.volume_slices``).
        output_size: (H, W) of the original slices; logits are resized back to it.
        threshold: binary threshold on the sigmoid probability.
        chunk: slices per forward pass.
        input_size: resize the slices to this size first (when the transform did not).
        progress: show a progress bar over the chunks.

    Returns:
        (D, H, W) int64 label volume.
    """
    if slices.dim() != 4:
        raise ValueError(f"volume slices must be (D, C, h, w); got shape {tuple(slices.shape)}")
    d = slices.shape[0]
    h, w = int(output_size[0]), int(output_size[1])
    out = torch.empty((d, h, w), dtype=torch.long)
    starts = range(0, d, max(1, int(chunk)))
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="slices", leave=False, unit="chunk")
    for s in starts:
        logits = predict_logits_2d(net, slices[s:s + chunk], input_size=input_size, output_size=(h, w))
        out[s:s + chunk] = logits_to_labels(logits, threshold).cpu()
    return out
