"""``SegDataModule``: a LightningDataModule over ``mambaseg.data.build_dataset`` (folders, ISIC, polyp, ACDC,
Synapse, nnU-Net, NIfTI and the synthetic sets).

Splits:

* ``train_split`` trains; ``test_split`` is the held-out test set.
* Model selection uses ``val_split`` when the data set has one (ACDC), otherwise ``val_fraction`` of the training
  cases, carved with a seeded permutation (the carved cases use the evaluation transform).
* ``split_file`` (a JSON ``{"train": [case ids], "val": [case ids]}`` of ``train_split`` cases, as
  ``mambaseg compare`` writes for each seed / fold) fixes the train / validation cases explicitly; it replaces
  ``val_split`` / ``val_fraction``.
* ``upstream_select_on_test_split=True`` reproduces VM-UNet / VM-UNetV2, which select the best epoch on the test
  set (test-set leakage): the validation loader then *is* the test loader. Off by default.

Before training, ``fit`` checks every split it will read (``check_data``: each file opens, has its mask, sizes
agree, mask values fit; ``check="full"`` decodes every image) and lists every problem at once, before anything is
written (``mambaseg check`` runs the same check alone). ``split=[0.8, 0.1, 0.1]`` splits one flat
``images/ + masks/`` folder (Kvasir-SEG as downloaded) by seeded ratios and saves ``split.json`` in the run.

3-D data sets (``spatial_dims == 3`` on the data set: whole preprocessed volumes as contract samples, see
``VOLUME_CONTRACT.md``): training draws random patches of ``image_size`` (one size per axis) with nnU-Net's
foreground oversampling and augmentation (``mambaseg.data.patches.PatchDataset``; ``iterations_per_epoch`` batches
per epoch, label -1 kept for the losses to ignore); validation and test load whole volumes one at a time (the
module runs the sliding window). The 2-D transforms presets do not apply (``transforms`` is ignored in 3-D).

Shuffling uses a sampler whose order depends only on ``(seed, epoch)``, and each training sample's augmentation is
seeded from ``(seed, epoch, index)`` where it is loaded (main process or worker, persistent or not), so a run resumed
from a checkpoint sees the same batches, augmented the same way, as an uninterrupted one, with any ``num_workers``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from mambaseg.data import build_dataset, list_datasets
from mambaseg.data.base import DataError, SegDataset, volume_slices
from mambaseg.data.check import CHECK_MODES, DataReport, check_splits
from mambaseg.data.hints import current_style, data_arg
from mambaseg.data.splits import load_split, save_split
from mambaseg.data.transforms import preset_transforms, seed_transforms

from .errors import MambasegUserError, near_matches
from .runs import seed_generators

__all__ = ["SegDataModule", "EpochSeededSampler", "EpochSeededSamples", "collate_cases", "DataCheckError"]


class DataCheckError(MambasegUserError):
    """The data check before training found problems (the message lists every one)."""


def _check_fix_hint(mode: str) -> str:
    if current_style() == "cli":
        return ("Fix or remove these files and run `mambaseg check` with the same --config / --data options to "
                "see the data again; --data.check none skips the check.")
    return "Fix or remove these files; check='none' skips the check."


class EpochSeededSampler(Sampler):
    """Random permutation drawn from ``(seed, epoch)`` (Lightning calls ``set_epoch`` every epoch).

    ``on_epoch(epoch)`` is called from ``set_epoch``; the data module uses it to reseed the random transforms, so
    augmentations too depend only on ``(seed, epoch)`` (in the main process; workers reseed from their seed).
    """

    def __init__(self, n: int, seed: int = 0, on_epoch=None, with_epoch: bool = False):
        self.n, self.seed, self.epoch, self.on_epoch = int(n), int(seed), 0, on_epoch
        self.with_epoch = bool(with_epoch)  # yield (epoch, index) pairs, for ``EpochSeededSamples``
        if on_epoch is not None:
            on_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.on_epoch is not None:
            self.on_epoch(self.epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        return iter([(self.epoch, i) for i in order] if self.with_epoch else order)

    def __len__(self) -> int:
        return self.n


class VolumeEvalDataset(Dataset):
    """Whole volumes for per-volume evaluation: ``image`` = the slices after the evaluation transform
    (D, C, h, w), ``mask`` = the original (D, H, W) labels, ``meta`` with ``case_id``, ``spacing``,
    ``original_size``."""

    is_volumetric = True

    def __init__(self, volumes: Dataset, transform=None):
        self.volumes, self.transform = volumes, transform

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        vol = self.volumes[i]
        return {"image": volume_slices(vol, self.transform), "mask": vol["mask"], "meta": vol["meta"]}


class EpochSeededSamples(Dataset):
    """``dataset`` indexed by ``(epoch, index)`` (``EpochSeededSampler(with_epoch=True)``): before loading a sample
    its random transforms, and in a worker process the worker's Python / NumPy / torch generators, are seeded
    from ``(seed, epoch, index)``, so augmentation does not depend on which process loads the sample nor on how
    long that process has lived (persistent workers, a resumed run). Plain integer indices load unseeded."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        epoch, i = key
        s = (self.seed * 1_000_003 + 7919 * int(epoch) + 104_729 * int(i) + 1) % (2 ** 63)
        t = getattr(getattr(self.dataset, "dataset", self.dataset), "transform", None)
        if t is not None:
            seed_transforms(t, s)
        if torch.utils.data.get_worker_info() is not None:
            seed_generators(s)
        return self.dataset[i]


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    t = getattr(getattr(info.dataset, "dataset", info.dataset), "transform", None)
    if t is not None:
        seed_transforms(t, torch.initial_seed() % (2 ** 31))


def collate_cases(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack images and masks; keep ``meta`` as a dict of lists (case ids, spacings, sizes stay Python values)."""
    out: Dict[str, Any] = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if key == "meta":
            keys = set().union(*[set(v.keys()) for v in vals if isinstance(v, dict)])
            out["meta"] = {k: [v.get(k) if isinstance(v, dict) else None for v in vals] for k in sorted(keys)}
        elif all(isinstance(v, torch.Tensor) for v in vals):
            shapes = {tuple(v.shape) for v in vals}
            if len(shapes) != 1:
                raise MambasegUserError(f"cannot batch {key!r} tensors of different shapes {sorted(shapes)[:3]}; "
                                        "resize in the transform or use batch_size 1 for evaluation")
            out[key] = torch.stack(vals)
        else:
            out[key] = vals
    return out


def _check_reader_keywords(dataset: str, dataset_kwargs: Dict[str, Any], split_kwargs) -> None:
    """A keyword in ``dataset_kwargs`` / ``split_kwargs`` that the reader does not take (a typo, or a config key
    meant for another reader, as the demo config's ``size`` reaching the folder reader): one line naming it, the
    reader's valid keywords and near matches."""
    from mambaseg.data.registry import UnknownReaderKeywordError, check_reader_kwargs
    try:
        check_reader_kwargs(dataset, dataset_kwargs, where="data.dataset_kwargs")
        for sp, kw in dict(split_kwargs or {}).items():
            if not isinstance(kw, dict):
                raise MambasegUserError(f"data.split_kwargs.{sp} must map reader keywords to values, got {kw!r}")
            check_reader_kwargs(dataset, kw, where=f"data.split_kwargs.{sp}")
    except UnknownReaderKeywordError as e:
        raise MambasegUserError(str(e)) from None


class SegDataModule(pl.LightningDataModule):
    """Data for one experiment.

    Args:
        dataset: reader name (``mambaseg datasets`` lists them), e.g. ``"isic"``, ``"acdc"``, ``"synthetic-skin"``.
        root: data folder (not needed for the synthetic sets).
        dataset_kwargs: extra reader arguments (e.g. ``num_samples`` for synthetic sets, ``year`` for ISIC).
        split_kwargs: per-split reader arguments on top of ``dataset_kwargs``, e.g.
            ``{"val": {"num_samples": 64}}``.
        image_size: network input size (square).
        transforms: ``mambaseg.data.transforms.preset_transforms`` name (``"default"``, ``"vmunet_isic"``,
            ``"mamba_unet_acdc"``, ``"synapse"``); ``None`` = no transform (images must already share one size).
        batch_size: training batch size.
        eval_batch_size: validation / test batch size (volume data sets always use 1).
        num_workers: data-loader workers.
        train_split: split name used for training.
        val_split: split name for model selection; ``None`` carves ``val_fraction`` of the training cases.
        test_split: held-out test split; ``None`` = no test set.
        val_fraction: fraction of the training cases used for validation when ``val_split`` is None.
        upstream_select_on_test_split: select the model on the test split, as VM-UNet / VM-UNetV2 do (leaky).
        seed: seed of the carved split and of the shuffling.
        drop_last: drop the last incomplete training batch.
        num_classes: label classes incl. background; ``None`` = what the data set reports.
        split_file: JSON ``{"train": [...], "val": [...]}`` naming the ``train_split`` case ids of each side
            (replaces ``val_split`` / ``val_fraction``; other keys of the file are ignored).
        in_channels: image channels; ``None`` = what the data set reports.
        check: data check before training (``mambaseg.data.check``): ``"header"`` (default: every file opens,
            has its mask, sizes agree, mask values fit), ``"full"`` (decode every image too) or ``"none"``.
        split: ``[train, val, test]`` ratios (or ``[train, val]``) for a reader of one flat ``images/ + masks/``
            folder (the ``folder`` reader, e.g. Kvasir-SEG as downloaded): a seeded split of the case ids
            (``seed``), saved as ``split.json`` in the run directory; ``val_split`` then defaults to ``"val"``.
        iterations_per_epoch: 3-D: training batches per epoch (nnU-Net: 250).
        oversample_foreground: 3-D: share of patches centred on foreground (nnU-Net: 0.33).
        augmentation: 3-D: ``"nnunet"`` (nnU-Net's spatial + intensity augmentation) or ``None`` (plain crops).
        region_based: train on the data set's regions when it declares them (BraTS WT/TC/ET: sigmoid outputs, region
            Dice + BCE, as nnU-Net); ``False`` trains plain softmax over the labels (as SegMamba and nnMamba do).
    """

    def __init__(self, dataset: str = "synthetic-skin", root: Optional[str] = None,
                 dataset_kwargs: Optional[Dict[str, Any]] = None,
                 split_kwargs: Optional[Dict[str, Dict[str, Any]]] = None, image_size: Union[int, List[int]] = 256,
                 transforms: Optional[str] = "default", batch_size: int = 8, eval_batch_size: int = 8,
                 num_workers: int = 0, train_split: str = "train", val_split: Optional[str] = None,
                 test_split: Optional[str] = "test", val_fraction: float = 0.1,
                 upstream_select_on_test_split: bool = False, seed: int = 42, drop_last: bool = False,
                 num_classes: Optional[int] = None, in_channels: Optional[int] = None, check: str = "header",
                 split: Optional[List[float]] = None, split_file: Optional[str] = None,
                 iterations_per_epoch: int = 250, oversample_foreground: float = 0.33,
                 augmentation: Optional[str] = "nnunet", region_based: bool = True):
        super().__init__()
        names = list(list_datasets()) if callable(list_datasets) else []
        names = [n if isinstance(n, str) else getattr(n, "name", str(n)) for n in names]
        if names and dataset not in names:
            raise MambasegUserError(f"unknown dataset {dataset!r}{near_matches(dataset, names)} "
                                    f"Available: {', '.join(sorted(names))}")
        if root is not None and not os.path.exists(os.path.expanduser(str(root))):
            raise FileNotFoundError(f"data path {root!r} does not exist; set {data_arg('root', 'FOLDER')} to the "
                                    f"folder holding the {dataset!r} data (see `mambaseg datasets` for the expected "
                                    "layout)")
        if split_file is not None and not os.path.isfile(os.path.expanduser(str(split_file))):
            raise FileNotFoundError(f"data.split_file {split_file!r} does not exist; pass a JSON file "
                                    '{"train": [case ids], "val": [case ids]} or leave it unset')
        if not 0.0 <= val_fraction < 1.0:
            raise MambasegUserError(f"val_fraction must be in [0, 1); got {val_fraction}")
        if check not in CHECK_MODES:
            raise MambasegUserError(f"unknown data check {check!r}{near_matches(check, CHECK_MODES)} Choices: "
                                    f"{', '.join(CHECK_MODES)}")
        if split is not None:
            if dataset != "folder":
                raise MambasegUserError(f"{data_arg('split', list(split))} splits one flat images/ + masks/ folder "
                                        f"and needs {data_arg('dataset', 'folder')}; the {dataset!r} reader brings "
                                        "its own splits")
            if len(split) not in (2, 3) or any(float(v) < 0 for v in split) or sum(float(v) for v in split) <= 0:
                raise MambasegUserError(f"{data_arg('split', list(split))}: give 3 non-negative ratios (train, val, "
                                        f"test), e.g. {data_arg('split', [0.8, 0.1, 0.1])}")
        # num_classes / in_channels are the module's hyper-parameters (linked); keep them out of ours
        self.save_hyperparameters(ignore=["num_classes", "in_channels"])
        self.dataset_name = dataset
        self.root = None if root is None else os.path.expanduser(str(root))
        self.dataset_kwargs = dict(dataset_kwargs or {})
        _check_reader_keywords(dataset, self.dataset_kwargs, split_kwargs)  # typos: one line, before any read
        self._datasets: Dict[str, Dataset] = {}
        self._num_classes = num_classes
        self._in_channels = in_channels
        self._val_split = val_split if val_split is not None or split is None else "val"
        self._spatial_dims: Optional[int] = None
        if int(iterations_per_epoch) < 1:
            raise MambasegUserError(f"iterations_per_epoch must be >= 1; got {iterations_per_epoch}")
        if not 0.0 <= float(oversample_foreground) <= 1.0:
            raise MambasegUserError(f"oversample_foreground must lie in [0, 1]; got {oversample_foreground}")
        if augmentation not in (None, "nnunet"):
            raise MambasegUserError(f"unknown augmentation {augmentation!r}; choose 'nnunet' or null")

    # ----------------------------------------------------------------------------------------------------------
    @property
    def spatial_dims(self) -> int:
        """Spatial axes of the data set's samples (its ``spatial_dims`` attribute; 2 when absent)."""
        if self._spatial_dims is None:
            ds = self.build(self.hparams.train_split, train=False, transform=False)
            self._spatial_dims = int(getattr(ds, "spatial_dims", 2) or 2)
        return self._spatial_dims

    @property
    def regions(self) -> Optional[List[List[int]]]:
        """The data set's regions (region-based training, e.g. BraTS WT/TC/ET), or None."""
        if not self.hparams.get("region_based", True):
            return None
        return self.declared_regions

    @property
    def region_names(self) -> Optional[List[str]]:
        return self.declared_region_names if self.regions else None

    @property
    def declared_regions(self) -> Optional[List[List[int]]]:
        """The regions the data set declares, whatever ``region_based`` says (a label-trained model is scored on
        them with ``model.eval_regions``), or None."""
        r = getattr(self._probe(), "regions", None)
        return None if not r else [[int(v) for v in reg] for reg in r]

    @property
    def declared_region_names(self) -> Optional[List[str]]:
        n = getattr(self._probe(), "region_names", None) if self.declared_regions else None
        return None if not n else [str(v) for v in n]

    def _transform(self, train: bool):
        if self.hparams.transforms is None or self.spatial_dims == 3:
            return None
        return preset_transforms(self.hparams.transforms, self.hparams.image_size, train,
                                 seed=self.hparams.seed if train else None)

    def build(self, split: str, train: bool, transform: bool = True, **extra) -> Dataset:
        kw = {**self.dataset_kwargs, **dict((self.hparams.split_kwargs or {}).get(split) or {}), **extra}
        if self.hparams.split is not None:
            kw.setdefault("ratios", tuple(float(v) for v in self.hparams.split))
            kw.setdefault("seed", self.hparams.seed)
        return build_dataset(self.dataset_name, root=self.root, split=split,
                             transform=self._transform(train) if transform else None, **kw)

    # ----------------------------------------------------------------------------------------------------------
    def splits_used(self, include_test: bool = True) -> Dict[str, str]:
        """``{role: split name}`` of every split ``fit`` reads (train, val, test)."""
        hp = self.hparams
        out = {"train": hp.train_split}
        if self._val_split is not None and not hp.upstream_select_on_test_split:
            out["val"] = self._val_split
        if hp.test_split and (include_test or hp.upstream_select_on_test_split):
            out["test"] = hp.test_split
        return out

    def check_data(self, mode: Optional[str] = None, include_test: bool = True):
        """Check every split used (``mambaseg.data.check``); returns the ``DataReport`` (never raises for bad
        files: each problem is listed in the report)."""
        mode = mode or self.hparams.check
        if mode == "none":
            return DataReport(self.dataset_name, self.root, mode)
        entries: Dict[str, Any] = {}
        for role, split in self.splits_used(include_test).items():
            key = role if role == split else f"{role} ({split})"
            try:
                entries[key] = self.build(split, train=False, transform=False)
            except (DataError, FileNotFoundError, ValueError) as e:  # ValueError: e.g. a split name refused
                entries[key] = str(e)
                if "have no mask" in str(e) or "have no image" in str(e):
                    try:  # unpaired files: still check the files that do pair
                        entries[key] = (self.build(split, train=False, transform=False, strict=False), str(e))
                    except Exception:
                        pass
        return check_splits(entries, mode, self.dataset_name, self.root)

    def raise_if_bad(self, mode: Optional[str] = None, include_test: bool = True, where: str = "") -> None:
        """Run :meth:`check_data`; raise ``DataCheckError`` listing every problem when any is found."""
        rep = self.check_data(mode, include_test)
        if not rep.ok:
            raise DataCheckError(rep.error_message(where, fix=_check_fix_hint(rep.mode)))

    def _save_split(self) -> None:
        """With ``split`` ratios: write the case ids of each split to ``<run dir>/split.json`` (rank 0, fit)."""
        trainer = getattr(self, "trainer", None)
        if self.hparams.split is None or trainer is None or trainer.global_rank != 0:
            return
        data = {}
        for role, split in self.splits_used().items():
            ds = self.build(split, train=False, transform=False)
            data[split] = list(ds.case_ids())
        data["_ratios"] = [float(v) for v in self.hparams.split]
        data["_seed"] = [int(self.hparams.seed)]
        save_split(os.path.join(trainer.default_root_dir, "split.json"), data)

    def _probe(self) -> Dataset:
        if "probe" not in self._datasets:
            try:
                self._datasets["probe"] = self.build(self.hparams.train_split, train=False)
            except DataError:
                # the training split is unreadable: report every problem of every split, not only this one
                if self.hparams.check != "none":
                    self.raise_if_bad()
                raise
        return self._datasets["probe"]

    @property
    def num_classes(self) -> int:
        """Label classes incl. background (binary = 2)."""
        if self._num_classes is None:
            self._num_classes = int(getattr(self._probe(), "num_classes"))
        return self._num_classes

    @property
    def in_channels(self) -> int:
        if self._in_channels is None:
            self._in_channels = int(getattr(self._probe(), "in_channels"))
        return self._in_channels

    def _carve(self):
        full_train = self.build(self.hparams.train_split, train=True)
        train_idx, val_idx = carve_indices(len(full_train), self.hparams.val_fraction, self.hparams.seed,
                                           _group_ids(full_train))
        train = Subset(full_train, train_idx) if val_idx else full_train
        val = Subset(self.build(self.hparams.train_split, train=False), val_idx) if val_idx else None
        return train, val

    def _from_split_file(self):
        split = load_split(os.path.expanduser(str(self.hparams.split_file)))
        if not isinstance(split, dict):
            raise MambasegUserError(f"data.split_file {self.hparams.split_file!r} holds a list of folds; pass one "
                                    'fold\'s {"train": [...], "val": [...]} (e.g. from mambaseg.data.splits.load_split)')
        full_train = self.build(self.hparams.train_split, train=True)
        ids = [str(c) for c in full_train.case_ids()]
        pos = {c: i for i, c in enumerate(ids)}
        idx = {}
        for side in ("train", "val"):
            names = [str(c) for c in split.get(side) or []]
            missing = [c for c in names if c not in pos]
            if missing:
                raise MambasegUserError(f"data.split_file {self.hparams.split_file!r}: {len(missing)} {side} case "
                                        f"id(s) are not in the {self.hparams.train_split!r} split of "
                                        f"{self.dataset_name!r} (first: {missing[0]!r}); the file belongs to other data")
            idx[side] = sorted(pos[c] for c in names)
        if not idx["train"] or set(idx["train"]) & set(idx["val"]):
            raise MambasegUserError(f"data.split_file {self.hparams.split_file!r}: needs a non-empty 'train' list "
                                    "disjoint from 'val'")
        train = Subset(full_train, idx["train"])
        val = Subset(self.build(self.hparams.train_split, train=False), idx["val"]) if idx["val"] else None
        return train, val

    def setup(self, stage: Optional[str] = None) -> None:
        hp = self.hparams
        if stage in (None, "fit", "validate") and "train" not in self._datasets:
            if hp.split_file:
                train, val = self._from_split_file()
            elif self._val_split is None:
                train, val = self._carve()
            else:
                train, val = self.build(hp.train_split, train=True), self.build(self._val_split, train=False)
            if stage == "fit":
                self._save_split()
            if hp.upstream_select_on_test_split:
                if not hp.test_split:
                    raise MambasegUserError(f"upstream_select_on_test_split needs a test split "
                                            f"({data_arg('test_split', 'test')})")
                val = self.build(hp.test_split, train=False)
            if self.spatial_dims == 3:
                train = self._patches(train)
            self._datasets["train"], self._datasets["val"] = train, val
            if len(train) == 0:
                raise MambasegUserError(f"the {hp.train_split!r} split of {self.dataset_name!r} is empty "
                                        f"(root={self.root!r})")
        if stage in (None, "test") and "test" not in self._datasets and hp.test_split:
            self._datasets["test"] = self.build(hp.test_split, train=False)

    # ----------------------------------------------------------------------------------------------------------
    def _patches(self, whole: Dataset) -> Dataset:
        """3-D training: random patches of ``image_size`` from the whole training volumes."""
        from mambaseg.data.patches import PatchDataset
        hp = self.hparams
        base = getattr(whole, "dataset", whole)
        patch = hp.image_size if isinstance(hp.image_size, (list, tuple)) else [hp.image_size] * 3
        if len(patch) != 3:
            raise MambasegUserError(f"{data_arg('image_size', list(patch))}: a 3-D data set needs one patch size "
                                    f"per axis, e.g. {data_arg('image_size', [64, 64, 64])}")
        return PatchDataset(whole, patch, batch_size=hp.batch_size, oversample_foreground=hp.oversample_foreground,
                            samples_per_epoch=int(hp.iterations_per_epoch) * int(hp.batch_size),
                            augmentation=hp.augmentation, regions=self._oversampled(base),
                            outside_label=None, seed=hp.seed)

    def _oversampled(self, base) -> Optional[List[List[int]]]:
        """What the foreground oversampling picks from, as nnU-Net: the regions when training on them, else every
        foreground class (a label-trained model on a data set that declares regions samples per class)."""
        if self.regions:
            return self.regions
        nc = getattr(base, "num_classes", None)
        return None if nc is None else [[c] for c in range(1, int(nc))]

    def _eval_loader(self, ds: Dataset) -> DataLoader:
        if self.spatial_dims == 3:
            return DataLoader(ds, batch_size=1, shuffle=False, num_workers=self.hparams.num_workers,
                              collate_fn=collate_cases, persistent_workers=self.hparams.num_workers > 0)
        if _is_volume_dataset(ds):
            ds = VolumeEvalDataset(ds.volumes() if hasattr(ds, "volumes") else ds, ds.transform)
            bs = 1
        else:
            bs = self.hparams.eval_batch_size
        return DataLoader(ds, batch_size=bs, shuffle=False, num_workers=self.hparams.num_workers,
                          collate_fn=collate_cases, persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        ds = self._datasets["train"]
        if self.spatial_dims == 3:
            trainer = getattr(self, "trainer", None)
            start = int(getattr(trainer, "current_epoch", 0) or 0) if trainer is not None else 0
            return DataLoader(ds, batch_size=self.hparams.batch_size, sampler=ds.sampler(start_epoch=start),
                              num_workers=self.hparams.num_workers, collate_fn=collate_cases,
                              persistent_workers=self.hparams.num_workers > 0)
        sampler = EpochSeededSampler(len(ds), self.hparams.seed, with_epoch=True)
        return DataLoader(EpochSeededSamples(ds, self.hparams.seed), batch_size=self.hparams.batch_size,
                          sampler=sampler,
                          num_workers=self.hparams.num_workers, collate_fn=collate_cases,
                          drop_last=self.hparams.drop_last and len(ds) > self.hparams.batch_size,
                          worker_init_fn=_worker_init if self.hparams.num_workers > 0 else None,
                          persistent_workers=self.hparams.num_workers > 0)

    def val_dataloader(self):
        ds = self._datasets.get("val")
        return [] if ds is None else self._eval_loader(ds)

    def test_dataloader(self):
        if "test" not in self._datasets:
            raise MambasegUserError(f"no test split configured for {self.dataset_name!r}; set "
                                    f"{data_arg('test_split', 'test')}")
        return self._eval_loader(self._datasets["test"])

    def describe(self) -> Dict[str, Any]:
        d = {"dataset": self.dataset_name, "root": self.root, "image_size": self.hparams.image_size}
        if self.hparams.get("split_file"):
            d["split_file"] = self.hparams.split_file
        for k, ds in self._datasets.items():
            if k != "probe":
                d[f"n_{k}"] = len(ds)
        return d


def _group_ids(ds) -> Optional[List[str]]:
    """Per-sample group keys for carving a validation split: the volume a slice comes from
    (``<volume>_slice_<k>`` case ids, as every volume reader names its slices), so that no volume has slices on
    both sides. None when the data set cannot list its case ids without reading every sample (2-D sets, where
    each image is its own case anyway)."""
    fn = getattr(type(ds), "case_ids", None)
    if fn is None or fn is getattr(SegDataset, "case_ids", None):
        return None
    ids = ds.case_ids()
    return [cid.rpartition("_slice")[0] or cid for cid in map(str, ids)]


def carve_indices(n: int, fraction: float, seed: int, groups: Optional[Sequence[str]] = None):
    """Split ``range(n)`` into (train, val) index lists with about ``fraction`` of the samples in val, seeded.
    With ``groups`` (one key per sample), whole groups go to one side: groups are drawn in a seeded random order
    until val holds at least round(n * fraction) samples. Without groups every sample is its own group."""
    n_val = int(round(n * fraction))
    if fraction > 0 and n_val == 0 and n > 1:
        n_val = 1
    if n_val == 0:
        return list(range(n)), []
    keys = list(groups) if groups is not None else list(range(n))
    if len(keys) != n:
        raise ValueError(f"carve_indices: {len(keys)} group keys for {n} samples")
    members: Dict[Any, List[int]] = {}
    for i, k in enumerate(keys):
        members.setdefault(k, []).append(i)
    order = list(members)
    if len(order) < 2:
        raise MambasegUserError(f"cannot carve a validation split: all {n} training samples belong to one "
                                f"case ({order[0]!r}); set {data_arg('val_split', 'val')} or add cases")
    perm = torch.randperm(len(order), generator=torch.Generator().manual_seed(seed)).tolist()
    val = []
    for j in perm[:-1]:                      # always leave at least one group for training
        if len(val) >= n_val:
            break
        val.extend(members[order[j]])
    val_set = set(val)
    return [i for i in range(n) if i not in val_set], sorted(val)


def _is_volume_dataset(ds) -> bool:
    """True for volumetric data sets (evaluated per whole volume); a carved Subset of one stays slice-wise."""
    return not isinstance(ds, Subset) and bool(getattr(ds, "is_volumetric", False))
