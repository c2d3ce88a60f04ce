"""Training / evaluation engine on Lightning: ``SegmentationModule`` (any registry model + loss + metrics + the
papers' optimiser recipes), ``SegDataModule`` (any ``mambaseg.data`` reader, incl. the synthetic sets, with
per-volume evaluation), run directories, reports and prediction.

Python use (the same path as ``mambaseg fit``)::

    import lightning.pytorch as pl
    from mambaseg.engine import SegDataModule, SegmentationModule

    dm = SegDataModule("synthetic-skin", dataset_kwargs={"size": 64}, image_size=64, val_split="val")
    model = SegmentationModule("vmunet", model_kwargs={"embed_dim": 32}, num_classes=dm.num_classes,
                               in_channels=dm.in_channels, image_size=64)
    pl.Trainer(max_epochs=5).fit(model, dm)

3-D (a model with ``spatial_dims = 3``; patches for training, sliding window on whole volumes)::

    dm = SegDataModule("synthetic-brats", dataset_kwargs={"size": 32, "label_mode": "regions"},
                       image_size=[32, 32, 32], batch_size=2, iterations_per_epoch=20, val_split="val")
    model = SegmentationModule("nnunet_3d", model_kwargs={"patch_size": [32, 32, 32]}, num_classes=dm.num_classes,
                               in_channels=dm.in_channels, image_size=[32, 32, 32], regions=dm.regions,
                               region_names=dm.region_names)
    logits = sliding_window_logits(model.net.eval(), volume, (32, 32, 32), overlap=0.5)   # (K, I, J, K)
"""

import importlib

# name -> submodule; imported on first use, so that `import mambaseg.engine.configs` (config lookup for
# `mambaseg configs`) does not pay for torch and Lightning
_EXPORTS = {
    "SegDataModule": "datamodule", "EpochSeededSampler": "datamodule", "collate_cases": "datamodule",
    "MambasegUserError": "errors", "RunDirExistsError": "errors", "CheckpointMismatchError": "errors",
    "logits_to_labels": "inference", "predict_logits_2d": "inference", "predict_volume": "inference",
    "SegmentationModule": "module", "SELECT_ON": "module", "check_checkpoint_compatible": "module",
    "RunRecord": "report", "EIGHT_METRICS": "report", "format_metrics_table": "report",
    "write_evaluation": "report", "write_report": "report",
    "sliding_window_logits": "sliding_window", "logits_to_segmentation": "sliding_window",
    "write_label_nifti": "volume_io",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
