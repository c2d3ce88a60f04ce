"""Data set registry: ``build_dataset(name, root, split, transform, **kwargs)`` and ``list_datasets()``.

=====================  ===========================================================================================
name                   reader (``kwargs`` go to it)
=====================  ===========================================================================================
``folder``             :class:`~mambaseg.data.folders.FolderDataset` (images/ + masks/ by stem; split folders or
                       ratio/JSON split of a flat folder)
``isic``               :class:`~mambaseg.data.isic.ISICDataset` (VM-UNet ``{train,val}/{images,masks}`` or the
                       challenge's own naming)
``polyp``              :func:`~mambaseg.data.polyp.build_polyp` (PraNet ``TrainDataset``/``TestDataset``; split
                       ``"test/Kvasir"`` or ``subset="Kvasir"`` for one test set, ``"test"`` for all, concatenated)
``acdc``               :func:`~mambaseg.data.acdc.ACDCDataset` (SSL4MIS h5 slices/volumes + list files)
``synapse``            :func:`~mambaseg.data.synapse.SynapseDataset` (TransUNet npz slices / h5 volumes + lists)
``nnunet``             :func:`~mambaseg.data.nnunet.NNUNetDataset` (nnU-Net v2 raw; ``fold=``)
``nifti``              :class:`~mambaseg.data.nifti.NiftiDataset` (NIfTI volumes sliced to 2D)
``volumes``            :class:`~mambaseg.data.volumetric.VolumetricDataset` (3D: nnU-Net raw, Decathlon, BraTS,
                       per-case folders with ``channels=``/``label=``, recognised; ``spatial_dims=2``: 2D slices)
``brats``, ``msd``     the same reader, for BraTS folders / a Decathlon task (names only document the layout)
``synthetic-skin``     :class:`~mambaseg.data.synthetic.SyntheticSkin` (``num_samples``, ``size``, ``seed``)
``synthetic-polyp``    :class:`~mambaseg.data.synthetic.SyntheticPolyp`
``synthetic-cardiac``  :class:`~mambaseg.data.synthetic.SyntheticCardiac` (``num_samples`` = volumes, ``depth``)
``synthetic-brats``    :class:`~mambaseg.data.synthetic3d.SyntheticBraTS` (3D: whole volumes as contract samples;
                       ``size``, ``spacing``, ``channels``, ``label_mode="labels"|"regions"``; ``transform`` is a
                       callable ``sample dict -> sample dict``)
=====================  ===========================================================================================

``nnunet`` with ``spatial_dims=3`` gives the 3D data set too. Volumetric data sets (acdc, synapse, nifti, nnunet with NIfTI files, synthetic-cardiac) return a 2D data set of
slices whose ``.volumes()`` gives whole volumes; :func:`build_volume_dataset` is a shortcut.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

from mambaseg.utils.errors import close_matches, near_matches

from .base import SegDataset, VolumeDataset

__all__ = ["register_dataset", "build_dataset", "build_volume_dataset", "list_datasets"]

_REGISTRY: Dict[str, dict] = {}


def register_dataset(name: str, description: str, needs_root: bool = True):
    """Decorator registering ``fn(root, split, transform, **kwargs) -> SegDataset`` under ``name``."""

    def deco(fn: Callable):
        if name in _REGISTRY:
            raise ValueError(f"data set {name!r} is already registered")
        _REGISTRY[name] = {"fn": fn, "description": description, "needs_root": needs_root}
        return fn

    return deco


def list_datasets() -> Dict[str, str]:
    """``{name: one-line description}`` of every registered data set."""
    return {k: v["description"] for k, v in _REGISTRY.items()}


def _entry(name: str) -> dict:
    if name not in _REGISTRY:
        hint = near_matches(name, _REGISTRY)
        raise ValueError(f"unknown data set {name!r}{hint} Known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def build_dataset(name: str, root: Optional[str] = None, split: str = "train", transform=None,
                  **kwargs) -> SegDataset:
    """Build a 2D data set by name (table in the module docstring).

    Args:
        name: registered name (``list_datasets()``).
        root: data folder (not needed by the synthetic sets).
        split: ``"train"``, ``"val"``, ``"test"`` (polyp also ``"test/<set>"``; folder/nifti/nnunet also ``"all"``).
        transform: joint transform ``(image HWC float32, mask HW int64) -> (image, mask)``.
        **kwargs: passed to the reader.
    """
    e = _entry(name)
    if e["needs_root"] and root is None:
        raise ValueError(f"data set {name!r} needs root= (its data folder)")
    if not e["needs_root"] and root is not None:
        raise ValueError(f"data set {name!r} is generated and takes no root (got root={root!r})")
    check_reader_kwargs(name, kwargs)
    return e["fn"](root, split, transform, **kwargs)


def build_volume_dataset(name: str, root: Optional[str] = None, split: str = "test", **kwargs) -> VolumeDataset:
    """Whole volumes of a volumetric data set: ``build_dataset(...).volumes()``."""
    return build_dataset(name, root, split, None, **kwargs).volumes()


# ----------------------------------------------------------------------------------------------------------------
@register_dataset("folder", "image/mask folders (PNG/JPG/BMP/TIFF) paired by file stem; binary, class-index, "
                            "palette or colour masks")
def _folder(root, split, transform, **kw):
    from .folders import FolderDataset

    return FolderDataset(root, split=split, transform=transform, **kw)


@register_dataset("isic", "ISIC 2017/2018 skin lesions: VM-UNet {train,val}/{images,masks} or challenge naming")
def _isic(root, split, transform, **kw):
    from .isic import ISICDataset

    return ISICDataset(root, split=split, transform=transform, **kw)


@register_dataset("polyp", "polyp benchmark (PraNet layout): TrainDataset + five TestDataset sets, split "
                           "'test/Kvasir' etc.")
def _polyp(root, split, transform, **kw):
    from .polyp import build_polyp

    return build_polyp(root, split=split, transform=transform, **kw)


@register_dataset("acdc", "ACDC cardiac MRI (SSL4MIS h5 slices + volumes, list files), 4 classes")
def _acdc(root, split, transform, **kw):
    from .acdc import ACDCDataset

    return ACDCDataset(root, split=split, transform=transform, **kw)


@register_dataset("synapse", "Synapse multi-organ CT (TransUNet train_npz + test_vol_h5 + lists), 9 classes")
def _synapse(root, split, transform, **kw):
    from .synapse import SynapseDataset

    return SynapseDataset(root, split=split, transform=transform, **kw)


@register_dataset("nnunet", "nnU-Net v2 raw data set (dataset.json, imagesTr/labelsTr, splits_final.json folds)")
def _nnunet(root, split, transform, **kw):
    from .nnunet import NNUNetDataset

    if int(kw.get("spatial_dims", 2)) == 3:
        return _volumes(root, split, transform, **kw)
    kw.pop("spatial_dims", None)
    return NNUNetDataset(root, split=split, transform=transform, **kw)


@register_dataset("nifti", "NIfTI volumes (.nii/.nii.gz) with label volumes, sliced to 2D, volumes with spacing")
def _nifti(root, split, transform, **kw):
    from .nifti import NiftiDataset

    return NiftiDataset(root, split=split, transform=transform, **kw)


@register_dataset("synthetic-skin", "generated RGB dermoscopy-like lesions, binary (no download)", needs_root=False)
def _syn_skin(root, split, transform, **kw):
    from .synthetic import SyntheticSkin

    return SyntheticSkin(split=split, transform=transform, **kw)


@register_dataset("synthetic-polyp", "generated RGB endoscopy-like images with polyps, binary (no download)",
                  needs_root=False)
def _syn_polyp(root, split, transform, **kw):
    from .synthetic import SyntheticPolyp

    return SyntheticPolyp(split=split, transform=transform, **kw)


@register_dataset("synthetic-cardiac", "generated MRI-like short-axis volumes, 4 classes in ACDC order "
                                       "(no download)", needs_root=False)
def _syn_cardiac(root, split, transform, **kw):
    from .synthetic import SyntheticCardiac

    return SyntheticCardiac(split=split, transform=transform, **kw)


def _volumes(root, split, transform, spatial_dims: int = 3, **kw):
    from .volumetric import VolumetricDataset, volume_slices_dataset

    if int(spatial_dims) == 2:
        keep = ("fold", "splits_file", "ratios", "seed", "channels", "label", "labels", "normalization", "cache_size")
        return volume_slices_dataset(root, split, transform, **{k: v for k, v in kw.items() if k in keep})
    if int(spatial_dims) != 3:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return VolumetricDataset(root, split, transform=transform, **kw)


register_dataset("volumes", "3D volumes as they ship (nnU-Net v2 raw, Decathlon 4-D, BraTS 2020/2023 folders, "
                            "per-case folders with channels=/label=), preprocessed as nnU-Net does")(_volumes)
register_dataset("brats", "BraTS as downloaded (one folder per case, 2013-2020 or 2023 naming), 3D, regions "
                          "WT/TC/ET")(_volumes)
register_dataset("msd", "Medical Segmentation Decathlon task (4-D imagesTr, dataset.json), 3D")(_volumes)


@register_dataset("synthetic-brats", "generated 3D brain MR-like volumes (2-4 channels) with a nested tumour, "
                                     "BraTS labels/regions (no download)", needs_root=False)
def _syn_brats(root, split, transform, **kw):
    from .synthetic3d import SyntheticBraTS

    return SyntheticBraTS(split=split, transform=transform, **kw)


# ----------------------------------------------------------------------------------------------------------------
# the keywords each reader takes (a typo, or a key meant for another reader, is one line before anything is read)
_READERS = {"folder": ("folders", "FolderDataset"), "isic": ("isic", "ISICDataset"),
            "polyp": ("polyp", "build_polyp", "PolypDataset"), "acdc": ("acdc", "ACDCDataset"),
            "synapse": ("synapse", "SynapseDataset"), "nnunet": ("nnunet", "NNUNetDataset"),
            "nifti": ("nifti", "NiftiDataset"), "synthetic-skin": ("synthetic", "SyntheticSkin"),
            "synthetic-polyp": ("synthetic", "SyntheticPolyp"), "synthetic-cardiac": ("synthetic", "SyntheticCardiac"),
            "synthetic-brats": ("synthetic3d", "SyntheticBraTS")}
_NOT_KEYWORDS = ("self", "root", "split", "transform")


class UnknownReaderKeywordError(ValueError):
    """A keyword the data set's reader does not take (``.key``, ``.valid``)."""

    def __init__(self, message: str, key: str, valid):
        super().__init__(message)
        self.key, self.valid = key, list(valid)


def _keywords_of(fn) -> tuple:
    """(named keywords, takes **kwargs) of a function or of a class's ``__init__`` chain."""
    import inspect
    names, open_ended = [], False
    chain = [c.__init__ for c in fn.__mro__ if "__init__" in vars(c)] if inspect.isclass(fn) else [fn]
    for f in chain:
        try:
            params = inspect.signature(f).parameters.values()
        except (TypeError, ValueError):
            return names, True
        open_ended = False
        for p in params:
            if p.kind is p.VAR_KEYWORD:
                open_ended = True
            elif p.kind is not p.VAR_POSITIONAL and p.name not in _NOT_KEYWORDS and p.name not in names:
                names.append(p.name)
        if not open_ended:
            break
    return names, open_ended


# readers whose data set is 3D with ``spatial_dims=3`` (``nnunet``) or by default (``volumes``, ``brats``, ``msd``)
_READERS_3D = {n: ("volumetric", "VolumetricDataset") for n in ("nnunet", "volumes", "brats", "msd")}


def reader_keywords(name: str, spatial_dims: Optional[int] = None) -> Optional[list]:
    """The keywords the reader of data set ``name`` takes (besides root, split, transform) when it builds a data set
    with ``spatial_dims`` axes (None: the reader's default); None if unknown (a reader registered elsewhere, one
    that takes any keyword, or the 2D slices of the volume readers)."""
    import importlib
    dims = spatial_dims if spatial_dims is not None else (3 if name in ("volumes", "brats", "msd") else 2)
    spec = _READERS_3D.get(name) if dims == 3 else _READERS.get(name)
    if spec is None:
        return None
    mod = importlib.import_module(f"{__package__}.{spec[0]}")
    names = ["spatial_dims"] if name in _READERS_3D else []
    for attr in spec[1:]:
        kws, open_ended = _keywords_of(getattr(mod, attr))
        names += [k for k in kws if k not in names]
        if not open_ended:
            return sorted(names)
    return None


def check_reader_kwargs(name: str, kwargs, where: str = "") -> None:
    """``UnknownReaderKeywordError`` naming the keyword, the reader's valid ones and near matches."""
    dims = kwargs.get("spatial_dims")
    valid = reader_keywords(name, None if dims is None else int(dims))
    if valid is None:
        return
    for k in kwargs:
        if k not in valid:
            near = close_matches(str(k), valid, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(repr(n) for n in near)}? " if near else ""
            raise UnknownReaderKeywordError(
                f"{where + ': ' if where else ''}the {name!r} reader takes no keyword {k!r} (a typo, or a key meant "
                f"for another reader?); {hint}Valid keywords: {', '.join(valid)}", k, valid)
