"""The recipes of the Mamba-1 networks (U-Mamba Bot/Enc, LKM-UNet, LightM-UNet, UltraLight VM-UNet): each config
states its paper and deviations, carries the spec's recipe numbers (upstream_mamba1_models.md §2.3, §5, §6), and
loads through the CLI against a tiny fixture of its data layout (nnU-Net raw / ISIC)."""

import json
import os

import numpy as np
import pytest
import yaml

from mambaseg.engine.run import MambaSegCLI
from mambaseg.engine.configs import config_dir, list_configs

NNUNET_CONFIGS = ["umamba_bot_nnunet2d", "umamba_enc_nnunet2d", "lkm_unet_nnunet2d"]
CONFIGS = NNUNET_CONFIGS + ["lightm_unet_lungxray", "ultralight_vm_unet_isic17", "ultralight_vm_unet_isic18"]


def _load(name):
    text = open(os.path.join(config_dir(), name + ".yaml")).read()
    return text, yaml.safe_load(text)


def _png(path, arr):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_nnunet_2d(root, n=6, labels=3, size=20):
    rng = np.random.default_rng(0)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, **{f"c{i}": i for i in range(1, labels)}},
        "numTraining": n, "file_ending": ".png"}))
    for i in range(n):
        _png(root / "imagesTr" / f"case_{i:03d}_0000.png", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        lab = np.zeros((size, size), np.uint8)
        for c in range(1, labels):
            lab[3 * c:3 * c + 3, 4:12] = c
        _png(root / "labelsTr" / f"case_{i:03d}.png", lab)


def make_isic(root):
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 3)):
        for i in range(n):
            _png(root / split / "images" / f"ISIC_{i:07d}.png", rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
            m = np.zeros((30, 40), np.uint8)
            m[5:20, 8:25] = 255
            _png(root / split / "masks" / f"ISIC_{i:07d}_segmentation.png", m)


def test_configs_are_shipped_and_state_paper_and_deviations():
    assert set(CONFIGS) <= set(list_configs())
    for name in CONFIGS:
        text, raw = _load(name)
        assert text.startswith("# ") and "Deviations:" in text and "arXiv:" in text
        assert raw["model"]["model"] in name


def test_recipe_numbers_match_the_spec():
    for name in NNUNET_CONFIGS:                             # nnU-Net 2.1.1 trainer defaults (spec §2.3)
        _, c = _load(name)
        m, t, d = c["model"], c["trainer"], c["data"]
        assert (m["optimizer"], m["lr"], m["momentum"], m["weight_decay"]) == ("sgd", 0.01, 0.99, 3e-5)
        assert (m["scheduler"], m["poly_power"], m["max_iters"]) == ("poly", 0.9, 1000 * 250)
        assert (t["max_epochs"], t["limit_train_batches"], t["limit_val_batches"]) == (1000, 250, 50)
        assert t["gradient_clip_val"] == 12 and m["loss_kwargs"]["w_ce"] == m["loss_kwargs"]["w_dice"] == 1.0
        assert m["model_kwargs"]["patch_size"] == d["image_size"] == 256 and d["dataset"] == "nnunet"
        assert m["model_kwargs"]["deep_supervision"] == "train"
    _, c = _load("lightm_unet_lungxray")                    # spec §5
    m, t = c["model"], c["trainer"]
    assert (m["optimizer"], m["lr"], m["weight_decay"], m["scheduler"]) == ("adam", 1e-4, 1e-5, "poly")
    assert (t["max_epochs"], t["limit_train_batches"], m["max_iters"], t["gradient_clip_val"]) == (100, 250, 25000, 12)
    assert "deep_supervision" not in m["model_kwargs"]
    for name in ("ultralight_vm_unet_isic17", "ultralight_vm_unet_isic18"):   # spec §6
        _, c = _load(name)
        m, t, d = c["model"], c["trainer"], c["data"]
        assert (m["optimizer"], m["lr"], m["weight_decay"], m["scheduler"]) == ("adamw", 1e-3, 1e-2, "cosine")
        assert (m["t_max"], m["eta_min"], t["max_epochs"], d["batch_size"], c["seed_everything"]) == (50, 1e-5, 250, 8, 42)
        assert m["model_kwargs"] == {"c_list": [8, 16, 24, 32, 48, 64], "split_att": "fc", "bridge": True}
        assert d["image_size"] == 256 and m["threshold"] == 0.5


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_against_a_fixture(name, tmp_path):
    _, raw = _load(name)
    root = tmp_path / "data"
    root.mkdir()
    if raw["data"]["dataset"] == "nnunet":
        make_nnunet_2d(root, labels=2 if "lightm" in name else 3)
    else:
        make_isic(root)
    args = ["--config", os.path.join(config_dir(), name + ".yaml"), "--data.root", str(root),
            "--data.num_workers", "0", "--data.batch_size", "2", "--data.eval_batch_size", "2",
            "--trainer.accelerator", "cpu", "--run_dir", str(tmp_path / "run")]
    if name in NNUNET_CONFIGS:   # same plan (256, 7 stages), tiny widths: the 47-81 M-parameter builds are slow
        kw = dict(raw["model"]["model_kwargs"], features_per_stage=[4, 8, 8, 8, 8, 8, 8])
        args += ["--model.model_kwargs", json.dumps(kw)]
    cli = MambaSegCLI(args=args, run=False)
    m, dm = cli.model, cli.datamodule
    assert type(m.net).__name__.lower().startswith(raw["model"]["model"].split("_")[0])
    assert m.net.in_channels == 3
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 256, 256)
    assert int(batch["mask"].max()) < m.hparams.num_classes


def test_engine_weights_deep_supervision_like_nnunet():
    """A training step of a net with deep_supervision="train" gets nnU-Net's weighted loss over the list (targets
    downsampled); validation sees one output."""
    import torch
    from mambaseg.engine.module import SegmentationModule
    from mambaseg.models.blocks.nnunet_blocks import deep_supervision_weights

    assert [round(w, 4) for w in deep_supervision_weights(6)] == [0.5161, 0.2581, 0.129, 0.0645, 0.0323, 0.0]
    torch.manual_seed(0)
    mod = SegmentationModule(model="umamba_bot", num_classes=3, image_size=32, optimizer="sgd", scheduler="none",
                             model_kwargs=dict(patch_size=32, features_per_stage=[4, 8, 8], strides=[1, 2, 2],
                                               deep_supervision="train"))
    x = torch.randn(2, 3, 32, 32)
    mask = torch.randint(0, 3, (2, 32, 32))
    outs = mod.net.train()(x)
    assert isinstance(outs, list) and [o.shape[-1] for o in outs] == [32, 16]
    w = deep_supervision_weights(2)
    small = torch.nn.functional.interpolate(mask[:, None].float(), size=(16, 16), mode="nearest")[:, 0].long()
    expect = w[0] * mod.loss_fn(outs[0], mask) + w[1] * mod.loss_fn(outs[1], small)
    torch.testing.assert_close(mod._loss(outs, mask), expect)
    assert isinstance(mod.net.eval()(x), torch.Tensor)
    assert not any("_ds" in k for k in mod.state_dict())
