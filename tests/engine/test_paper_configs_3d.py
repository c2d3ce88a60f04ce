"""Every shipped 3-D config (a config whose model is a 3-D network): its header names the paper and its deviations;
it is parsed and its model and data module are built as ``fit`` builds them (``engine.run.build``) against a tiny
fixture of the layout it expects (BraTS 2020 / 2023 folders, nnU-Net raw CT / MR), at a tiny size; the model takes
the data's channels and returns the configured outputs on a patch. The paper-protocol configs of the Mamba networks
build, at their configured size, a network with the parameter count measured from upstream (spec
upstream_3d_models.md 8), and state their paper's recipe numbers (spec 1.7, 3.4, 4, 5.2, 6)."""
import os
import re
import sys

import pytest
import torch
import yaml

from mambaseg.engine.configs import config_dir, list_configs
from mambaseg.engine.run import build
from mambaseg.models.blocks.nnunet_blocks import NNUNET_3D_PLANS
from mambaseg.models.registry import create_model, model_info

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data"))
import _volume_fixtures as fx  # noqa: E402

# the fixture of each 3-D config's data layout (a new 3-D config must be added here: see the first test)
FIXTURES = {
    "nnunet_3d_brats": lambda r: fx.brats2020(r, n=3),
    "nnunet_3d_abdomen_ct": lambda r: fx.nnunet_raw(r, n=3, channels=("CT",)),
    "nnunet_3d_abdomen_mr": lambda r: fx.nnunet_raw(r, n=3, channels=("MR",)),
    "segmamba_brats23": lambda r: fx.brats2023(r, n=3),
    "segmamba_v2_brats23": lambda r: fx.brats2023(r, n=3),
    "nnmamba_brats23": lambda r: fx.brats2023(r, n=3),
    "umamba_bot_3d_abdomen_ct": lambda r: fx.nnunet_raw(r, n=3, channels=("CT",)),
    "umamba_enc_3d_abdomen_ct": lambda r: fx.nnunet_raw(r, n=3, channels=("CT",)),
    "umamba_bot_3d_abdomen_mr": lambda r: fx.nnunet_raw(r, n=3, channels=("MR",)),
    "umamba_enc_3d_abdomen_mr": lambda r: fx.nnunet_raw(r, n=3, channels=("MR",)),
    "lkm_unet_3d_abdomen_ct": lambda r: fx.nnunet_raw(r, n=3, channels=("CT",)),
    "lightm_unet_3d_lits": lambda r: fx.nnunet_raw(r, n=3, channels=("CT",)),
    "demo_3d": None,  # synthetic-brats: generated, no files
}
# tiny networks (same classes) so that every build takes well under a second
_PLANNED = {"features_per_stage": [4, 8, 16], "deep_supervision": "train"}
TINY = {
    "segmamba": ([32, 32, 32], {"depths": [1, 1, 1, 1], "feat_size": [48, 16, 16, 16], "hidden_size": 16}),
    "segmamba_v2": ([32, 32, 32], {"depths": [1, 1, 1, 1], "feat_size": [48, 16, 16, 16], "hidden_size": 16}),
    "nnmamba_ds": ([16, 16, 16], {"channels": 32, "blocks": 2, "deep_supervision": "train"}),
    "lightm_unet_3d": ([16, 16, 16], {"init_filters": 8}),
    "nnunet_3d": ([16, 16, 8], _PLANNED), "umamba_bot_3d": ([16, 16, 8], _PLANNED),
    "umamba_enc_3d": ([16, 16, 8], _PLANNED), "lkm_unet_3d": ([16, 16, 8], _PLANNED),
}


def _configs_3d():
    out = []
    for name in list_configs():
        raw = yaml.safe_load(open(os.path.join(config_dir(), name + ".yaml")))
        if model_info(raw["model"]["model"]).spatial_dims == 3:
            out.append(name)
    return sorted(out)


def _raw(name):
    text = open(os.path.join(config_dir(), name + ".yaml")).read()
    return text, yaml.safe_load(text)


def test_every_3d_config_has_a_fixture():
    assert set(_configs_3d()) == set(FIXTURES)


@pytest.mark.parametrize("name", sorted(n for n, f in FIXTURES.items() if f is not None))
def test_3d_config_builds_as_fit_does_on_a_fixture(name, tmp_path):
    text, raw = _raw(name)
    header = text[:text.index("\nseed_everything")]
    assert text.startswith("# ") and "Deviations:" in header
    paper = model_info(raw["model"]["model"]).paper
    arxiv = re.search(r"\d{4}\.\d{4,5}", paper)
    assert (arxiv.group(0) if arxiv else paper.split(" (")[0]) in header  # names the network's paper
    root = tmp_path / "data"
    root.mkdir()
    FIXTURES[name](root)
    patch, kwargs = TINY[raw["model"]["model"]]
    over = {"data.root": str(root), "data.num_workers": 0, "trainer.accelerator": "cpu",
            "data.dataset_kwargs": dict(raw["data"].get("dataset_kwargs") or {}, cache_dir=str(tmp_path / "cache")),
            "data.image_size": patch, "model.model_kwargs": dict(kwargs, **({"patch_size": patch}
                                                                          if "patch_size" in
                                                                          raw["model"]["model_kwargs"] else {}))}
    if isinstance(raw["model"].get("nsd_tolerance"), list) and len(raw["model"]["nsd_tolerance"]) == 13:
        over["model.nsd_tolerance"] = 2.0  # the fixture has 3 foreground classes, not 13 organs
    cli = build(name, over, trainer=False)
    m, dm = cli.model, cli.datamodule
    assert m.spatial_dims == 3 and dm.spatial_dims == 3 and m.net.spatial_dims == 3
    assert m.hparams.model == raw["model"]["model"] and list(m.sliding_window.patch_size) == patch
    assert m.loss_name == raw["model"]["loss"]
    assert m.sliding_window.mirror == raw["model"]["sw_mirror"]
    sample = dm.build(raw["data"]["train_split"], train=False)[0]
    assert sample["image"].shape[0] == m.hparams.in_channels == m.net.in_channels
    assert m.hparams.num_classes == 4  # the fixtures' 3 labels + background
    region = raw["data"].get("region_based", True) and raw["data"]["dataset"] == "brats"
    assert m.out_channels == (3 if region else 4) and (dm.regions is not None) == bool(region)
    if raw["data"]["dataset"] == "brats" and not region:  # label-trained, scored on the regions BraTS declares
        assert m.hparams.eval_regions is True and dm.declared_regions == [[1, 2, 3], [1, 3], [3]]
        m._resolve_eval_regions(dm)
        assert m._scored() == dm.declared_regions and m._new_metrics(True).class_names == ["WT", "TC", "ET"]
    m.net.eval()
    with torch.no_grad():
        y = m.net(torch.zeros(1, m.hparams.in_channels, *patch))
    assert tuple(y.shape) == (1, m.out_channels, *patch)
    # a training step's loss as configured (deep-supervision lists included) on a mask with classes 0..3 and the
    # -1 "outside the crop" voxels of training patches: finite, and it back-propagates
    m.net.train()
    g = torch.Generator().manual_seed(0)
    b = 2 if raw["model"]["model"].startswith("nnmamba") else 1  # BatchNorm at a 1^3 bottleneck needs 2 samples
    mask = torch.randint(-1, 4, (b, *patch), generator=g)
    out = m.net(torch.randn(b, m.hparams.in_channels, *patch, generator=g))
    if raw["model"]["model_kwargs"].get("deep_supervision") == "train":
        assert isinstance(out, (list, tuple)) and len(out) > 1
    loss = m._loss(out, mask)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0


# (in -> out channels as the config's data gives them, parameters measured from upstream: spec 8)
PAPER_COUNTS = {"segmamba_brats23": (4, 4, 67_416_196), "segmamba_v2_brats23": (4, 4, 138_776_824),
                "nnmamba_brats23": (4, 4, 15_859_266),
                "umamba_bot_3d_abdomen_ct": (1, 14, 41_945_158), "umamba_bot_3d_abdomen_mr": (1, 14, 41_945_158),
                "umamba_enc_3d_abdomen_ct": (1, 14, 42_842_798), "umamba_enc_3d_abdomen_mr": (1, 14, 42_842_798),
                "lkm_unet_3d_abdomen_ct": (1, 14, 63_782_246), "lightm_unet_3d_lits": (1, 3, 5_015_766)}


def _full_net(name, cin, cout):
    raw = _raw(name)[1]
    with torch.device("meta"):  # the paper-size network without allocating its weights
        return create_model(raw["model"]["model"], in_channels=cin, num_classes=cout, **raw["model"]["model_kwargs"])


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_paper_config_builds_the_upstream_sized_network(name):
    cin, cout, count = PAPER_COUNTS[name]
    assert sum(p.numel() for p in _full_net(name, cin, cout).parameters()) == count


def _transposed(plan):
    """An nnU-Net (z, y, x) plan in our (i, j, k) order."""
    return ([list(reversed(k)) for k in plan["kernel_sizes"]], [list(reversed(s)) for s in plan["strides"]])


@pytest.mark.parametrize("name", ["umamba_bot_3d_abdomen_ct", "umamba_enc_3d_abdomen_ct", "umamba_bot_3d_abdomen_mr",
                                  "umamba_enc_3d_abdomen_mr", "lkm_unet_3d_abdomen_ct"])
def test_abd40_plan_is_given_in_ijk_order(name):
    mk, d = _raw(name)[1]["model"]["model_kwargs"], _raw(name)[1]["data"]
    kernels, strides = _transposed(NNUNET_3D_PLANS["abd40"])
    assert mk["kernel_sizes"] == kernels and mk["strides"] == strides
    assert mk["patch_size"] == d["image_size"]
    if name.startswith("umamba"):
        assert d["image_size"] == list(reversed(NNUNET_3D_PLANS["abd40"]["patch_size"]))  # [192, 224, 40]
    if name.endswith("_ct"):
        assert d["dataset_kwargs"]["target_spacing"] == [0.8027, 0.8027, 2.5]  # (z, y, x) 2.5 x 0.8027 x 0.8027


def test_lkm_config_keeps_upstream_pixel_window_grouping():
    """At the configured patch, LKM's (5p, 7p, 6p) windows divide every stage (none is a global scan), with
    upstream's sequence counts x lengths at 40 x 224 x 192 (spec 6: 13440x128, 13440x32, 1680x32, 1680x4, 210x4,
    210x1)."""
    from mambaseg.models.networks.lkm_unet import pixel_windows
    net = _full_net("lkm_unet_3d_abdomen_ct", 1, 14)
    got = []
    for size, layer in zip(net.plan.feature_map_sizes, net.encoder.mamba_layers):
        win = pixel_windows(layer.p, 3)
        assert all(s % w == 0 for s, w in zip(size, win)), (size, win)
        groups = win[0] * win[1] * win[2]
        got.append((groups, size[0] * size[1] * size[2] // groups))
    assert got == [(13440, 128), (13440, 32), (1680, 32), (1680, 4), (210, 4), (210, 1)]


@pytest.mark.parametrize("name", ["segmamba_brats23", "segmamba_v2_brats23"])
def test_segmamba_reads_channels_in_its_order_and_scores_as_segmamba(name, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    fx.brats2023(root, n=10)
    raw = _raw(name)[1]
    cli = build(name, {"data.root": str(root), "data.num_workers": 0, "trainer.accelerator": "cpu",
                       "data.dataset_kwargs": dict(raw["data"]["dataset_kwargs"], cache_dir=str(tmp_path / "cache")),
                       "data.image_size": [32, 32, 32], "model.model_kwargs": TINY[raw["model"]["model"]][1]}, trainer=False)
    dm = cli.datamodule
    ds = dm.build("train", train=False)
    assert [f.name.split("-")[-1] for f in ds.cases[0].images] == ["t2w.nii.gz", "t2f.nii.gz", "t1n.nii.gz",
                                                                    "t1c.nii.gz"]
    sizes = [len(dm.build(s, train=False)) for s in ("train", "val", "test")]
    assert sizes == [7, 1, 2]  # the 0.7 / 0.1 / 0.2 ratio split of 10 cases
    m = cli.model.hparams
    assert (m.empty_policy, m.hd95_mode, m.sw_mode, m.sw_batch_size, m.sw_mirror) == ("segmamba", "medpy", "monai",
                                                                                         2, True)


# the papers' recipes (spec 1.7 SegMamba, 5.2 nnMamba, 3.4 U-Mamba / 6 LKM-UNet, 4 LightM-UNet):
# optimiser, lr, weight decay, epochs x iterations, batch, patch (i, j, k), loss, mirroring at test time
RECIPES = {
    "segmamba_brats23": ("sgd", 1e-2, 3e-5, 1000, 250, 2, [128, 128, 128], "nnunet_dc_ce", True),
    "segmamba_v2_brats23": ("sgd", 1e-2, 3e-5, 1000, 250, 2, [128, 128, 128], "nnunet_dc_ce", True),
    "nnmamba_brats23": ("sgd", 1e-4, 3e-5, 1000, 250, 2, [128, 128, 128], "nnunet_dc_ce", True),
    "umamba_bot_3d_abdomen_ct": ("sgd", 1e-2, 3e-5, 1000, 250, 2, [192, 224, 40], "nnunet_dc_ce", False),
    "umamba_enc_3d_abdomen_ct": ("sgd", 1e-2, 3e-5, 1000, 250, 2, [192, 224, 40], "nnunet_dc_ce", False),
    "umamba_bot_3d_abdomen_mr": ("sgd", 1e-2, 3e-5, 1000, 250, 2, [192, 224, 40], "nnunet_dc_ce", False),
    "umamba_enc_3d_abdomen_mr": ("sgd", 1e-2, 3e-5, 1000, 250, 2, [192, 224, 40], "nnunet_dc_ce", False),
    "lkm_unet_3d_abdomen_ct": ("sgd", 1e-2, 3e-5, 1000, 250, 2, [160, 224, 48], "nnunet_dc_ce", False),
    "lightm_unet_3d_lits": ("adam", 1e-4, 1e-5, 100, 250, 2, [128, 128, 128], "nnunet_dc_ce", False),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_paper_recipe_numbers(name):
    opt, lr, wd, epochs, iters, batch, patch, loss, mirror = RECIPES[name]
    raw = _raw(name)[1]
    mk, d, tr = raw["model"], raw["data"], raw["trainer"]
    assert (mk["optimizer"], mk["lr"], mk["weight_decay"], mk["loss"], mk["sw_mirror"]) == (opt, lr, wd, loss, mirror)
    assert (tr["max_epochs"], d["iterations_per_epoch"], d["batch_size"], d["image_size"]) == (epochs, iters, batch,
                                                                                               patch)
    assert (mk["scheduler"], mk["poly_power"], mk["max_iters"]) == ("poly", 0.9, epochs * iters)
    assert tr["gradient_clip_val"] == 12 and mk["sw_overlap"] == 0.5 and d["oversample_foreground"] == 0.33
    if opt == "sgd":
        assert mk["momentum"] == 0.99
    brats = d["dataset"] == "brats"
    assert d.get("region_based", True) is not brats  # SegMamba and nnMamba train softmax classes, not regions
    assert mk.get("eval_regions", "auto") is (True if brats else "auto")  # ... and report WT / TC / ET
    if name.startswith("segmamba"):  # plain CE: the Dice term off; whole-crop z-score; 1 mm
        assert mk["loss_kwargs"] == {"w_ce": 1.0, "w_dice": 0.0}
        assert d["dataset_kwargs"]["use_mask_for_norm"] is False and d["dataset_kwargs"]["ratios"] == [0.7, 0.1, 0.2]
    elif name == "nnmamba_brats23":
        assert mk["loss_kwargs"]["batch_dice"] is True and mk["model_kwargs"]["deep_supervision"] == "train"
    elif name == "lightm_unet_3d_lits":  # no deep supervision (a NoDeepSupervision trainer)
        assert "deep_supervision" not in mk["model_kwargs"]
    else:
        assert mk["empty_policy"] == "umamba" and len(mk["nsd_tolerance"]) == 13


def test_top_level_symlinks_exist_for_the_new_configs():
    top = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
    for name in PAPER_COUNTS:
        path = os.path.join(top, name + ".yaml")
        assert os.path.islink(path) and open(path).read() == open(os.path.join(config_dir(), name + ".yaml")).read()

