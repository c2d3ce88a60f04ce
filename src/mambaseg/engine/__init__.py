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

from .datamodule import EpochSeededSampler, SegDataModule, collate_cases
from .errors import CheckpointMismatchError, MambasegUserError, RunDirExistsError
from .inference import logits_to_labels, predict_logits_2d, predict_volume
from .module import SELECT_ON, SegmentationModule, check_checkpoint_compatible
from .sliding_window import logits_to_segmentation, sliding_window_logits
from .volume_io import write_label_nifti
from .report import EIGHT_METRICS, RunRecord, format_metrics_table, write_evaluation, write_report

__all__ = ["SegmentationModule", "SegDataModule", "EpochSeededSampler", "collate_cases", "SELECT_ON",
           "check_checkpoint_compatible", "logits_to_labels", "predict_logits_2d", "predict_volume",
           "RunRecord", "EIGHT_METRICS", "format_metrics_table", "write_evaluation", "write_report",
           "MambasegUserError", "RunDirExistsError", "CheckpointMismatchError", "sliding_window_logits",
           "logits_to_segmentation", "write_label_nifti"]
