"""The five Mamba-1 networks (U-Mamba Bot/Enc, LightM-UNet, UltraLight VM-UNet, LKM-UNet) against the spec
(``upstream_mamba1_models.md``, measured from the upstream classes): parameter counts for every configuration of
§8, state_dict keys and shapes of ``spec/keys/*`` (loaded strictly), forward shapes at 256 (meta device, the
spec's shapes) and at a small size, deep supervision on/off, the encoder-backbone API, bf16 autocast steps,
a training step lowering the loss, and the quirks each docstring names."""

import os

import pytest
import torch
import torch.nn.functional as F

import mambaseg.models.blocks.mamba1 as mamba1_mod
from mambaseg.models import create_model, list_models, model_info
from mambaseg.models.blocks.nnunet_blocks import BasicBlockD

SPEC = os.environ.get("MAMBASEG_SPEC_DIR", "/work/shared/spec")
NETS = ["umamba_bot", "umamba_enc", "lightm_unet", "ultralight_vm_unet", "lkm_unet"]
NNUNET = ["umamba_bot", "umamba_enc", "lkm_unet"]

# spec §8: (in=1,K=1), (1,2), (1,4), (3,1), (3,2), (3,4)
COUNTS = {
    ("umamba_bot", 256): [47_513_382, 47_514_892, 47_517_912, 47_514_022, 47_515_532, 47_518_552],
    ("umamba_bot", 512): [64_792_615, 64_794_638, 64_798_684, 64_793_255, 64_795_278, 64_799_324],
    ("umamba_enc", 256): [46_386_022, 46_387_532, 46_390_552, 46_386_662, 46_388_172, 46_391_192],
    ("umamba_enc", 512): [64_009_575, 64_011_598, 64_015_644, 64_010_215, 64_012_238, 64_016_284],
    ("lightm_unet", None): [5_011_650, 5_011_683, 5_011_749, 5_011_732, 5_011_765, 5_011_831],
    ("ultralight_vm_unet", None): [49_313, 49_322, 49_340, 49_457, 49_466, 49_484],
    ("lkm_unet", 256): [80_866_822, 80_868_332, 80_871_352, 80_867_398, 80_868_908, 80_871_928],
    ("lkm_unet", 512): [109_420_039, 109_422_062, 109_426_108, 109_420_615, 109_422_638, 109_426_684],
}
IN_K = [(1, 1), (1, 2), (1, 4), (3, 1), (3, 2), (3, 4)]
# the spec's key files are for in 3, K 2 (UltraLight: K 1), 256 plan
KEY_K = {"ultralight_vm_unet": 1}

# small configurations for real forwards (tiny widths; same code paths)
SMALL = {
    "umamba_bot": dict(patch_size=32, features_per_stage=[8, 16, 32], strides=[1, 2, 2]),
    "umamba_enc": dict(patch_size=32, features_per_stage=[8, 16, 64], strides=[1, 2, 2]),  # stage 2: channel tokens
    "lightm_unet": dict(init_filters=8, blocks_down=[1, 1, 1, 1]),
    "ultralight_vm_unet": {},
    "lkm_unet": dict(patch_size=40, features_per_stage=[8, 16, 32], strides=[1, 2, 2]),   # 40: BiPixel dilated path
}
SMALL_SIZE = {"umamba_bot": 32, "umamba_enc": 32, "lightm_unet": 32, "ultralight_vm_unet": 64, "lkm_unet": 40}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def meta_model(name, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


def spec_keys(name):
    rows = [line.split("\t") for line in open(os.path.join(SPEC, "keys", f"{name}_keys.txt")).read().splitlines()]
    return [(k, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())) for k, shape in rows]


needs_spec = pytest.mark.skipif(not os.path.isdir(os.path.join(SPEC, "keys")), reason="spec key files not present")


@pytest.fixture
def meta_scan(monkeypatch):
    """The scan cannot run on the meta device: a stand-in with the scan's output shape (shapes only)."""
    monkeypatch.setattr(mamba1_mod, "selective_scan", lambda u, *a, **k: torch.empty_like(u))


def test_registered():
    for n in NETS:
        assert n in list_models() and model_info(n).default_size == 256


@pytest.mark.parametrize("name,plan", list(COUNTS))
def test_parameter_count_equals_the_spec_in3_k2(name, plan):
    kw = {} if plan is None else dict(patch_size=plan)
    assert n_params(meta_model(name, in_channels=3, num_classes=2, **kw)) == COUNTS[(name, plan)][4]


@pytest.mark.slow
@pytest.mark.parametrize("name,plan", list(COUNTS))
def test_parameter_counts_equal_the_whole_spec_table(name, plan):
    kw = {} if plan is None else dict(patch_size=plan)
    got = [n_params(meta_model(name, in_channels=i, num_classes=k, **kw)) for i, k in IN_K]
    assert got == COUNTS[(name, plan)]


def test_other_counts_of_the_spec():
    assert n_params(meta_model("ultralight_vm_unet", bridge=False)) == 32_843
    # nnU-Net plans for 64x64 patches (5 stages), in 3, K 2 (spec §8 smoke-test sizes)
    for name, count in (("umamba_bot", 11_257_608), ("umamba_enc", 9_691_976), ("lkm_unet", 23_761_448)):
        assert n_params(meta_model(name, num_classes=2, patch_size=64)) == count
    bot = meta_model("umamba_bot", num_classes=2)
    assert n_params(bot.encoder) == 16_467_904 and n_params(bot.mamba_layer) == 1_695_744
    assert bot.n_blocks_per_stage == [2, 2, 2, 2, 1, 1, 1] and bot.n_conv_per_stage_decoder == [2, 2, 2, 2, 1, 1]
    bot512 = meta_model("umamba_bot", num_classes=2, patch_size=512)
    assert bot512.n_blocks_per_stage == [2, 2, 2, 2, 1, 1, 1, 1]
    assert bot512.n_conv_per_stage_decoder == [2, 2, 2, 2, 1, 1, 1]
    enc = meta_model("umamba_enc", num_classes=2)
    assert n_params(enc.encoder.mamba_layers) == 568_384
    assert n_params(meta_model("umamba_enc", patch_size=512).encoder.mamba_layers) == 912_704
    assert n_params(meta_model("lkm_unet", num_classes=2).encoder) == 49_317_440


@needs_spec
@pytest.mark.parametrize("name", NETS)
def test_state_dict_keys_and_shapes_equal_the_spec_and_load_strictly(name):
    ref = spec_keys(name)
    k = KEY_K.get(name, 2)
    m = meta_model(name, in_channels=3, num_classes=k)
    ours = [(key, tuple(v.shape)) for key, v in m.state_dict().items()]
    assert ours == ref                                  # same keys, same shapes, same order
    with torch.device("meta"):
        sd = {key: torch.empty(shape) for key, shape in ref}
    m.load_state_dict(sd, strict=True, assign=True)     # an upstream-shaped checkpoint loads


def test_duplicated_encoder_keys_share_tensors():
    m = create_model("umamba_bot", num_classes=2, **SMALL["umamba_bot"])
    sd = m.state_dict()
    enc = [k for k in sd if k.startswith("encoder.")]
    assert enc and all(sd[k].data_ptr() == sd["decoder." + k].data_ptr() for k in enc)
    blk = m.encoder.stem[1]                             # BasicBlockD: conv/norm keys twice (all_modules)
    assert blk.conv1.conv is blk.conv1.all_modules[0] and blk.conv1.norm is blk.conv1.all_modules[1]


@pytest.mark.parametrize("name", NETS)
def test_forward_shapes_at_256_like_the_spec(name, meta_scan):
    kw = {} if name in ("lightm_unet", "ultralight_vm_unet") else dict(deep_supervision=True)
    m = meta_model(name, num_classes=2, **kw)
    with torch.device("meta"):
        y = m(torch.empty(1, 3, 256, 256))
        feats = m.forward_intermediates(torch.empty(1, 3, 256, 256))
    if name in NNUNET:                                   # spec: [K@256, K@128, ..., K@8]
        assert [tuple(o.shape) for o in y] == [(1, 2, 256 // 2 ** i, 256 // 2 ** i) for i in range(6)]
    else:
        assert tuple(y.shape) == (1, 2, 256, 256)
    assert [tuple(f.shape) for f in feats] == [(1, d["num_chs"], 256 // d["reduction"], 256 // d["reduction"])
                                               for d in m.feature_info]
    if name in NNUNET:
        assert [d["num_chs"] for d in m.feature_info] == [32, 64, 128, 256, 512, 512, 512]


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("umamba_bot", 128), ("lightm_unet", 64), ("ultralight_vm_unet", 96),
                                       ("lkm_unet", 192)])
def test_default_config_at_a_smaller_size(name, size, meta_scan):
    m = meta_model(name, num_classes=3)
    with torch.device("meta"):
        assert tuple(m(torch.empty(2, 3, size, size)).shape) == (2, 3, size, size)


@pytest.mark.parametrize("name", NETS)
def test_small_config_real_forward_logits_and_backbone_api(name):
    torch.manual_seed(0)
    m = create_model(name, in_channels=1, num_classes=2, **SMALL[name]).eval()
    s = SMALL_SIZE[name]
    x = torch.randn(2, 1, s, s)
    with torch.no_grad():
        y = m(x)
        feats = m.forward_intermediates(x)
        deepest = m.forward_features(x)
    assert y.shape == (2, 2, s, s) and torch.isfinite(y).all()
    assert (y < 0).any()                                # logits, not probabilities
    assert len(feats) == len(m.feature_info)
    red = [d["reduction"] for d in m.feature_info]
    assert red == sorted(red) and len(set(red)) == len(red)
    for f, d in zip(feats, m.feature_info):
        assert f.shape == (2, d["num_chs"], s // d["reduction"], s // d["reduction"])
        assert m.get_submodule(d["module"]) is not None
    torch.testing.assert_close(deepest, feats[-1])


@pytest.mark.parametrize("name", NNUNET)
def test_deep_supervision_on_and_off(name):
    torch.manual_seed(0)
    m = create_model(name, num_classes=3, deep_supervision=True, **SMALL[name]).eval()
    s = SMALL_SIZE[name]
    x = torch.randn(1, 3, s, s)
    with torch.no_grad():
        ds = m(x)
        m.deep_supervision = False                      # nnU-Net's set_deep_supervision_enabled(False)
        single = m(x)
    assert isinstance(ds, list) and [o.shape[-1] for o in ds] == [s, s // 2]   # full resolution first
    assert isinstance(single, torch.Tensor)
    torch.testing.assert_close(single, ds[0])
    assert set(m.state_dict()) == set(create_model(name, num_classes=3, **SMALL[name]).state_dict())


def _disc_batch(c, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = size // 4
    masks = torch.stack([((yy - size // 2 + dy) ** 2 + (xx - size // 2 + dx) ** 2 < r * r).float()
                         for dy, dx in ((0, 0), (r // 2, -r // 2))])
    imgs = masks[:, None].expand(2, c, size, size) + 0.3 * torch.randn(2, c, size, size, generator=g)
    return imgs, masks


def _loss(out, target):
    out = out[0] if isinstance(out, (list, tuple)) else out
    return F.binary_cross_entropy_with_logits(out[:, 0].float(), target)


@pytest.mark.parametrize("name", NETS)
def test_training_steps_lower_the_loss(name):
    torch.manual_seed(0)
    m = create_model(name, in_channels=3, num_classes=1, **SMALL[name])
    x, t = _disc_batch(3, SMALL_SIZE[name])
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(4):
        loss = _loss(m(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    with torch.no_grad():
        assert _loss(m(x), t).item() < first


@pytest.mark.parametrize("name", NETS)
def test_bf16_autocast_step_stays_finite(name):
    torch.manual_seed(0)
    m = create_model(name, in_channels=3, num_classes=1, **SMALL[name])
    x, t = _disc_batch(3, SMALL_SIZE[name])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    loss = _loss(out, t)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_umamba_enc_refuses_other_sizes_with_one_line():
    m = create_model("umamba_enc", **SMALL["umamba_enc"])
    with pytest.raises(ValueError, match=r"built for 32x32 inputs.*patch_size=64") as e:
        m(torch.randn(1, 3, 64, 64))
    assert "\n" not in str(e.value)
    assert m.encoder.do_channel_token == [False, False, True]


@pytest.mark.parametrize("name,shape,match", [("umamba_bot", (1, 3, 30, 32), "divisible by 4"),
                                              ("lkm_unet", (1, 3, 42, 40), "divisible by 4"),
                                              ("lightm_unet", (1, 3, 36, 36), "divisible by 8"),
                                              ("ultralight_vm_unet", (1, 3, 48, 48), "divisible by 32"),
                                              ("ultralight_vm_unet", (1, 1, 64, 64), "in_channels=1")])
def test_bad_inputs_are_refused_before_any_work(name, shape, match):
    m = create_model(name, **SMALL[name])
    with pytest.raises(ValueError, match=match):
        m(torch.randn(*shape))


def test_nnunet_plan_errors():
    with pytest.raises(ValueError, match="not divisible by 64"):
        create_model("umamba_bot", patch_size=320 + 32)
    with pytest.raises(ValueError, match="strides needs 3 entries"):
        create_model("lkm_unet", features_per_stage=[8, 16, 32], strides=[1, 2])


# ----------------------------------------------------------------------------------------------- quirks
def test_umamba_mamba_layer_has_no_residual_and_last_stage_no_skip():
    torch.manual_seed(0)
    m = create_model("umamba_bot", **SMALL["umamba_bot"]).eval()
    x = torch.randn(1, 8 * 4, 8, 8)[:, :32]
    ml = m.mamba_layer
    with torch.no_grad():
        t = x.flatten(2).transpose(1, 2)
        expect = ml.mamba(ml.norm(t)).transpose(1, 2).reshape(x.shape)
        torch.testing.assert_close(ml(x), expect)
    assert m.decoder.stages[-1][0].conv1.in_channels == 8          # 8 -> 8, no concat of skips[0]
    assert m.decoder.stages[0][0].conv1.in_channels == 32          # 2 * 16


def test_lightm_layer_uses_one_layernorm_twice_and_raw_residual():
    torch.manual_seed(0)
    m = create_model("lightm_unet", **SMALL["lightm_unet"]).eval()
    layer = m.down_layers[1][0][0]
    calls = []
    layer.norm.register_forward_hook(lambda mod, a, out: calls.append(a[0]))
    x = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        y = layer(x)
        t = x.flatten(2).transpose(1, 2)
        inner = layer.mamba(layer.norm(t)) + layer.skip_scale * t
        torch.testing.assert_close(y, layer.proj(layer.norm(inner)).transpose(1, 2).reshape(1, 16, 4, 4))
    assert len(calls) >= 2
    assert m.conv_final[1] is m.act_mod


def test_ultralight_init_zeroes_dt_bias_and_probabilities_switch():
    torch.manual_seed(0)
    m = create_model("ultralight_vm_unet").eval()
    for mod in m.modules():
        if isinstance(mod, mamba1_mod.Mamba):
            assert torch.equal(mod.dt_proj.bias, torch.zeros_like(mod.dt_proj.bias))
            torch.testing.assert_close(mod.A_log[0], torch.log(torch.arange(1, 17.0)))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits = m(x)
        m.output = "probabilities"
        torch.testing.assert_close(m(x), torch.sigmoid(logits))


def test_ultralight_pvm_shares_one_mamba_over_four_chunks():
    torch.manual_seed(0)
    layer = create_model("ultralight_vm_unet").encoder4[0]
    x = torch.randn(1, 24, 4, 4)
    with torch.no_grad():
        n = layer.norm(x.flatten(2).transpose(1, 2))
        parts = [layer.mamba(p) + layer.skip_scale * p for p in n.chunk(4, dim=2)]
        ref = layer.proj(layer.norm(torch.cat(parts, 2))).transpose(1, 2).reshape(1, 32, 4, 4)
        torch.testing.assert_close(layer(x), ref)


def test_lkm_bipixel_regroups_into_dilated_grids_when_divisible():
    """Position-coded input: with H, W divisible by w = 5p each sequence holds the pixels of one offset in the
    w x w blocks (a dilated grid of step w), row-major."""
    from mambaseg.models.networks.lkm_unet import BiPixelMambaLayer
    layer = BiPixelMambaLayer(dim=1, p=1)                              # w = 5
    seen = []
    layer.scan = lambda g: (seen.append(g), torch.zeros_like(g))[1]
    x = torch.arange(100.0).reshape(1, 1, 10, 10)
    layer(x)
    g = seen[0]
    assert g.shape == (25, 1, 2, 2)
    for i in range(5):
        for j in range(5):
            assert torch.equal(g[i * 5 + j, 0], x[0, 0, i::5, j::5])
    seen.clear()
    layer(torch.randn(1, 1, 12, 12))                                   # not divisible: the whole map
    assert seen[0].shape == (1, 1, 12, 12)


def test_lkm_window_sizes_and_init():
    m = meta_model("lkm_unet")
    assert [l.p for l in m.encoder.w_mamba_layers] == [8, 4, 4, 2, 2, 1, 1]
    assert [l.p for l in meta_model("lkm_unet", patch_size=512).encoder.w_mamba_layers] == [8, 8, 4, 4, 2, 2, 1, 1]
    assert [5 * l.p for l in m.encoder.mamba_layers] == [40, 20, 20, 10, 10, 5, 5]
    small = create_model("lkm_unet", **SMALL["lkm_unet"])
    blocks = [b for b in small.modules() if isinstance(b, BasicBlockD)]
    assert blocks and all(torch.equal(b.conv2.norm.weight, torch.zeros_like(b.conv2.norm.weight)) for b in blocks)
    assert "out_proj.weight" not in dict(small.encoder.mamba_layers[0].mamba_forw.named_parameters())
