"""Every shipped config loads: parsed by the CLI, its model built at the paper size, and its data module run
against a tiny fixture of the data layout it expects (a few files); plus the recipe numbers of the spec."""

import os

import numpy as np
import pytest
import yaml

from mambaseg.engine.run import MambaSegCLI
from mambaseg.engine.configs import config_dir, list_configs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_CONFIGS = ["vmunet_isic17", "vmunet_isic18", "vmunet_synapse", "vmunet_v2_isic17", "vmunet_v2_isic18",
                 "vmunet_v2_polyp", "mamba_unet_acdc", "hmt_unet_isic17", "hmt_unet_isic18", "hmt_unet_polyp"]
# issue 16 (VMamba v2 family): their recipes differ from the VM-UNet family's, checked in their own test
VSS2_CONFIGS = ["msvm_unet_synapse", "msvm_unet_acdc", "h_vmunet_isic17", "swin_umamba_endovis17"]


def _png(path, arr):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _pairs(folder, n, rng, h=30, w=40):
    for i in range(n):
        _png(folder / "images" / f"ISIC_{i:07d}.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        m = np.zeros((h, w), np.uint8)
        m[5:20, 8:25] = 255
        _png(folder / "masks" / f"ISIC_{i:07d}_segmentation.png", m)


def make_isic(root):
    rng = np.random.default_rng(0)
    _pairs(root / "train", 10, rng)
    _pairs(root / "val", 3, rng)


def make_polyp(root):
    rng = np.random.default_rng(1)
    _pairs(root / "TrainDataset", 10, rng)
    for name in ("Kvasir", "CVC-300"):
        _pairs(root / "TestDataset" / name, 2, rng)


def _h5(path, image, label):
    import h5py
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["image"], f["label"] = image, label


def _volume(rng, d, h, w, k):
    img = rng.random((d, h, w)).astype(np.float32)
    lab = np.zeros((d, h, w), np.uint8)
    for c in range(1, k):
        lab[:, 4 * c:4 * c + 3, 5:15] = c
    return img, lab


def make_acdc(root):
    rng = np.random.default_rng(2)
    names = {"train": ["patient001_frame01", "patient002_frame01"], "val": ["patient003_frame01"],
             "test": ["patient004_frame01", "patient005_frame01"]}
    slices = []
    for case in sum(names.values(), []):
        img, lab = _volume(rng, 3, 24, 20, 4)
        _h5(root / "data" / f"{case}.h5", img, lab)
        if case in names["train"]:
            for k in range(3):
                _h5(root / "data" / "slices" / f"{case}_slice_{k}.h5", img[k], lab[k])
                slices.append(f"{case}_slice_{k}")
    (root / "train_slices.list").write_text("\n".join(slices) + "\n")
    (root / "val.list").write_text("\n".join(names["val"]) + "\n")
    (root / "test.list").write_text("\n".join(names["test"]) + "\n")


def make_synapse(root):
    rng = np.random.default_rng(3)
    (root / "train_npz").mkdir(parents=True)
    train = []
    for case in ("case0005", "case0006"):
        img, lab = _volume(rng, 3, 24, 20, 9)
        for k in range(3):
            np.savez(root / "train_npz" / f"{case}_slice{k:03d}.npz", image=img[k], label=lab[k])
            train.append(f"{case}_slice{k:03d}")
    for case in ("case0001", "case0002"):
        img, lab = _volume(rng, 4, 24, 20, 9)
        _h5(root / "test_vol_h5" / f"{case}.npy.h5", img, lab)
    lists = root / "lists" / "lists_Synapse"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(train) + "\n")
    (lists / "test_vol.txt").write_text("case0001\ncase0002\n")


def make_nnunet(root):
    import json
    rng = np.random.default_rng(4)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "R", "1": "G", "2": "B"},
                                                   "labels": {"background": 0, "a": 1, "b": 2},
                                                   "numTraining": 10, "file_ending": ".png"}))
    for split, n in (("Tr", 10), ("Ts", 2)):
        for i in range(n):
            _png(root / f"images{split}" / f"case{split}{i:03d}_0000.png", rng.integers(0, 255, (30, 40, 3), np.uint8))
            lab = np.zeros((30, 40), np.uint8)
            lab[5:15, 5:20], lab[18:25, 10:30] = 1, 2
            _png(root / f"labels{split}" / f"case{split}{i:03d}.png", lab)


LAYOUTS = {"isic": make_isic, "polyp": make_polyp, "acdc": make_acdc, "synapse": make_synapse,
           "nnunet": make_nnunet}


def test_shipped_configs_are_the_top_level_configs():
    shipped = set(list_configs())
    assert set(PAPER_CONFIGS) | set(VSS2_CONFIGS) | {"demo"} <= shipped
    top = os.path.join(REPO, "configs")
    for name in shipped:
        a, b = os.path.join(top, name + ".yaml"), os.path.join(config_dir(), name + ".yaml")
        assert os.path.isfile(a), f"configs/{name}.yaml missing"
        assert open(a).read() == open(b).read()


@pytest.mark.parametrize("name", PAPER_CONFIGS + VSS2_CONFIGS)
def test_config_loads_against_a_fixture_of_its_layout(name, tmp_path):
    path = os.path.join(config_dir(), name + ".yaml")
    text = open(path).read()
    assert text.startswith("# ") and "Deviations:" in text  # says what it reproduces and where it deviates
    raw = yaml.safe_load(text)
    dataset = raw["data"]["dataset"]
    root = tmp_path / dataset
    root.mkdir()
    LAYOUTS[dataset](root)
    cli = MambaSegCLI(args=["--config", path, "--data.root", str(root), "--data.num_workers", "0",
                            "--data.batch_size", "2", "--data.eval_batch_size", "2", "--trainer.accelerator", "cpu",
                            "--run_dir", str(tmp_path / "run")], run=False)
    m, dm = cli.model, cli.datamodule
    assert m.hparams.model == raw["model"]["model"]
    assert type(m.net).__name__.lower().replace("_", "").startswith(raw["model"]["model"].split("_")[0].replace("_", ""))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    size = raw["data"]["image_size"]
    assert batch["image"].shape[-2:] == (size, size) and batch["image"].shape[1] == m.hparams.in_channels
    assert int(batch["mask"].max()) < m.hparams.num_classes
    dm.setup("test")
    tb = next(iter(dm.test_dataloader()))
    if raw["model"]["aggregation"] == "per_volume":
        assert tb["image"].dim() == 5 and tb["mask"].shape[-2:] == (24, 20)  # slices resized, labels original
    else:
        assert tb["image"].shape[-2:] == (size, size)


def test_recipe_numbers_match_the_papers():
    cfg = {n: yaml.safe_load(open(os.path.join(config_dir(), n + ".yaml"))) for n in PAPER_CONFIGS}
    for n in PAPER_CONFIGS:
        m, d = cfg[n]["model"], cfg[n]["data"]
        if n == "mamba_unet_acdc":
            assert (m["optimizer"], m["lr"], m["momentum"], m["weight_decay"]) == ("sgd", 0.01, 0.9, 1e-4)
            assert (m["scheduler"], m["poly_power"], m["max_iters"]) == ("poly", 0.9, 10000)
            assert cfg[n]["trainer"]["max_steps"] == 10000 and d["batch_size"] == 24 and d["image_size"] == 224
        else:
            assert (m["optimizer"], m["lr"], m["weight_decay"], m["scheduler"]) == ("adamw", 0.001, 0.01, "cosine")
            assert m["t_max"] == (100 if n == "vmunet_synapse" else 50) and m["eta_min"] == 1e-5
            assert cfg[n]["trainer"]["max_epochs"] == 300
        if "isic" in n or "polyp" in n:
            assert m["threshold"] == 0.5 and m["aggregation"] == "pooled" and d["image_size"] == 256
        assert m["select_on"] == "val_dice" and not d.get("upstream_select_on_test_split", False)


def test_vss2_recipe_numbers_match_the_spec():
    cfg = {n: yaml.safe_load(open(os.path.join(config_dir(), n + ".yaml"))) for n in VSS2_CONFIGS}
    for n in ("msvm_unet_synapse", "msvm_unet_acdc"):                  # upstream_vss_models.md 4.6
        m, d = cfg[n]["model"], cfg[n]["data"]
        assert (m["optimizer"], m["lr"], m["scheduler"], m["t_max"], m["eta_min"]) == ("adamw", 5e-4, "cosine", 300,
                                                                                     1e-6)
        assert m["weight_decay"] == (1e-3 if n.endswith("synapse") else 1e-4)
        assert (m["loss"], m["loss_kwargs"]["w_ce"], m["loss_kwargs"]["w_dice"]) == ("ce_dice", 0.4, 0.6)
        assert cfg[n]["trainer"]["max_epochs"] == 300 and d["batch_size"] == 32 and d["image_size"] == 224
    m, d = cfg["h_vmunet_isic17"]["model"], cfg["h_vmunet_isic17"]["data"]   # 3.6
    assert (m["optimizer"], m["lr"], m["weight_decay"], m["t_max"], m["eta_min"]) == ("adamw", 1e-3, 1e-2, 50, 1e-5)
    assert cfg["h_vmunet_isic17"]["trainer"]["max_epochs"] == 250 and d["batch_size"] == 8 and d["image_size"] == 256
    m, t = cfg["swin_umamba_endovis17"]["model"], cfg["swin_umamba_endovis17"]["trainer"]   # 1.6
    assert (m["optimizer"], m["lr"], m["weight_decay"], m["t_max"], m["eta_min"]) == ("adamw", 1e-4, 0.05, 1000, 1e-6)
    assert (t["max_epochs"], t["limit_train_batches"], t["gradient_clip_val"]) == (1000, 250, 12)
