"""``SegmentationModule``: a LightningModule wrapping any registry model with a loss, the papers' optimiser
recipes and the evaluation metrics.

Recipes (``upstream_models.md`` §1.3, §2.3, §3.3, §4.4):

* VM-UNet, VM-UNetV2, HMT-UNet: ``optimizer="adamw"`` lr 1e-3, betas (0.9, 0.999), weight decay 1e-2 on all
  parameters; ``scheduler="cosine"`` (``CosineAnnealingLR(T_max=50, eta_min=1e-5)`` stepped per epoch; T_max 100 for
  Synapse).
* Mamba-UNet: ``optimizer="sgd"`` lr 0.01, momentum 0.9, weight decay 1e-4; ``scheduler="poly"``
  ``lr = base * (1 - it / max_it) ** 0.9`` stepped per iteration (10,000 iterations).
* Binary tasks: one output channel, sigmoid, ``threshold`` 0.5 (``>=``); multi-class: softmax / argmax.

Validation (every epoch) computes the loss and a pooled foreground Dice (``val/dice``, mean over foreground
classes), which drive model selection (``select_on``). Test computes all eight metrics with
``mambaseg.metrics.SegmentationMetrics`` (per case and aggregated as configured) and keeps a few qualitative
examples; ``self.test_results`` holds them for the run writer.

3-D networks (``spatial_dims == 3`` on the model, :mod:`mambaseg.engine.volumetric`): training batches are
patches ``(B, C, I, J, K)`` with masks ``(B, I, J, K)`` (-1 = ignored); validation and test batches are whole
preprocessed volumes ``(1, C, I, J, K)``, predicted with the sliding window (``sw_*`` settings), decoded by
softmax/argmax or by regions (``regions``: one sigmoid output per region, BraTS WT/TC/ET), scored per volume with
the volume's spacing (``meta["spacing"]``, mm) and, with ``nsd_tolerance``, the normalised surface Dice. Validation
runs every ``trainer.check_val_every_n_epoch`` epochs; ``val/dice`` (per class, or per region) drives selection.

Volume batches of a 2-D network (``image`` of shape (1, D, C, h, w): the slices of one volume after the evaluation
transform, ``mask`` (1, D, H, W) at the original size) are evaluated per volume: slice-wise inference, logits
resized back to the original slice size, 3D metrics with the volume's spacing.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Union

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F

from mambaseg.data.hints import data_arg, model_arg, option
from mambaseg.data.labels import dataset_class_names
from mambaseg.losses import DeepSupervisionLoss, build_loss
from mambaseg.metrics import SegmentationMetrics
from mambaseg.models import create_model
from mambaseg.models.blocks.nnunet_blocks import deep_supervision_weights
from mambaseg.models.limits import check_model_memory
from mambaseg.models.registry import UnknownModelKwargError
from mambaseg.ops import get_default_backend, resolve_backend, set_default_backend

from .errors import CheckpointMismatchError, MambasegUserError, near_matches
from .inference import logits_to_labels, predict_logits_2d, predict_volume
from .volumetric import (
    SlidingWindowSettings,
    check_patch_size,
    default_loss,
    infer_volume,
    output_layout,
    patch_size_of,
    spatial_dims_of,
)

__all__ = ["SegmentationModule", "SELECT_ON", "OPTIMIZERS", "SCHEDULERS"]

#: ``select_on`` -> (monitored key, mode). The ``upstream_*`` choice reproduces a known upstream protocol flaw.
SELECT_ON = {
    "val_dice": ("val/dice", "max"),
    "val_loss": ("val/loss", "min"),
    "upstream_train_loss": ("train/loss_epoch", "min"),  # VM-UNet Synapse: best = lowest training loss
}
OPTIMIZERS = ("adamw", "sgd", "adam")
SCHEDULERS = ("cosine", "poly", "none")


def _sizes(image_size):
    if isinstance(image_size, (list, tuple)) and len(image_size) == 2:
        return tuple(image_size)
    return (image_size, image_size)


def _check_size_value(image_size) -> None:
    """Zero, negative or non-integer sizes: refused before the network is built."""
    for s in _sizes(image_size):
        if isinstance(s, bool) or not isinstance(s, int) or s <= 0:
            raise MambasegUserError(f"image size {image_size!r} is not a positive integer; use e.g. "
                                    f"{data_arg('image_size', 256)} or {data_arg('image_size', 224)}")


def nearest_valid_sizes(size: int, divisor: int):
    """The multiples of ``divisor`` nearest to ``size`` (closest first, positive only)."""
    lo = (size // divisor) * divisor
    cands = [v for v in (lo, lo + divisor) if v > 0]
    return sorted(cands, key=lambda v: (abs(v - size), v))


def check_image_size(image_size, divisor, model: str = "the model") -> None:
    """Refuse an input size the network cannot take (H, W must be positive multiples of ``divisor``), naming the
    nearest valid sizes in the caller's syntax (``--data.image_size 256`` on the command line). A 3-D patch
    (three sizes) is checked per axis against an int or per-axis ``divisor``."""
    if isinstance(image_size, (list, tuple)) and len(image_size) == 3:
        check_patch_size(patch_size_of(image_size, 3), divisor, model)
        return
    _check_size_value(image_size)
    if not divisor:
        return
    sizes = _sizes(image_size)
    divisors = tuple(divisor) if isinstance(divisor, (list, tuple)) else (divisor,) * len(sizes)
    for s, divisor in zip(sizes, divisors):
        if s % divisor:
            near = " or ".join(data_arg("image_size", v) for v in nearest_valid_sizes(s, divisor))
            raise MambasegUserError(f"image size {s} does not fit {model}: its input sides must be multiples of "
                                    f"{divisor} (patch embedding and downsampling); nearest valid sizes: {near}")


def _check_choice(name: str, value: str, choices) -> str:
    if value not in choices:
        raise MambasegUserError(f"unknown {name} {value!r}{near_matches(value, choices)} Choices: {', '.join(choices)}")
    return value


def nonfinite_step_error(step: int, epoch: int, batch_idx: int, batch, logits, loss) -> Exception:
    """The one-line ``TrainingDivergedError`` for a non-finite loss: the step, the batch's files and whether the
    input, the network output or only the loss was non-finite (each has another fix)."""
    from mambaseg.data.base import nonfinite_summary
    from .errors import TrainingDivergedError
    meta = batch.get("meta") or {} if isinstance(batch, dict) else {}
    names = [str(v) for v in (meta.get("image_path") or meta.get("case_id") or []) if v is not None]
    files = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "") if names else "unknown"
    where = f"training stopped at step {step} (epoch {epoch}, batch {batch_idx}, files: {files})"
    image = batch["image"]
    bad_in = nonfinite_summary(image)
    if bad_in:
        per = [n for n, x in zip(names, image) if nonfinite_summary(x)] if len(names) == len(image) else []
        in_files = "; in " + ", ".join(per[:8]) if per else ""
        return TrainingDivergedError(f"{where}: the INPUT is non-finite ({bad_in}{in_files}); fix or drop those "
                                     "images (`mambaseg check --data.check full` lists them)")
    bad_out = nonfinite_summary(logits)
    if bad_out:
        return TrainingDivergedError(f"{where}: the network OUTPUT is non-finite ({bad_out}) for a finite input: the "
                                     "weights diverged; lower --model.lr, or train in 32-bit precision "
                                     "(--precision fp32)")
    return TrainingDivergedError(f"{where}: the LOSS is non-finite ({loss.item()}) for a finite input and output; "
                                 "check the masks' values against the class count, or lower --model.lr")


class SegmentationModule(pl.LightningModule):
    """Train / evaluate a registry segmentation model.

    Args:
        model: registry name (``mambaseg models`` lists them).
        model_kwargs: extra keyword arguments for ``create_model`` (e.g. ``depths``, ``base_channels``).
        num_classes: label classes including background (binary = 2, as the data sets report it). Binary tasks get
            one output channel (sigmoid), others ``num_classes`` channels (softmax).
        in_channels: image channels.
        image_size: network input size (square); volume slices and ``predict`` inputs are resized to it.
        preprocess: name of the data transform preset (recorded for ``predict``).
        loss: ``mambaseg.losses.build_loss`` name; default ``"bce_dice"`` (binary) or ``"ce_dice"``.
        loss_kwargs: extra arguments for the loss.
        optimizer: ``"adamw"``, ``"sgd"`` or ``"adam"``.
        lr: base learning rate.
        weight_decay: weight decay (applied to all parameters, as upstream).
        momentum: SGD momentum.
        betas: Adam(W) betas.
        scheduler: ``"cosine"`` (per epoch), ``"poly"`` (per iteration) or ``"none"``.
        t_max: cosine period in epochs.
        eta_min: cosine minimum learning rate.
        poly_power: poly exponent.
        max_iters: poly horizon; default = the trainer's total optimiser steps.
        threshold: binary threshold on the sigmoid probability.
        select_on: model selection: ``"val_dice"`` (default), ``"val_loss"``, or ``"upstream_train_loss"`` (the
            VM-UNet Synapse protocol, which selects on the training loss).
        aggregation: test metric aggregation (``"pooled"``, ``"per_image"``, ``"per_volume"``).
        hd95_mode: ``"medpy"`` or ``"monai"``.
        include_background: count the background class in the metrics.
        empty_policy: how metrics treat empty masks (see ``mambaseg.metrics``); ``None`` = its default.
        compute_distances: compute HD95 / ASD at test time.
        eval_original_size: 2D test: resize predictions back to each image's original size (needs the data to
            return it); default scores at the network resolution, as the ISIC papers do.
        slice_batch_size: slices per forward pass in volume inference.
        pretrained: classification checkpoint for the encoder (``create_model(pretrained=...)``).
        scan_backend: selective-scan backend (``mambaseg.ops``); ``None`` = the library default.
        num_qualitative: test cases kept for the qualitative figure.
        regions: region-based training (BraTS): one list of class indices per sigmoid output, outer -> inner
            (e.g. ``[[1, 2, 3], [1, 3], [3]]`` = WT, TC, ET); normally linked from the data set.
        region_names: names of the regions in the metric keys (``dice/WT``).
        eval_regions: score a label-trained (softmax) model on the regions its data set declares (the data
            module's ``declared_regions`` / ``declared_region_names``): both the predicted and the reference label
            map become one binary mask per region, ``isin(labels, regions[r])``, scored with the same metrics
            (keys ``dice/WT``, ``val/dice`` = mean over the regions), as SegMamba and nnMamba report BraTS.
            ``"auto"`` (default): on when the data set declares regions; ``True``: required (error if it declares
            none); ``False``: per class. Region-trained models (``regions``) are always scored per region.
        sw_overlap, sw_mode, sw_gaussian, sw_mirror, sw_batch_size: sliding-window inference of 3-D networks
            (:mod:`mambaseg.engine.sliding_window`): overlap (0.5), window placement and Gaussian of ``"nnunet"``
            or ``"monai"``, Gaussian weighting, mirroring TTA over all axes, windows per forward pass. The window
            is ``image_size`` (the training patch).
        nsd_tolerance: normalised surface Dice tolerance at test time (mm; one value, or one per reported class /
            region); ``None`` = no NSD.
        eval_grid: 3-D test: ``"original"`` (default, nnU-Net's final evaluation: predictions brought back to each
            case's original grid and scored there with the original spacing, when the data set can invert its
            preprocessing) or ``"preprocessed"`` (score on the resampled grid, as validation does).
    """

    def __init__(self, model: str = "unet", model_kwargs: Optional[Dict[str, Any]] = None, num_classes: int = 2,
                 in_channels: int = 3, image_size: Union[int, List[int]] = 256, preprocess: Optional[str] = None,
                 loss: Optional[str] = None, loss_kwargs: Optional[Dict[str, Any]] = None,
                 optimizer: str = "adamw", lr: float = 1e-3, weight_decay: float = 1e-2, momentum: float = 0.9,
                 betas: List[float] = (0.9, 0.999), scheduler: str = "cosine", t_max: int = 50,
                 eta_min: float = 1e-5, poly_power: float = 0.9, max_iters: Optional[int] = None,
                 threshold: float = 0.5, select_on: str = "val_dice", aggregation: str = "pooled",
                 hd95_mode: str = "medpy", include_background: bool = False, empty_policy: Optional[str] = None,
                 compute_distances: bool = True, eval_original_size: bool = False, slice_batch_size: int = 16,
                 pretrained: Optional[str] = None, scan_backend: Optional[str] = None, num_qualitative: int = 8,
                 regions: Optional[List[List[int]]] = None, region_names: Optional[List[str]] = None,
                 sw_overlap: float = 0.5, sw_mode: str = "nnunet", sw_gaussian: bool = True, sw_mirror: bool = False,
                 sw_batch_size: int = 1, nsd_tolerance: Optional[Union[float, List[float]]] = None,
                 eval_grid: str = "original", eval_regions: Union[bool, str] = "auto"):
        super().__init__()
        _check_choice("optimizer", optimizer, OPTIMIZERS)
        _check_choice("scheduler", scheduler, SCHEDULERS)
        _check_choice("select_on", select_on, tuple(SELECT_ON))
        if num_classes < 2:
            raise MambasegUserError(f"num_classes counts the background too (binary = 2); got {num_classes}")
        if not 0.0 < threshold < 1.0:
            raise MambasegUserError(f"threshold must be in (0, 1); got {threshold}")
        self.save_hyperparameters()
        _check_choice("eval_grid", eval_grid, ("original", "preprocessed"))
        if eval_regions not in (True, False, "auto"):
            raise MambasegUserError(f"model.eval_regions must be true, false or auto; got {eval_regions!r}")
        self._eval_regions: Optional[tuple] = None  # (regions, names) derived from labels; set in setup()
        if regions or eval_regions is False:  # otherwise the count is checked in setup, once regions are known
            self._check_nsd_count(len(regions) if regions else None)
        self._grid_used = "preprocessed volume (spacing of meta['spacing'])"
        if not isinstance(image_size, (list, tuple)):
            _check_size_value(image_size)
        if scan_backend:
            set_default_backend(scan_backend)
        self.out_channels, self._regions = output_layout(num_classes, regions)
        check_model_memory(model, in_channels, self.out_channels, model_kwargs, where="model")  # before allocating
        try:
            self.net = create_model(model, in_channels=in_channels, num_classes=self.out_channels,
                                    pretrained=pretrained, **dict(model_kwargs or {}))
        except UnknownModelKwargError as e:
            raise MambasegUserError(f"model.model_kwargs: {e}") from None
        except TypeError as e:  # a value of the wrong type inside model_kwargs
            if not model_kwargs:
                raise
            raise MambasegUserError(f"model.model_kwargs {dict(model_kwargs)!r} do not fit model {model!r}: {e}"
                                    ) from None
        self.spatial_dims = spatial_dims_of(self.net)
        if self.spatial_dims == 3:
            patch = patch_size_of(image_size, 3)
            check_patch_size(patch, self.net.downsample_factor, model)
            self.sliding_window = SlidingWindowSettings(patch, overlap=sw_overlap, mode=sw_mode,
                                                        gaussian=sw_gaussian, mirror=sw_mirror,
                                                        batch_size=sw_batch_size)
        else:
            if isinstance(image_size, (list, tuple)):
                patch_size_of(image_size, 2)
            check_image_size(image_size, self.net.downsample_factor, model)
            self.sliding_window = None
            if not regions:
                self._regions = None  # 2-D binary keeps its sigmoid >= threshold rule
        self.loss_name = loss or default_loss(self.spatial_dims, num_classes, regions)
        self.loss_fn = self._build_loss(self.loss_name, dict(loss_kwargs or {}))
        self.test_results: Optional[Dict[str, Any]] = None
        self._val_counts: Optional[torch.Tensor] = None
        self._metrics = None
        self._pending: List[tuple] = []
        self._qualitative: List[Dict[str, Any]] = []

    def _check_nsd_count(self, n_regions: Optional[int]) -> None:
        """One NSD tolerance, or one per reported class / region (checked before training)."""
        hp = self.hparams
        if not isinstance(hp.nsd_tolerance, (list, tuple)):
            return
        n_rep = n_regions or max(hp.num_classes, 2) - (0 if hp.include_background else 1)
        if len(hp.nsd_tolerance) not in (1, n_rep):
            one, many = ("region", "regions") if n_regions else ("reported class", "reported classes")
            raise MambasegUserError(f"model.nsd_tolerance has {len(hp.nsd_tolerance)} values but the data has "
                                    f"{n_rep} {many}; give one tolerance (mm) per {one} or a single number")

    def _resolve_eval_regions(self, dm) -> None:
        """A label-trained model on data that declares regions (``eval_regions``): the regions its metrics score,
        derived from the predicted and reference label maps. Refused in one line before any step."""
        hp = self.hparams
        mode = hp.get("eval_regions", "auto")
        self._eval_regions = None
        if hp.regions or mode is False:
            return
        regs = getattr(dm, "declared_regions", None) if dm is not None else None
        if not regs:
            self._check_nsd_count(None)
            if mode is True:
                name = getattr(dm, "dataset_name", "the data set")
                raise MambasegUserError(f"model.eval_regions is true but data set {name!r} declares no regions; "
                                        f"set model.eval_regions to auto or false (per-class metrics), or use a "
                                        f"data set that declares regions (e.g. brats)")
            return
        regs = [[int(v) for v in r] for r in regs]
        n = max(int(hp.num_classes), 2)
        if any(not r or any(not 1 <= v < n for v in r) for r in regs):
            raise MambasegUserError(f"the data set's regions {regs!r} must list foreground class indices "
                                    f"1..{n - 1} of the model's {n} classes; fix model.num_classes or set "
                                    f"model.eval_regions false")
        names = getattr(dm, "declared_region_names", None)
        names = [str(v) for v in names] if names and len(names) == len(regs) else None
        self._check_nsd_count(len(regs))
        self._eval_regions = (regs, names)

    def _metric_regions(self):
        """``(regions, names)`` the metrics score: the trained regions (sigmoid outputs, decoded to labels), the
        data set's regions derived from the label maps (``eval_regions``), or ``(None, None)`` = per class. Either
        way the metrics get label maps and build ``isin(labels, region)`` themselves: one scoring path."""
        hp = self.hparams
        if hp.regions:
            return [list(r) for r in hp.regions], hp.region_names
        return getattr(self, "_eval_regions", None) or (None, None)

    # ----------------------------------------------------------------------------------------------------------
    # building blocks
    def _build_loss(self, name: str, kwargs: Dict[str, Any]):
        if name == "nnunet_region_dc_bce" and "regions" not in kwargs:
            kwargs["regions"] = self._regions
        return build_loss(name, self.out_channels if self.out_channels > 1 else 1, **kwargs)

    def _labels(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, K, *spatial)`` logits -> ``(B, *spatial)`` labels (regions, sigmoid or argmax)."""
        if self._regions is not None:
            from .sliding_window import logits_to_segmentation
            return logits_to_segmentation(logits, self._regions, self.hparams.threshold, channel_axis=1)
        return logits_to_labels(logits, self.hparams.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def input_size(self):
        s = self.hparams.image_size
        return (s, s) if isinstance(s, int) else tuple(s)

    def _loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, (list, tuple)):  # deep supervision (nnU-Net nets, deep_supervision="train")
            return self._deep_supervision_loss(len(logits))(logits, mask)
        return self.loss_fn(logits, mask)

    def _deep_supervision_loss(self, n: int):
        """nnU-Net's deep-supervision loss for ``n`` outputs (full resolution first): weights ``2^-i``, the lowest
        resolution 0, normalised; the target is downsampled (nearest) to each output."""
        cache = self.__dict__.setdefault("_ds_losses", {})  # a plain dict: not a sub-module, no state_dict keys
        if n not in cache:
            cache[n] = DeepSupervisionLoss(self.loss_fn, deep_supervision_weights(n), resize="target")
        return cache[n]

    # ----------------------------------------------------------------------------------------------------------
    # training
    def training_step(self, batch, batch_idx):
        image, mask = batch["image"], batch["mask"]
        logits = self.net(image)
        loss = self._loss(logits, mask)
        if not torch.isfinite(loss):
            raise nonfinite_step_error(self.global_step, self.current_epoch, batch_idx, batch, logits, loss)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=image.shape[0],
                 sync_dist=True)
        return loss

    def setup(self, stage: str) -> None:
        """Refuse a network and data of different dimensionality (one line, before any step); pick the regions a
        label-trained model is scored on (``eval_regions``)."""
        trainer = getattr(self, "_trainer", None)
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        self._resolve_eval_regions(dm)
        nd = getattr(dm, "spatial_dims", None) if dm is not None else None
        if nd is None or int(nd) == self.spatial_dims:
            return
        name = getattr(dm, "dataset_name", "the data set")
        if int(nd) == 3:
            raise MambasegUserError(
                f"model {self.hparams.model!r} is a 2-D network but data set {name!r} gives 3-D volumes; use a 3-D "
                f"network (e.g. --model.model nnunet_3d) or slices of the volumes for a 2-D one "
                f"(--data.dataset_kwargs '{{\"spatial_dims\": 2}}' where the reader offers it)")
        raise MambasegUserError(f"model {self.hparams.model!r} is a 3-D network but data set {name!r} gives 2-D "
                                f"images; use a 2-D network, or a volumetric data set (e.g. brats, volumes)")

    def configure_optimizers(self):
        hp = self.hparams
        params = self.net.parameters()
        if hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.lr, betas=tuple(hp.betas), eps=1e-8, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp.t_max, eta_min=hp.eta_min)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        max_iters = hp.max_iters or int(self.trainer.estimated_stepping_batches)
        power = hp.poly_power
        if not max_iters or max_iters <= 0 or math.isinf(max_iters):
            raise MambasegUserError(f"the poly schedule needs a finite horizon: set {model_arg('max_iters', 10000)} "
                                    f"or {option('trainer.max_steps', 10000)}")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: max(0.0, 1.0 - it / max_iters) ** power)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ----------------------------------------------------------------------------------------------------------
    # shared evaluation
    def _is_volume(self, batch) -> bool:
        """A 2-D network's volume batch (the slices of one volume)."""
        return self.spatial_dims == 2 and batch["image"].dim() == 5

    def _infer(self, batch):
        """-> list of (pred_labels, target_labels, case_id, spacing, image_for_display, loss or None)."""
        image, mask, meta = batch["image"], batch["mask"], batch.get("meta", {}) or {}
        ids = _meta_list(meta, "case_id", image.shape[0])
        spacings = _meta_list(meta, "spacing", image.shape[0])
        out = []
        if self.spatial_dims == 3:
            return self._infer_3d(image, mask, ids, spacings, meta)
        if self._is_volume(batch):
            sizes = _meta_list(meta, "original_size", image.shape[0])
            for i in range(image.shape[0]):
                slices = image[i]  # (D, C, h, w), preprocessed by the evaluation transform
                out_size = tuple(int(v) for v in (sizes[i] or mask.shape[-2:]))
                pred = predict_volume(self.net, slices, out_size, self.hparams.threshold,
                                      chunk=self.hparams.slice_batch_size)
                out.append((pred, mask[i].long().cpu(), ids[i], _spacing(spacings[i]), slices, None))
            return out
        logits = self.net(image)
        loss = self._loss(logits, mask)
        target = mask
        if self.hparams.eval_original_size and "original_size" in meta:
            sizes = _meta_list(meta, "original_size", image.shape[0])
            for i in range(image.shape[0]):
                lg = F.interpolate(logits[i:i + 1].float(), size=tuple(int(s) for s in sizes[i]), mode="bilinear",
                                   align_corners=False)
                tgt = batch.get("mask_original", [None] * image.shape[0])[i]
                tgt = mask[i] if tgt is None else tgt
                if tuple(tgt.shape[-2:]) != tuple(lg.shape[-2:]):
                    tgt = F.interpolate(mask[i][None, None].float(), size=lg.shape[-2:], mode="nearest")[0, 0].long()
                out.append((self._labels(lg)[0].cpu(), tgt.long().cpu(), ids[i],
                            _spacing(spacings[i]), image[i], loss))
            return out
        labels = self._labels(logits)
        for i in range(image.shape[0]):
            out.append((labels[i].cpu(), target[i].long().cpu(), ids[i], _spacing(spacings[i]), image[i], loss))
        return out

    def _case_progress(self) -> bool:
        """A progress bar per test case (whole volumes are slow on a CPU); none during validation."""
        trainer = getattr(self, "_trainer", None)
        return bool(trainer is not None and trainer.testing and trainer.progress_bar_callback is not None)

    def _original_case(self, cid):
        """At test time with ``eval_grid="original"``: ``(image, label)`` of case ``cid`` as stored (the test data
        set's ``raw_case``), or None when the data set cannot give it (generated sets: their grid is the original)."""
        trainer = getattr(self, "_trainer", None)
        if self.hparams.eval_grid != "original" or trainer is None or not trainer.testing:
            return None
        ds = (getattr(getattr(trainer, "datamodule", None), "_datasets", None) or {}).get("test")
        ds = getattr(ds, "dataset", ds)
        if ds is None or not hasattr(ds, "raw_case") or not hasattr(ds, "case_ids"):
            return None
        ids = [str(c) for c in ds.case_ids()]
        if str(cid) not in ids:
            return None
        image, label, _ = ds.raw_case(ids.index(str(cid)))
        return (image, label) if label is not None else None

    def _infer_3d(self, image, mask, ids, spacings, meta=None):
        """Whole volumes ``(B, C, I, J, K)``: sliding window per case, loss of the blended logits on the CPU.
        At test time with ``eval_grid="original"`` and a data set that can invert its preprocessing, the labels
        are brought back to the case's original grid (probabilities resampled, pasted into the crop box, as
        nnU-Net exports) and scored against the original label with the original spacing."""
        if image.dim() != 5:
            raise MambasegUserError(f"a 3-D model needs volumes (B, C, I, J, K); got a batch of shape "
                                    f"{tuple(image.shape)} (a 2-D data set given to a 3-D config?)")
        out = []
        for i in range(image.shape[0]):
            logits, labels = infer_volume(self.net, image[i], self.sliding_window, self._regions,
                                          progress=self._case_progress(), desc=str(ids[i]))
            tgt = mask[i].long().cpu()
            loss = self.loss_fn(logits[None], tgt[None]) if tgt.shape == labels.shape else None
            spacing, shown = _spacing(spacings[i]), image[i]
            orig = self._original_case(ids[i])
            m = {k: (v[i] if isinstance(v, list) and len(v) == image.shape[0] else v)
                 for k, v in (meta or {}).items()}
            if orig is not None and all(k in m for k in ("crop_bbox", "shape_after_crop", "original_spacing")):
                from .volumetric import labels_on_original_grid
                labels = labels_on_original_grid(logits, m, self._regions)
                tgt = torch.as_tensor(np.asarray(orig[1], np.int64))
                spacing, shown = _spacing(m["original_spacing"]), torch.as_tensor(np.asarray(orig[0]))
                self._grid_used = "original (inverse preprocessing, original spacing)"
            out.append((labels, tgt, ids[i], spacing, shown, loss))
        return out

    # ----------------------------------------------------------------------------------------------------------
    # validation: loss + pooled foreground Dice (cheap, DDP-reduced)
    def _scored(self):
        """What ``val/dice`` averages: the foreground classes 1..K-1, or the regions (trained or derived)."""
        regions = self._metric_regions()[0]
        if regions:
            return regions
        return [[c] for c in range(1, max(self.hparams.num_classes, 2))]

    def on_validation_epoch_start(self):
        k = len(self._scored()) + 1
        self._val_counts = torch.zeros(3, k, dtype=torch.float64)

    def validation_step(self, batch, batch_idx):
        cases = self._infer(batch)
        scored = self._scored()
        for pred, tgt, *_ in cases:
            for j, members in enumerate(scored):
                c = j + 1
                m = torch.tensor(members)
                p, t = torch.isin(pred, m), torch.isin(tgt, m)
                self._val_counts[0, c] += float((p & t).sum())
                self._val_counts[1, c] += float((p & ~t).sum())
                self._val_counts[2, c] += float((~p & t).sum())
        loss = cases[0][5] if cases else None
        if loss is not None:
            self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=batch["image"].shape[0],
                     sync_dist=True)

    def on_validation_epoch_end(self):
        counts = self._val_counts.to(self.device, torch.float32 if self.device.type == "mps" else torch.float64)
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum") if self.trainer.world_size > 1 else counts
        tp, fp, fn = counts[0, 1:], counts[1, 1:], counts[2, 1:]
        denom = 2 * tp + fp + fn
        dice = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.ones_like(denom))
        self.log("val/dice", dice.mean().float(), prog_bar=True, sync_dist=False)
        if "val/loss" not in self.trainer.callback_metrics:
            # volume validation has no loss; keep the key so that select_on="val_loss" still has a value
            self.log("val/loss", (1 - dice.mean()).float(), sync_dist=False)

    # ----------------------------------------------------------------------------------------------------------
    # test: all eight metrics, per case + aggregated
    def _new_metrics(self, volumetric: bool = False):
        """Metrics for this test run; volumes are always scored per volume (3D), 2D data never per volume."""
        hp = self.hparams
        aggregation = hp.aggregation
        if volumetric and aggregation != "per_volume":
            aggregation = "per_volume"
        elif not volumetric and aggregation == "per_volume":
            aggregation = "per_image"
        if aggregation != hp.aggregation:
            from lightning.pytorch.utilities import rank_zero_warn
            rank_zero_warn(f"model.aggregation={hp.aggregation!r} does not fit {'3D volumes' if volumetric else '2D images'};"
                           f" scoring with aggregation={aggregation!r} (named in summary.json)")
        kw = dict(aggregation=aggregation, include_background=hp.include_background, hd95_mode=hp.hd95_mode,
                  distances=hp.compute_distances,
                  distributed_available_fn=lambda: False, sync_on_compute=False)
        if hp.empty_policy is not None:
            kw["empty_policy"] = hp.empty_policy
        regions, region_names = self._metric_regions()
        if regions:
            kw.update(regions=regions, region_names=region_names)
        if hp.nsd_tolerance is not None and hp.compute_distances:
            kw["nsd_tolerance"] = hp.nsd_tolerance
        return SegmentationMetrics(hp.num_classes, class_names=None if regions else self._class_names(), **kw)

    def _class_names(self):
        """Label names of the data being scored (the data set's ``class_names``, else the reader's known
        names); None (keys ``class_<k>``) when unknown or of the wrong length."""
        n = max(int(self.hparams.num_classes), 2)
        dm = getattr(self._trainer, "datamodule", None) if getattr(self, "_trainer", None) is not None else None
        names = None
        for key in ("test", "val", "probe", "train"):
            ds = (getattr(dm, "_datasets", None) or {}).get(key)
            names = getattr(getattr(ds, "dataset", ds), "class_names", None) if ds is not None else None
            if names:
                break
        if not names:
            names = dataset_class_names(getattr(dm, "dataset_name", None), n)
        names = [str(c) for c in names] if names else None
        return names if names and len(names) == n and len(set(names)) == n else None

    def on_test_epoch_start(self):
        self._metrics = None  # created at the first case, once we know whether the data are volumes
        self._pending = []
        self._qualitative = []
        self._subset_metrics = {}  # data sets made of named parts (the five polyp test sets): one each
        self.test_results = None

    def test_step(self, batch, batch_idx):
        subsets = _meta_list(batch.get("meta", {}) or {}, "subset", batch["image"].shape[0])
        for (pred, tgt, cid, spacing, img, loss), subset in zip(self._infer(batch), subsets):
            subset = None if subset is None else str(subset)
            rec = (pred.to(torch.uint8 if pred.max() < 256 else torch.int16), tgt.to(torch.uint8), cid, spacing,
                   subset)
            if self.trainer.world_size > 1:
                self._pending.append(rec)
            else:
                self._update_metrics(pred, tgt, cid, spacing, subset)
            if len(self._qualitative) < self.hparams.num_qualitative:
                if self.spatial_dims == 3:  # (C, I, J, K) -> slices along the last axis (K, C, I, J)
                    img, tgt_q, pred_q = img.permute(3, 0, 1, 2), tgt.permute(2, 0, 1), pred.permute(2, 0, 1)
                    self._qualitative.append(_qualitative_sample(img, tgt_q, pred_q, cid))
                else:
                    self._qualitative.append(_qualitative_sample(img, tgt, pred, cid))

    def _update_metrics(self, pred, tgt, cid, spacing, subset=None):
        if pred.dim() == 2 and spacing is not None and len(spacing) == 3:
            spacing = spacing[1:]  # a slice of a volume: (z, y, x) -> (y, x)
        if pred.dim() == 3 and spacing is not None and len(spacing) != 3:
            spacing = None
        if self._metrics is None:
            self._metrics = self._new_metrics(volumetric=pred.dim() == 3)
        self._metrics.update(pred.long(), tgt.long(), case_ids=None if cid is None else [str(cid)],
                             spacing=spacing)
        if subset is not None:
            m = self._subset_metrics.get(subset)
            if m is None:
                m = self._subset_metrics[subset] = self._new_metrics(volumetric=pred.dim() == 3)
            m.update(pred.long(), tgt.long(), case_ids=None if cid is None else [str(cid)], spacing=spacing)

    def on_test_epoch_end(self):
        if self.trainer.world_size > 1:
            import torch.distributed as dist
            gathered = [None] * self.trainer.world_size
            dist.all_gather_object(gathered, (self._pending, self._qualitative))
            if self.trainer.global_rank != 0:
                return
            seen, qual = set(), []
            for pending, q in gathered:
                for pred, tgt, cid, spacing, subset in pending:
                    if cid in seen:  # the distributed sampler pads with repeated cases
                        continue
                    seen.add(cid)
                    self._update_metrics(pred, tgt, cid, spacing, subset)
                qual.extend(q)
            self._qualitative = qual[:self.hparams.num_qualitative]
        if self._metrics is None:
            self._metrics = self._new_metrics()
        summary = self._metrics.compute()
        rows = self._metrics.per_case()
        self.test_results = {"summary": summary, "rows": rows, "qualitative": self._qualitative,
                             "settings": {**self._metrics.settings(), **self.metric_settings()}}
        # each named part on its own (the polyp benchmark reports every test set separately)
        self.test_results["subsets"] = {
            name: {"summary": m.compute(), "rows": m.per_case(), "qualitative": [],
                   "settings": {**m.settings(), **self.metric_settings(), "subset": name}}
            for name, m in self._subset_metrics.items()} if len(self._subset_metrics) > 1 else {}
        for name, sub in self.test_results["subsets"].items():
            v = sub["summary"].get("dice") if isinstance(sub["summary"], dict) else None
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                self.log(f"test/{name}/dice", float(v), rank_zero_only=True)
        for key in ("dice", "iou", "hd95"):
            v = summary.get(key) if isinstance(summary, dict) else None
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                self.log(f"test/{key}", float(v), rank_zero_only=True)

    def metric_settings(self) -> Dict[str, Any]:
        hp = self.hparams
        out = {"hd95_mode": hp.hd95_mode, "include_background": hp.include_background,
               "threshold": hp.threshold, "num_classes": hp.num_classes,
               "image_size": hp.image_size, "eval_original_size": hp.eval_original_size, "model": hp.model,
               "scan_backend": _backend_name(get_default_backend, resolve_backend, self.device)}
        if self.spatial_dims == 3:
            out.update({"spatial_dims": 3, "sliding_window": self.sliding_window.record(),
                        "training": "regions (sigmoid)" if hp.regions else (
                            "binary (sigmoid)" if self.out_channels == 1 else "labels (softmax)"),
                        "loss": self.loss_name, "grid": self._grid_used})
        if hp.regions:
            out["regions_from"] = "the model's region outputs (sigmoid), decoded to labels, then isin per region"
        elif self._metric_regions()[0]:
            out["regions_from"] = ("labels (label-trained model, model.eval_regions): predicted and reference "
                                   "label maps converted to region masks isin(labels, region)")
        return out

    # ----------------------------------------------------------------------------------------------------------
    # predict (Trainer.predict on a loader of images): labels at the input resolution
    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        image = batch["image"] if isinstance(batch, dict) else batch
        if self.spatial_dims == 3:
            return [infer_volume(self.net, v, self.sliding_window, self._regions)[1] for v in image]
        if image.dim() == 5:
            return [predict_volume(self.net, v, v.shape[-2:], self.hparams.threshold, input_size=self.input_size)
                    for v in image]
        logits = predict_logits_2d(self.net, image, input_size=self.input_size, output_size=image.shape[-2:])
        return self._labels(logits)

    # ----------------------------------------------------------------------------------------------------------
    # checkpoints: refuse another model / class count with a clear message before any weight is touched
    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        check_checkpoint_compatible(checkpoint, self.hparams, where="the checkpoint")
        if checkpoint.get("volumetric"):
            self.volumetric_info = checkpoint["volumetric"]

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """3-D: keep what ``predict`` needs to preprocess new volumes as the training ones (plan, label values)."""
        if self.spatial_dims != 3:
            return
        info = getattr(self, "volumetric_info", None)
        trainer = getattr(self, "_trainer", None)
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if info is None and dm is not None and hasattr(dm, "_probe"):
            from .volumetric import volumetric_info
            info = volumetric_info(dm._probe())
            kw = getattr(dm, "dataset_kwargs", None) or {}
            if info is not None:  # reader options of per-case folders, for predict on the same layout
                ch = kw.get("channels")
                info["reader"] = {"channels": list(ch) if isinstance(ch, (list, tuple)) else None,
                                  "label": kw.get("label") if isinstance(kw.get("label"), str) else None}
        if info is not None:
            from .io import to_plain
            self.volumetric_info = to_plain(info)
            checkpoint["volumetric"] = self.volumetric_info


def check_checkpoint_compatible(checkpoint: Dict[str, Any], hparams, where: str = "the checkpoint") -> None:
    """Raise ``CheckpointMismatchError`` if ``checkpoint`` was trained for another model / class / channel count."""
    ck = checkpoint.get("hyper_parameters") or {}
    if not ck:
        raise CheckpointMismatchError(f"{where} has no 'hyper_parameters'; it was not written by mambaseg "
                                      "(use `create_model(..., pretrained=PATH)` for plain weight files)")
    problems = []
    for key in ("model", "num_classes", "in_channels"):
        a, b = ck.get(key), hparams.get(key)
        if a is not None and b is not None and a != b:
            problems.append(f"{key}: checkpoint {a!r} vs config {b!r}")
    a, b = dict(ck.get("model_kwargs") or {}), dict(hparams.get("model_kwargs") or {})
    if a != b and ck.get("model") == hparams.get("model"):
        problems.append(f"model_kwargs: checkpoint {a!r} vs config {b!r}")
    if problems:
        raise CheckpointMismatchError(f"{where} was trained for a different network ({'; '.join(problems)}). Use a "
                                      "checkpoint of this model, or set the config to match the checkpoint.")


def _backend_name(get_default, resolve, device) -> str:
    name = get_default()
    try:
        return f"{name} -> {resolve(name, device)}" if name == "auto" else name
    except Exception:  # pragma: no cover - informative only
        return name


def _meta_list(meta, key: str, n: int) -> list:
    v = meta.get(key) if isinstance(meta, dict) else None
    if v is None:
        return [None] * n
    if isinstance(v, torch.Tensor):
        if v.dim() == 0:
            return [v.item()] * n
        if v.dim() >= 2 and v.shape[0] == n:
            return [t.tolist() for t in v]
        if v.dim() == 1 and v.shape[0] == n:
            return v.tolist()
        return [v.tolist()] * n
    if isinstance(v, (list, tuple)):
        if len(v) == n and not all(isinstance(x, torch.Tensor) and x.dim() == 1 and x.shape[0] == n for x in v):
            return list(v)
        if v and all(isinstance(x, torch.Tensor) for x in v):  # default_collate of a tuple: one tensor per component
            return [tuple(float(x[i]) if x.is_floating_point() else int(x[i]) for x in v) for i in range(n)]
        return [v] * n
    return [v] * n


def _spacing(s):
    if s is None:
        return None
    if isinstance(s, torch.Tensor):
        s = s.tolist()
    return tuple(float(x) for x in s)


def _qualitative_sample(img: torch.Tensor, tgt: torch.Tensor, pred: torch.Tensor, cid) -> Dict[str, Any]:
    """A display-ready (H, W[, 3]) slice: the middle 2D image, or the volume slice with the most foreground."""
    img = img.detach().float().cpu()
    if img.dim() == 4:  # (D, C, h, w) volume slices
        fg = (tgt > 0).flatten(1).sum(1) if tgt.dim() == 3 else None
        k = int(fg.argmax()) if fg is not None and fg.max() > 0 else img.shape[0] // 2
        img, tgt, pred = img[k], tgt[k], pred[k]
    if tuple(img.shape[-2:]) != tuple(tgt.shape[-2:]):
        img = F.interpolate(img[None], size=tuple(int(v) for v in tgt.shape[-2:]), mode="bilinear",
                            align_corners=False)[0]
    if img.dim() == 3:
        img = img[:3] if img.shape[0] >= 3 else img[:1]
    arr = img.numpy()
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    arr = arr.transpose(1, 2, 0) if arr.shape[0] == 3 else arr[0]
    return {"case_id": cid, "image": arr.astype(np.float32), "target": tgt.cpu().numpy().astype(np.uint8),
            "pred": pred.cpu().numpy().astype(np.uint8)}
