"""The 3-D U-Mamba Bot/Enc, LightM-UNet, LKM-UNet and nnU-Net's PlainConvUNet / ResidualEncoderUNet.

Oracles: the parameter counts of ``upstream_3d_models.md`` §8 (and §3-§6 per part), measured from the upstream
classes, for every listed configuration; the upstream ``state_dict`` keys and shapes of ``spec/keys/*_3d_keys.txt``
(loaded strictly); for the nnU-Net baselines (no spec dump) a closed-form count written from the
``dynamic_network_architectures`` layer list and its key layout; the spec's position-coded LKM 3-D grouping
(measured on upstream); row-major voxel tokens against a flatten reference; real forward/backward at small 3-D
sizes (anisotropic plans included)."""

import math
import os

import pytest
import torch

import mambaseg.models.blocks.mamba1 as mamba1_mod
from mambaseg.models import create_model, list_models, model_info
from mambaseg.models.blocks.nnunet_blocks import nnunet_plan_3d

SPEC = os.environ.get("MAMBASEG_SPEC_DIR", "/work/shared/spec")
needs_spec = pytest.mark.skipif(not os.path.isdir(os.path.join(SPEC, "keys")), reason="spec key files not present")

NETS3D = ["umamba_bot_3d", "umamba_enc_3d", "lightm_unet_3d", "lkm_unet_3d", "nnunet_3d", "nnunet_resenc_3d",
          "umamba_nomamba_3d"]

# spec §8 (and the small plans below it): (name, kwargs, in, K, params)
SPEC_COUNTS = [
    ("umamba_bot_3d", {}, 4, 4, 42_124_692),
    ("umamba_bot_3d", {}, 1, 2, 42_120_394),
    ("umamba_bot_3d", dict(patch_size="abd40"), 1, 14, 41_945_158),
    ("umamba_enc_3d", {}, 4, 4, 42_755_220),
    ("umamba_enc_3d", {}, 1, 2, 42_750_922),
    ("umamba_enc_3d", dict(patch_size="abd40"), 1, 14, 42_842_798),
    ("lightm_unet_3d", {}, 1, 3, 5_015_766),
    ("lightm_unet_3d", {}, 4, 4, 5_015_976),
    ("lightm_unet_3d", {}, 1, 14, 5_016_129),
    ("lkm_unet_3d", {}, 1, 14, 63_782_246),
    ("lkm_unet_3d", dict(patch_size="brats128"), 4, 4, 64_361_044),
    ("lkm_unet_3d", {}, 1, 2, 63_772_586),
    ("umamba_bot_3d", dict(patch_size=32), 4, 4, 7_326_220),
    ("umamba_enc_3d", dict(patch_size=32), 4, 4, 7_080_204),
    ("lkm_unet_3d", dict(patch_size=32), 1, 14, 13_627_338),
    ("umamba_bot_3d", dict(patch_size=64), 4, 4, 22_575_056),
    ("umamba_enc_3d", dict(patch_size=64), 4, 4, 22_529_744),
    ("lkm_unet_3d", dict(patch_size=64), 1, 14, 36_153_688),
]
# the spec's key dumps: (in, K, kwargs)
KEY_CFG = {"umamba_bot_3d": (4, 4, {}), "umamba_enc_3d": (4, 4, {}), "lightm_unet_3d": (1, 3, {}),
           "lkm_unet_3d": (1, 14, {})}

# small real configurations (tiny widths, same code paths); anisotropic where the network allows
SMALL = {
    "umamba_bot_3d": (dict(patch_size=(16, 32, 32), features_per_stage=[8, 16, 32]), (16, 32, 32)),
    "umamba_nomamba_3d": (dict(patch_size=(16, 32, 32), features_per_stage=[8, 16, 32]), (16, 32, 32)),
    # (8, 16, 16) -> strides (1,1,1), (2,2,2), (1,2,2): stage 2 is 4x4x4 = 64 <= 64 channels -> channel tokens
    "umamba_enc_3d": (dict(patch_size=(8, 16, 16), features_per_stage=[8, 16, 64]), (8, 16, 16)),
    "lightm_unet_3d": (dict(init_filters=8, blocks_down=[1, 1, 1, 1]), (16, 8, 16)),
    # 3 stages: pixel windows (10,14,12), (5,7,6), (5,7,6) all divide; window pooling p = 2 at stage 0
    "lkm_unet_3d": (dict(patch_size=(20, 28, 24), features_per_stage=[8, 16, 16], strides=[1, 2, 2],
                         kernel_sizes=[(1, 3, 3), 3, 3]), (20, 28, 24)),
    "nnunet_3d": (dict(patch_size=(8, 16, 16), features_per_stage=[8, 16, 32]), (8, 16, 16)),
    "nnunet_resenc_3d": (dict(patch_size=(8, 16, 16), features_per_stage=[8, 16, 32]), (8, 16, 32)),
}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def meta_model(name, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


def spec_keys(name):
    rows = [line.split("\t") for line in open(os.path.join(SPEC, "keys", f"{name}_keys.txt")).read().splitlines()]
    return [(k, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())) for k, shape in rows]


def small(name, in_channels=2, num_classes=3, **extra):
    kw, size = SMALL[name]
    return create_model(name, in_channels=in_channels, num_classes=num_classes, **kw, **extra), size


# ------------------------------------------------------------------------------------------------ registry
def test_registered_as_3d():
    for n in NETS3D:
        assert n in list_models() and model_info(n).extra.get("spatial_dims") == 3
    assert set(list_models(family="baseline")) >= {"nnunet_3d", "nnunet_resenc_3d", "umamba_nomamba_3d"}
    with pytest.raises(ValueError, match="3-D network.*use umamba_enc for 2-D"):
        create_model("umamba_enc_3d", spatial_dims=2)


def test_no_mamba_base_is_umamba_bot_without_its_mamba_layer():
    """nnU-Net Revisited's "No-Mamba Base" = U-Mamba with the Mamba blocks removed: Bot's count minus its Mamba
    layer's (spec §3.2: 42,124,692 - 675,840), Bot's keys minus ``mamba_layer.*``."""
    base = meta_model("umamba_nomamba_3d", in_channels=4, num_classes=4)
    assert n_params(base) == 42_124_692 - 675_840
    bot = meta_model("umamba_bot_3d", in_channels=4, num_classes=4)
    assert list(base.state_dict()) == [k for k in bot.state_dict() if not k.startswith("mamba_layer.")]
    torch.manual_seed(0)
    m, size = small("umamba_nomamba_3d")
    x = torch.randn(1, 2, *size)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.decoder(m.encoder(x)))      # the bottleneck map goes straight on


# ------------------------------------------------------------------------------------------------ counts
@pytest.mark.parametrize("name,kw,cin,k,count", SPEC_COUNTS)
def test_parameter_counts_equal_the_spec(name, kw, cin, k, count):
    assert n_params(meta_model(name, in_channels=cin, num_classes=k, **kw)) == count


def test_per_part_counts_of_the_spec():
    bot = meta_model("umamba_bot_3d", in_channels=4, num_classes=4)
    assert n_params(bot.encoder) == 15_530_880 and n_params(bot.mamba_layer) == 675_840
    assert n_params(bot.encoder.stem) == 86_944
    assert bot.n_blocks_per_stage == [2, 2, 2, 1, 1, 1] and bot.n_conv_per_stage_decoder == [2, 2, 2, 1, 1]
    enc = meta_model("umamba_enc_3d", in_channels=4, num_classes=4)
    assert [n_params(m) for m in enc.encoder.mamba_layers] == [9_984, 32_768, 116_736, 438_272, 675_840, 32_768]
    assert enc.encoder.do_channel_token == [False] * 5 + [True]
    assert enc.encoder.mamba_layers[5].dim == 64                         # 4^3 positions as the token width
    abd = meta_model("umamba_enc_3d", in_channels=1, num_classes=14, patch_size="abd40")
    assert abd.encoder.feature_map_sizes == [(40, 224, 192), (40, 112, 96), (20, 56, 48), (10, 28, 24),
                                             (5, 14, 12), (5, 7, 6)]
    assert n_params(abd.encoder.mamba_layers[5]) == 299_880 and abd.encoder.do_channel_token[4] is False
    lkm = meta_model("lkm_unet_3d", in_channels=1, num_classes=14)
    assert n_params(lkm.encoder) == 36_497_024
    assert [n_params(m) for m in lkm.encoder.w_mamba_layers] == [17_856, 57_216, 200_448, 744_960, 1_146_240,
                                                                 1_146_240]
    light = meta_model("lightm_unet_3d", in_channels=1, num_classes=3)
    assert [n_params(m) for m in light.down_layers] == [22_210, 160_325, 575_109, 4_186_377]
    assert n_params(light.up_layers) == 28_451 and n_params(light.conv_final) == 227


@needs_spec
@pytest.mark.parametrize("name", sorted(KEY_CFG))
def test_state_dict_keys_and_shapes_equal_the_spec_and_load_strictly(name):
    cin, k, kw = KEY_CFG[name]
    m = meta_model(name, in_channels=cin, num_classes=k, **kw)
    ours = [(key, tuple(v.shape)) for key, v in m.state_dict().items()]
    ref = spec_keys(name)
    assert ours == ref
    with torch.device("meta"):
        sd = {key: torch.empty(shape) for key, shape in ref}
    m.load_state_dict(sd, strict=True, assign=True)


# ------------------------------------------------------------------------------------ nnU-Net baselines
def _conv(cin, cout, k, bias=True):
    return cin * cout * math.prod(k) + (cout if bias else 0)


def _cnn(cin, cout, k):                 # ConvDropoutNormReLU: conv (bias) + affine InstanceNorm
    return _conv(cin, cout, k) + 2 * cout


def _closed_form(plan, cin, k_cls, residual, n_enc, n_dec):
    """The parameter count of dynamic_network_architectures' PlainConvUNet / ResidualEncoderUNet, from its layer
    list (written from the upstream description, independent of our modules)."""
    f, ks, st, n = plan["features"], plan["kernels"], plan["strides"], len(plan["features"])
    total, prev = 0, cin
    if residual:
        total += _cnn(cin, f[0], ks[0])                                     # stem
        prev = f[0]
    for s in range(n):
        for j in range(n_enc[s]):
            a = prev if j == 0 else f[s]
            if residual:
                total += _cnn(a, f[s], ks[s]) + _cnn(f[s], f[s], ks[s])
                if a != f[s]:
                    total += _conv(a, f[s], (1, 1, 1), bias=False) + 2 * f[s]   # skip projection, no bias
            else:
                total += _cnn(a, f[s], ks[s])
        prev = f[s]
    for i in range(n - 1):
        below, skip = f[n - 1 - i], f[n - 2 - i]
        total += below * skip * math.prod(st[n - 1 - i]) + skip               # transposed conv with bias
        for j in range(n_dec[i]):
            total += _cnn(2 * skip if j == 0 else skip, skip, ks[n - 2 - i])
        total += _conv(skip, k_cls, (1, 1, 1))
    return total


BRATS = dict(features=[32, 64, 128, 256, 320, 320], kernels=[(3, 3, 3)] * 6,
             strides=[(1, 1, 1)] + [(2, 2, 2)] * 5)
ABD = dict(features=[32, 64, 128, 256, 320, 320], kernels=[(1, 3, 3)] + [(3, 3, 3)] * 5,
           strides=[(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)])


@pytest.mark.parametrize("plan_name,plan,cin,k", [("brats128", BRATS, 4, 4), ("brats128", BRATS, 4, 3),
                                                  ("abd40", ABD, 1, 14)])
def test_nnunet_baseline_counts_equal_the_closed_form(plan_name, plan, cin, k):
    plain = meta_model("nnunet_3d", in_channels=cin, num_classes=k, patch_size=plan_name)
    assert n_params(plain) == _closed_form(plan, cin, k, False, [2] * 6, [2] * 5)
    res = meta_model("nnunet_resenc_3d", in_channels=cin, num_classes=k, patch_size=plan_name)
    assert res.n_blocks_per_stage == [1, 3, 4, 6, 6, 6]
    assert n_params(res) == _closed_form(plan, cin, k, True, [1, 3, 4, 6, 6, 6], [1] * 5)


def test_nnunet_baseline_keys_are_dynamic_network_architectures_names():
    plain = meta_model("nnunet_3d", in_channels=4, num_classes=4)
    sd = {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    # every ConvDropoutNormReLU: 8 entries; the encoder's listed twice (decoder.encoder); tconv and seg 2 each
    assert len(sd) == 12 * 8 * 2 + 10 * 8 + 5 * 2 + 5 * 2
    assert sd["encoder.stages.0.0.convs.0.conv.weight"] == (32, 4, 3, 3, 3)
    assert sd["encoder.stages.0.0.convs.0.all_modules.1.weight"] == (32,)
    assert sd["encoder.stages.5.0.convs.1.conv.weight"] == (320, 320, 3, 3, 3)
    assert sd["decoder.encoder.stages.1.0.convs.0.conv.weight"] == (64, 32, 3, 3, 3)
    assert sd["decoder.transpconvs.0.weight"] == (320, 320, 2, 2, 2) and "decoder.transpconvs.0.bias" in sd
    assert sd["decoder.stages.4.convs.0.conv.weight"] == (32, 64, 3, 3, 3)
    assert sd["decoder.seg_layers.4.weight"] == (4, 32, 1, 1, 1)
    res = meta_model("nnunet_resenc_3d", in_channels=4, num_classes=4, patch_size="abd40")
    sd = {k: tuple(v.shape) for k, v in res.state_dict().items()}
    assert sd["encoder.stem.convs.0.conv.weight"] == (32, 4, 1, 3, 3)
    assert sd["encoder.stages.1.blocks.0.skip.1.conv.weight"] == (64, 32, 1, 1, 1)   # AvgPool(1,2,2) + 1x1
    assert "encoder.stages.1.blocks.0.skip.1.conv.bias" not in sd
    assert sd["encoder.stages.1.blocks.2.conv2.norm.weight"] == (64,)
    assert sd["decoder.transpconvs.0.weight"] == (320, 320, 1, 2, 2)               # kernel = stride (1, 2, 2)
    assert sd["decoder.stages.0.convs.0.conv.weight"] == (320, 640, 3, 3, 3)
    assert res.encoder.stages[1].blocks[0].skip[0].kernel_size == (1, 2, 2)


def test_nnunet_baseline_init():
    torch.manual_seed(0)
    res, _ = small("nnunet_resenc_3d")
    blocks = [b for s in res.encoder.stages for b in s.blocks]
    assert all(not b.conv2.norm.weight.any() for b in blocks)          # init_last_bn_before_add_to_0
    plain, _ = small("nnunet_3d")
    assert not plain.decoder.seg_layers[0].bias.any()                  # He init zeroes the biases


# ----------------------------------------------------------------------------------------- forward
@pytest.fixture
def meta_scan(monkeypatch):
    monkeypatch.setattr(mamba1_mod, "selective_scan", lambda u, *a, **k: torch.empty_like(u))


@pytest.mark.parametrize("name,kw,cin,size", [("umamba_bot_3d", {}, 4, (128,) * 3),
                                              ("umamba_enc_3d", {}, 4, (128,) * 3),
                                              ("lkm_unet_3d", {}, 1, (40, 224, 192)),
                                              ("umamba_enc_3d", dict(patch_size="abd40"), 1, (40, 224, 192))])
def test_full_size_output_shapes_like_the_spec(name, kw, cin, size, meta_scan):
    m = meta_model(name, in_channels=cin, num_classes=4, deep_supervision=True, **kw)
    with torch.device("meta"):
        y = m(torch.empty(1, cin, *size))
    red = m.plan.reductions_per_axis[:-1]
    assert [tuple(o.shape) for o in y] == [(1, 4) + tuple(s // r for s, r in zip(size, rr)) for rr in red]


@pytest.mark.parametrize("name", NETS3D)
def test_small_forward_backward_logits_and_backbone_api(name):
    torch.manual_seed(0)
    m, size = small(name)
    x = torch.randn(2, 2, *size)
    y = m(x)
    assert y.shape == (2, 3) + size and torch.isfinite(y).all() and (y < 0).any()
    y.square().mean().backward()
    unused = sorted({k.rsplit(".", 1)[0] for k, p in m.named_parameters() if p.grad is None})
    n_seg = len(getattr(getattr(m, "decoder", None), "seg_layers", []))
    assert unused == [f"decoder.seg_layers.{i}" for i in range(n_seg - 1)]   # only the deep-supervision heads
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    m.eval()
    with torch.no_grad():
        feats = m.forward_intermediates(x)
        deepest = m.forward_features(x)
    assert len(feats) == len(m.feature_info)
    red = [d["reduction"] for d in m.feature_info]
    assert red == sorted(red) and len(set(red)) == len(red)
    for f, d in zip(feats, m.feature_info):
        per_axis = d.get("reduction_per_axis", (d["reduction"],) * 3)
        assert f.shape == (2, d["num_chs"]) + tuple(s // r for s, r in zip(size, per_axis))
        assert m.get_submodule(d["module"]) is not None
    torch.testing.assert_close(deepest, feats[-1])
    assert m.spatial_dims == 3 and len(m.default_input_size) == 3 and m.in_channels == 2 and m.num_classes == 3


@pytest.mark.parametrize("name", ["umamba_bot_3d", "umamba_enc_3d", "lkm_unet_3d", "nnunet_3d", "nnunet_resenc_3d"])
def test_deep_supervision_on_and_off(name):
    torch.manual_seed(0)
    m, size = small(name, deep_supervision="train")
    x = torch.randn(1, 2, *size)
    ds = m(x)
    m.eval()
    with torch.no_grad():
        single = m(x)
        m.deep_supervision = True
        ds_eval = m(x)
    assert isinstance(ds, list) and isinstance(single, torch.Tensor)
    red = m.plan.reductions_per_axis[:-1]
    assert [tuple(o.shape[2:]) for o in ds] == [tuple(s // r for s, r in zip(size, rr)) for rr in red]
    torch.testing.assert_close(single, ds_eval[0])


@pytest.mark.parametrize("name", NETS3D)
def test_bf16_autocast_step_stays_finite(name):
    torch.manual_seed(0)
    m, size = small(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.randn(1, 2, *size))
    loss = out.float().square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


# ------------------------------------------------------------------------------------------- quirks
def test_umamba_3d_decoder_concatenates_every_skip_and_enc_has_mamba_everywhere():
    bot = meta_model("umamba_bot_3d", in_channels=4, num_classes=4)
    assert bot.decoder.stages[-1][0].conv1.in_channels == 64            # 2 * 32: full-resolution skip concatenated
    assert bot.decoder.stages[-1][0].conv1.weight.shape == (32, 64, 3, 3, 3)
    enc = meta_model("umamba_enc_3d", in_channels=4, num_classes=4)
    assert all(type(m).__name__ == "MambaLayer" for m in enc.encoder.mamba_layers)
    two_d = meta_model("umamba_bot", num_classes=2)                     # the 2-D file keeps its no-concat last stage
    assert two_d.decoder.stages[-1][0].conv1.in_channels == 32


def test_mamba_layer_tokens_are_row_major_voxels_and_channel_tokens():
    torch.manual_seed(0)
    bot, _ = small("umamba_bot_3d")
    ml = bot.mamba_layer.eval()
    x = torch.randn(1, 32, 2, 3, 4)
    with torch.no_grad():
        t = torch.stack([x[0, :, d, h, w] for d in range(2) for h in range(3) for w in range(4)])[None]
        ref = ml.mamba(ml.norm(t))[0]                                   # (L, C), L in (d, h, w) order
        got = ml(x)
        for i, (d, h, w) in enumerate((d, h, w) for d in range(2) for h in range(3) for w in range(4)):
            torch.testing.assert_close(got[0, :, d, h, w], ref[i])
    enc, size = small("umamba_enc_3d")
    assert enc.encoder.do_channel_token == [False, False, True]
    assert enc.plan.strides == [(1, 1, 1), (2, 2, 2), (1, 2, 2)]
    ct = enc.encoder.mamba_layers[2].eval()
    x = torch.randn(1, 64, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(ct(x), ct.mamba(ct.norm(x.reshape(1, 64, 64))).reshape(x.shape))


def test_umamba_enc_3d_refuses_other_sizes_and_2d_input_with_one_line():
    enc, size = small("umamba_enc_3d")
    with pytest.raises(ValueError, match=r"built for 8x16x16 inputs.*patch_size=\(8, 16, 32\)") as e:
        enc(torch.randn(1, 2, 8, 16, 32))
    assert "\n" not in str(e.value)
    bot, _ = small("umamba_bot_3d")
    with pytest.raises(ValueError, match="5-D input.*not 2-D slices"):
        bot(torch.randn(1, 2, 32, 32))
    with pytest.raises(ValueError, match="not divisible by 4"):
        bot(torch.randn(1, 2, 16, 30, 32))
    with pytest.raises(ValueError, match="in_channels=3"):
        bot(torch.randn(1, 3, 16, 32, 32))
    lkm = meta_model("lkm_unet_3d")
    with torch.device("meta"), pytest.raises(ValueError, match=r"not divisible by 8x32x32"):
        lkm(torch.empty(1, 1, 40, 224, 200))


def test_lkm_3d_pixel_grouping_matches_upstreams_measured_order():
    """spec §6, measured on upstream with a position-coded 10x14x12 map, p = 1 (windows 5, 7, 6): 210 sequences
    of 8 tokens; sequence (r1*7 + r2)*6 + r3 holds voxels (a*5 + r1, b*7 + r2, c*6 + r3) row-major in (a, b, c)."""
    from mambaseg.models.networks.lkm_unet import BiPixelMambaLayer
    layer = BiPixelMambaLayer(dim=1, p=1)
    seen = []
    layer.scan = lambda g: (seen.append(g), g.clone())[1]               # identity scan: output = 2 x
    x = torch.arange(10 * 14 * 12, dtype=torch.float32).reshape(1, 1, 10, 14, 12)
    y = layer(x)
    torch.testing.assert_close(y, 2 * x)                                # the inverse regrouping restores every voxel
    g = seen[0].reshape(210, 8)
    pos = lambda d, h, w: float(d * 14 * 12 + h * 12 + w)              # noqa: E731
    assert g[0].tolist() == [pos(0, 0, 0), pos(0, 0, 6), pos(0, 7, 0), pos(0, 7, 6), pos(5, 0, 0), pos(5, 0, 6),
                             pos(5, 7, 0), pos(5, 7, 6)]
    assert g[42].tolist()[:2] == [pos(1, 0, 0), pos(1, 0, 6)]
    for r1, r2, r3 in ((4, 6, 5), (2, 3, 1)):
        seq = (r1 * 7 + r2) * 6 + r3
        assert g[seq].tolist() == [pos(a * 5 + r1, b * 7 + r2, c * 6 + r3) for a in range(2) for b in range(2)
                                   for c in range(2)]
    seen.clear()
    layer(torch.randn(1, 1, 10, 14, 10))                                # not divisible: one global sequence
    assert seen[0].shape == (1, 1, 10, 14, 10)


def test_lkm_3d_windows_and_pooling():
    m = meta_model("lkm_unet_3d")
    assert [l.p for l in m.encoder.mamba_layers] == [4, 4, 2, 2, 1, 1]
    assert [l.p for l in m.encoder.w_mamba_layers] == [4, 4, 2, 2, 1, 1]
    from mambaseg.models.networks.lkm_unet import BiWindowMambaLayer
    layer = BiWindowMambaLayer(dim=1, p=2)
    seen = []
    layer.scan = lambda g: (seen.append(g), g.clone())[1]
    x = torch.arange(4 * 6 * 2, dtype=torch.float32).reshape(1, 1, 4, 6, 2)
    y = layer(x)
    pooled = x.reshape(1, 1, 2, 2, 3, 2, 1, 2).mean(dim=(3, 5, 7))     # 2x2x2 averages
    torch.testing.assert_close(seen[0], pooled)
    torch.testing.assert_close(y - x, pooled.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4))


def test_lightm_3d_ops_and_dimension_free_encoder():
    m = meta_model("lightm_unet_3d", in_channels=3, num_classes=2)
    two = meta_model("lightm_unet", in_channels=3, num_classes=2)
    assert n_params(m.down_layers) == n_params(two.down_layers)        # Mamba / LN / Linear / GN are dimension-free
    assert m.up_samples[0][1].mode == "trilinear" and type(m.down_layers[1][0][1]).__name__ == "MaxPool3d"
    assert m.convInit[0].conv.weight.shape == (3, 1, 3, 3, 3)


# -------------------------------------------------------------------------------------------- plans
def test_3d_plans():
    p = nnunet_plan_3d(128)
    assert p.features == [32, 64, 128, 256, 320, 320] and p.strides == [(1, 1, 1)] + [(2, 2, 2)] * 5
    assert p.divisor == 32 and p.n_conv_decoder == [2] * 5
    assert nnunet_plan_3d(32).features == [32, 64, 128, 256] and len(nnunet_plan_3d(64).features) == 5
    abd = nnunet_plan_3d("abd40")
    assert abd.divisor == (8, 32, 32) and abd.reductions[-1] == (8, 32, 32)
    assert abd.feature_map_sizes[-1] == (5, 7, 6)
    box = nnunet_plan_3d((16, 64, 64))                                  # pools D only while it stays >= 4
    assert box.strides == [(1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2)]
    explicit = nnunet_plan_3d((40, 224, 192), features_per_stage=[8, 16], strides=[[1, 1, 1], [1, 2, 2]],
                              kernel_sizes=[[1, 3, 3], [3, 3, 3]])
    assert explicit.divisor == (1, 2, 2)
    with pytest.raises(ValueError, match="unknown 3-D plan 'brats'"):
        nnunet_plan_3d("brats")
    with pytest.raises(ValueError, match="not divisible by 2x4x4"):       # stage strides 1, (1,2,2), 2
        nnunet_plan_3d((8, 18, 16), strides=[1, (1, 2, 2), 2])
    with pytest.raises(ValueError, match="3 per-axis values"):
        nnunet_plan_3d(32, strides=[1, (2, 2)])
