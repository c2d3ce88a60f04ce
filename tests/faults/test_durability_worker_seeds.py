"""Fault: with data-loader workers (persistent, as the data module makes them) a worker's augmentation stream
depended on how long the worker had lived, so a resumed run (fresh workers) augmented differently. Now each
sample is augmented from (seed, epoch, index) wherever it is loaded."""

import pytest
import torch

from mambaseg.engine.datamodule import SegDataModule


def _dm(workers):
    dm = SegDataModule("synthetic-skin", dataset_kwargs={"size": 32, "num_samples": 6}, image_size=32,
                       transforms="default", batch_size=3, num_workers=workers, val_fraction=0.0, test_split=None,
                       seed=5)
    dm.setup("fit")
    return dm


def _epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [b["image"].clone() for b in loader]


@pytest.mark.slow
def test_durability_worker_seeds_resumed_epoch_equals_uninterrupted():
    long_lived = _dm(2).train_dataloader()
    _epoch(long_lived, 0)
    after_epoch0 = _epoch(long_lived, 1)          # workers that already served epoch 0
    fresh = _epoch(_dm(2).train_dataloader(), 1)  # a resumed run: new workers start at epoch 1
    main_process = _epoch(_dm(0).train_dataloader(), 1)
    for a, b, c in zip(after_epoch0, fresh, main_process):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(_epoch(_dm(0).train_dataloader(), 0)[0], main_process[0])  # epochs do differ
