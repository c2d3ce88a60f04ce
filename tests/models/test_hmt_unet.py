"""HMT-UNet (mambaseg.models.networks.hmt_unet) against spec §4: parameter counts measured on the upstream code, the
upstream key layout (written out here from §4.1/§4.5), block placement, shapes, gradients, and the MambaVision
checkpoint loader (synthetic checkpoints in the §4.5 layout; upstream loads 245 of 252 keys for T, then 190
mirrored)."""

import math

import pytest
import torch

from mambaseg.models import PretrainedMismatchError, create_model, list_models, load_pretrained
from mambaseg.models.networks.hmt_unet import HMT_UNET_SIZES, HMTUNet, load_mambavision_checkpoint
from mambaseg.models.pretrained import PretrainedReport
from mambaseg.models.blocks.mambavision import Attention, Block, ConvBlock, MambaVisionMixer

# small widths/depths so forwards stay fast (the scan may be the slow reference)
TOY = dict(dim=16, in_dim=8, depths=[1, 1, 2, 2], num_heads=[1, 2, 2, 4], window_size=[4, 4, 2, 2])
TOY_PADDED = dict(TOY, window_size=[4, 4, 3, 3])  # 64x64 input: levels 2/3 (4x4, 2x2) do not tile -> padding


# upstream's window sizes at toy widths: for the 224/256 padding behaviour only the map and window sizes matter
TOY_UPSTREAM_WINDOWS = dict(TOY, window_size=[8, 8, 14, 7])


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def meta_model(name, **kwargs):
    """Build on the meta device: full-size shapes and names without allocating or initialising weights."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


# ------------------------------------------------------------------------------------------------ spec oracles

def _attn_indices(d):  # spec §4.1: range(d//2, d) for even d, range(d//2+1, d) for odd d
    return list(range(d // 2, d)) if d % 2 == 0 else list(range(d // 2 + 1, d))


def _bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _convblock(prefix, c):
    d = {f"{prefix}.conv1.weight": (c, c, 3, 3), f"{prefix}.conv1.bias": (c,),
         f"{prefix}.conv2.weight": (c, c, 3, 3), f"{prefix}.conv2.bias": (c,)}
    d.update(_bn(f"{prefix}.norm1", c))
    d.update(_bn(f"{prefix}.norm2", c))
    return d


def _block(prefix, c, attention, layer_scale=False):
    h, r = c // 2, math.ceil(c / 16)
    d = {f"{prefix}.norm1.weight": (c,), f"{prefix}.norm1.bias": (c,), f"{prefix}.norm2.weight": (c,),
         f"{prefix}.norm2.bias": (c,), f"{prefix}.mlp.fc1.weight": (4 * c, c), f"{prefix}.mlp.fc1.bias": (4 * c,),
         f"{prefix}.mlp.fc2.weight": (c, 4 * c), f"{prefix}.mlp.fc2.bias": (c,)}
    if attention:
        d.update({f"{prefix}.mixer.qkv.weight": (3 * c, c), f"{prefix}.mixer.qkv.bias": (3 * c,),
                  f"{prefix}.mixer.proj.weight": (c, c), f"{prefix}.mixer.proj.bias": (c,)})
    else:
        d.update({f"{prefix}.mixer.in_proj.weight": (c, c), f"{prefix}.mixer.x_proj.weight": (r + 16, h),
                  f"{prefix}.mixer.dt_proj.weight": (h, r), f"{prefix}.mixer.dt_proj.bias": (h,),
                  f"{prefix}.mixer.A_log": (h, 8), f"{prefix}.mixer.D": (h,),
                  f"{prefix}.mixer.out_proj.weight": (c, c), f"{prefix}.mixer.conv1d_x.weight": (h, 1, 3),
                  f"{prefix}.mixer.conv1d_z.weight": (h, 1, 3)})
    if layer_scale:
        d.update({f"{prefix}.gamma_1": (c,), f"{prefix}.gamma_2": (c,)})
    return d


def mambavision_encoder_shapes(dim, in_dim, depths, in_chans=3, layer_scale=False):
    """Key -> shape of a MambaVision encoder (spec §4.5 layout)."""
    d = {"patch_embed.conv_down.0.weight": (in_dim, in_chans, 3, 3),
         "patch_embed.conv_down.3.weight": (dim, in_dim, 3, 3)}
    d.update(_bn("patch_embed.conv_down.1", in_dim))
    d.update(_bn("patch_embed.conv_down.4", dim))
    for i, depth in enumerate(depths):
        c = dim * 2 ** i
        for j in range(depth):
            p = f"levels.{i}.blocks.{j}"
            d.update(_convblock(p, c) if i < 2 else _block(p, c, j in _attn_indices(depth), layer_scale))
        if i < 3:
            d[f"levels.{i}.downsample.reduction.0.weight"] = (2 * c, c, 3, 3)
    return d


def mambavision_classifier_shapes(dim, in_dim, depths, layer_scale=False, num_classes=1000):
    d = mambavision_encoder_shapes(dim, in_dim, depths, layer_scale=layer_scale)
    d.update(_bn("norm", 8 * dim))
    d.update({"head.weight": (num_classes, 8 * dim), "head.bias": (num_classes,)})
    return d


def upstream_hmt_unet_shapes(dim, in_dim, depths, num_classes=1, in_chans=3, paper=False, layer_scale=False):
    """Key -> shape of upstream HMTUNet's state dict (spec §4.1): prefix ``hmtunet.``, decoder ``layers_up``."""
    d = mambavision_encoder_shapes(dim, in_dim, depths, in_chans=in_chans, layer_scale=layer_scale)
    for i in range(4):
        lvl = 3 - i
        c, depth = dim * 2 ** lvl, depths[lvl]
        for j in range(depth):
            p = f"layers_up.{i}.blocks.{j}"
            conv = paper and lvl < 2
            d.update(_convblock(p, c) if conv else _block(p, c, j in _attn_indices(depth), layer_scale))
        if i:
            d.update({f"layers_up.{i}.upsample.expand.weight": (4 * c, 2 * c),
                      f"layers_up.{i}.upsample.norm.weight": (c,), f"layers_up.{i}.upsample.norm.bias": (c,)})
    d.update({"final_up.expand.weight": (4 * dim, dim), "final_up.norm.weight": (dim // 4,),
              "final_up.norm.bias": (dim // 4,), "final_conv.weight": (num_classes, dim // 4, 1, 1),
              "final_conv.bias": (num_classes,)})
    return {"hmtunet." + k: v for k, v in d.items()}


def expected_param_count(dim, in_dim, depths, in_chans=3, num_classes=1, paper=False, layer_scale=False, **_):
    """Closed-form parameter count from the architecture description (no module involved)."""
    shapes = upstream_hmt_unet_shapes(dim, in_dim, depths, num_classes, in_chans, paper, layer_scale)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(math.prod(s) for k, s in shapes.items() if not k.endswith(buffers))


def synthetic_checkpoint(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(1000, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = torch.rand(s, generator=g) + 0.5
        else:
            out[k] = torch.randn(s, generator=g) * 0.05
    return out


# ------------------------------------------------------------------------------------------------ counts, keys

def test_tiny_param_count_matches_upstream():
    m = meta_model("hmt_unet")
    assert n_params(m) == 60_360_509  # spec §4.3, measured on upstream HMTUNet (3 channels, 1 class)
    part = lambda *pre: sum(p.numel() for k, p in m.hmtunet.named_parameters() if k.startswith(pre))
    assert part("patch_embed", "levels") == 31_151_968
    assert part("layers_up") == 29_182_880
    assert part("final_up", "final_conv") == 25_661
    assert expected_param_count(**HMT_UNET_SIZES["tiny"]) == 60_360_509  # the formula below agrees with spec


def test_state_dict_keys_and_shapes_match_upstream_layout_and_load_strict():
    m = meta_model("hmt_unet")
    cfg = HMT_UNET_SIZES["tiny"]
    want = upstream_hmt_unet_shapes(cfg["dim"], cfg["in_dim"], cfg["depths"])
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert set(got) == set(want)
    assert got == want
    # an upstream-layout HMTUNet state dict loads with strict=True (toy widths, same layout rules)
    toy = HMTUNet(**TOY)
    sd = synthetic_checkpoint(upstream_hmt_unet_shapes(TOY["dim"], TOY["in_dim"], TOY["depths"]))
    toy.load_state_dict(sd, strict=True)
    assert torch.equal(toy.hmtunet.layers_up[1].blocks[0].mixer.A_log, sd["hmtunet.layers_up.1.blocks.0.mixer.A_log"])


@pytest.mark.parametrize("name,kwargs,cfg", [
    ("hmt_unet_paper", {}, dict(HMT_UNET_SIZES["tiny"], paper=True)),
    ("hmt_unet_small", {}, HMT_UNET_SIZES["small"]),
    ("hmt_unet", {"size": "small"}, HMT_UNET_SIZES["small"]),
    ("hmt_unet_base", {}, dict(HMT_UNET_SIZES["base"], layer_scale=True)),
    ("hmt_unet_paper", {"size": "small", "in_channels": 1, "num_classes": 9},
     dict(HMT_UNET_SIZES["small"], paper=True, in_chans=1, num_classes=9)),
])
def test_param_counts_of_sizes_and_paper_variant(name, kwargs, cfg):
    m = meta_model(name, **kwargs)
    assert n_params(m) == expected_param_count(**cfg)


def test_registry_and_sizes():
    assert {"hmt_unet", "hmt_unet_paper", "hmt_unet_small", "hmt_unet_base"} <= set(list_models("hmt_unet*"))
    m = meta_model("hmt_unet", size="base")
    assert m.hmtunet.patch_embed.conv_down[3].out_channels == 128
    assert [len(l.blocks) for l in m.hmtunet.levels] == [3, 3, 10, 5]
    assert m.hmtunet.levels[2].blocks[0].gamma_1 is not None          # base: layer scale 1e-5
    assert m.hmtunet.levels[0].blocks[0].gamma is None                # no conv layer scale
    assert m.hmtunet.levels[2].blocks[0].drop_path.drop_prob == pytest.approx(0.3 * 6 / 20)
    small = HMTUNet(layer_scale=1e-5, **TOY)
    torch.testing.assert_close(small.hmtunet.levels[2].blocks[0].gamma_1.detach(), torch.full((64,), 1e-5))
    with pytest.raises(ValueError, match="size"):
        create_model("hmt_unet", size="huge")
    with pytest.raises(ValueError, match="decoder"):
        HMTUNet(decoder="mirror")


# ------------------------------------------------------------------------------------------------ placement

def _kinds(layer):
    out = []
    for b in layer.blocks:
        if isinstance(b, ConvBlock):
            out.append("conv")
        else:
            assert isinstance(b, Block)
            out.append("attn" if isinstance(b.mixer, Attention) else "mixer")
            assert isinstance(b.mixer, (Attention, MambaVisionMixer))
    return out


def test_mixer_and_attention_block_placement_code():
    net = meta_model("hmt_unet").hmtunet
    M, A, C = "mixer", "attn", "conv"
    assert _kinds(net.levels[0]) == [C]
    assert _kinds(net.levels[1]) == [C] * 3
    assert _kinds(net.levels[2]) == [M] * 4 + [A] * 4
    assert _kinds(net.levels[3]) == [M, M, A, A]
    assert _kinds(net.layers_up[0]) == [M, M, A, A]
    assert _kinds(net.layers_up[1]) == [M] * 4 + [A] * 4
    assert _kinds(net.layers_up[2]) == [M, M, A]      # spec: up2 0-1 mixer / 2 attention
    assert _kinds(net.layers_up[3]) == [M]            # up3 mixer only
    assert [l.window_size for l in net.layers_up] == [7, 14, 8, 8]
    assert net.layers_up[0].upsample is None and all(l.upsample is not None for l in net.layers_up[1:])
    assert net.levels[3].downsample is None and all(l.downsample is not None for l in net.levels[:3])


def test_mixer_and_attention_block_placement_paper():
    net = meta_model("hmt_unet_paper").hmtunet
    assert _kinds(net.layers_up[0]) == ["mixer", "mixer", "attn", "attn"]
    assert _kinds(net.layers_up[1]) == ["mixer"] * 4 + ["attn"] * 4
    assert _kinds(net.layers_up[2]) == ["conv"] * 3
    assert _kinds(net.layers_up[3]) == ["conv"]


def test_drop_path_rates_follow_upstream_slices():
    net = meta_model("hmt_unet").hmtunet
    dpr = torch.linspace(0, 0.2, 16).tolist()
    rate = lambda b: b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
    assert [rate(b) for l in net.levels for b in l.blocks] == pytest.approx(dpr)
    # decoder: un-reversed slices of the encoder linspace with the decoder depths [4, 8, 3, 1]
    assert [rate(b) for l in net.layers_up for b in l.blocks] == pytest.approx(dpr)


# ------------------------------------------------------------------------------------------------ forward

@pytest.mark.parametrize("in_ch", [1, 3])
@pytest.mark.parametrize("classes", [1, 4, 9])
@pytest.mark.parametrize("decoder", ["code", "paper"])
def test_output_shapes_small_inputs(in_ch, classes, decoder):
    m = HMTUNet(in_channels=in_ch, num_classes=classes, decoder=decoder, **TOY).eval()
    with torch.no_grad():
        y = m(torch.randn(2, in_ch, 64, 32))
    assert y.shape == (2, classes, 64, 32)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("size", [224, 256])
@pytest.mark.parametrize("name", ["hmt_unet", "hmt_unet_paper"])
def test_full_size_inputs(name, size):
    m = create_model(name, in_channels=1, num_classes=4, **TOY_UPSTREAM_WINDOWS).eval()
    with torch.no_grad():
        y = m(torch.randn(1, 1, size, size))
    assert y.shape == (1, 4, size, size)
    assert torch.isfinite(y).all()


def test_256_pads_hybrid_levels_to_four_windows(monkeypatch):
    import mambaseg.models.blocks.mambavision as mv
    seen = []
    real = mv.window_partition
    monkeypatch.setattr(mv, "window_partition", lambda x, ws: seen.append((tuple(x.shape[-2:]), ws)) or real(x, ws))
    m = create_model("hmt_unet", **TOY_UPSTREAM_WINDOWS).eval()
    with torch.no_grad():
        m(torch.randn(1, 3, 256, 256))
    enc = seen[:2]
    assert enc == [((28, 28), 14), ((14, 14), 7)]  # 16x16 -> 28x28 (4 windows of 196), 8x8 -> 14x14 (4 of 49)
    seen.clear()
    with torch.no_grad():
        m(torch.randn(1, 3, 224, 224))
    assert seen[:2] == [((14, 14), 14), ((7, 7), 7)]  # 224 tiles: one window each


def test_returns_logits_not_probabilities():
    m = HMTUNet(num_classes=1, **TOY).eval()
    with torch.no_grad():
        m.hmtunet.final_conv.weight.zero_()
        m.hmtunet.final_conv.bias.fill_(3.0)
        y = m(torch.randn(1, 3, 32, 32))
    torch.testing.assert_close(y, torch.full_like(y, 3.0))  # sigmoid would give 0.9526


def test_single_channel_input_works_and_stem_takes_it():
    m = meta_model("hmt_unet", in_channels=1)
    assert tuple(m.hmtunet.patch_embed.conv_down[0].weight.shape) == (32, 1, 3, 3)
    m = HMTUNet(in_channels=1, **TOY).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 1, 32, 64)).shape == (1, 1, 32, 64)


@pytest.mark.parametrize("decoder", ["code", "paper"])
@pytest.mark.parametrize("cfg", [dict(TOY, layer_scale=0.1, layer_scale_conv=0.1), TOY_PADDED])
def test_gradients_reach_every_parameter(decoder, cfg):
    torch.manual_seed(0)
    m = HMTUNet(in_channels=1, num_classes=3, decoder=decoder, **cfg).train()
    y = m(torch.randn(2, 1, 64, 64))
    (y * torch.randn_like(y)).sum().backward()
    no_grad = [k for k, p in m.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert no_grad == []


def test_bad_inputs_give_clear_errors():
    m = HMTUNet(**TOY)
    with pytest.raises(ValueError, match="divisible by 32"):
        m(torch.randn(1, 3, 100, 96))
    with pytest.raises(ValueError, match="in_channels=1"):
        m(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="4 entries"):
        HMTUNet(depths=[1, 2, 3])
    with pytest.raises(ValueError, match="num_heads"):
        HMTUNet(dim=16, num_heads=[3, 2, 2, 2])


# ------------------------------------------------------------------------------------------------ pretrained

def _meta_checkpoint(shapes):
    with torch.device("meta"):
        return {k: torch.empty(v, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
                for k, v in shapes.items()}


def test_load_mambavision_t_counts_like_upstream():
    """Key bookkeeping at MambaVision-T size (meta tensors: shapes and names only)."""
    cfg = HMT_UNET_SIZES["tiny"]
    sd = _meta_checkpoint(mambavision_classifier_shapes(cfg["dim"], cfg["in_dim"], cfg["depths"]))
    assert len(sd) == 252  # spec §4.5
    m = meta_model("hmt_unet")
    rep = load_mambavision_checkpoint(m, sd, PretrainedReport())
    assert len(rep.loaded) == 245 and len(rep.mirrored) == 190  # upstream load_from: 245, then 190
    assert sorted(rep.unused) == sorted(k for k in sd if k.startswith(("norm.", "head.")))
    assert rep.mismatched == []
    # upstream mirrors by name only: BN affine of the encoder ConvBlocks -> LayerNorm affine of decoder Blocks
    assert "hmtunet.layers_up.3.blocks.0.norm1.weight" in rep.mirrored
    assert len([k for k in rep.mirrored if k.startswith(("hmtunet.layers_up.2", "hmtunet.layers_up.3"))]) == 16
    # everything else is reported with a reason
    own = m.state_dict()
    assert set(rep.loaded) | set(rep.mirrored) | set(rep.missing) == set(own)
    assert "PatchExpand2D" in rep.missing["hmtunet.layers_up.1.upsample.expand.weight"]
    assert "head" in rep.missing["hmtunet.final_conv.weight"]
    assert rep.missing["hmtunet.layers_up.3.blocks.0.mixer.in_proj.weight"].startswith("decoder block")
    # the paper variant mirrors the whole ConvBlocks: 174 hybrid keys (levels 3, 2) + 4 ConvBlocks x 14 keys
    rep_p = load_mambavision_checkpoint(meta_model("hmt_unet_paper"), sd, PretrainedReport())
    assert len(rep_p.loaded) == 245 and len(rep_p.mirrored) == 174 + 4 * 14


@pytest.mark.parametrize("decoder", ["code", "paper"])
def test_load_pretrained_from_file_copies_values(tmp_path, decoder):
    sd = synthetic_checkpoint(mambavision_classifier_shapes(TOY["dim"], TOY["in_dim"], TOY["depths"]), seed=1)
    path = tmp_path / "mambavision_toy.pth.tar"
    torch.save({"state_dict": sd, "epoch": 300}, path)
    m = create_model("hmt_unet" if decoder == "code" else "hmt_unet_paper", pretrained=str(path), **TOY)
    rep = m.pretrained_report
    enc = mambavision_encoder_shapes(TOY["dim"], TOY["in_dim"], TOY["depths"])
    assert sorted(rep.loaded) == sorted("hmtunet." + k for k in enc)
    hybrid = [k for k in enc if k.startswith(("levels.2.", "levels.3.")) and ".downsample." not in k]
    conv = [k for k in enc if k.startswith(("levels.0.", "levels.1.")) and ".downsample." not in k]
    if decoder == "code":  # only the BN weight/bias names exist in the decoder's LayerNorms
        conv = [k for k in conv if k.endswith(("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"))]
    assert len(rep.mirrored) == len(hybrid) + len(conv)
    own = m.state_dict()
    for k in enc:
        torch.testing.assert_close(own["hmtunet." + k], sd[k].to(own["hmtunet." + k].dtype))
    for k in hybrid + conv:
        i = int(k.split(".")[1])
        mk = f"hmtunet.layers_up.{3 - i}." + k.split(".", 2)[2]
        torch.testing.assert_close(own[mk], sd[k].to(own[mk].dtype))


def test_single_channel_model_loads_rgb_stem_as_grey_equivalent():
    cfg = dict(TOY)
    sd = synthetic_checkpoint(mambavision_classifier_shapes(cfg["dim"], cfg["in_dim"], cfg["depths"]), seed=3)
    torch.manual_seed(0)
    m3 = HMTUNet(in_channels=3, **cfg)
    m1 = HMTUNet(in_channels=1, **cfg)
    load_mambavision_checkpoint(m3, sd, PretrainedReport())
    rep1 = load_mambavision_checkpoint(m1, sd, PretrainedReport())
    assert "hmtunet.patch_embed.conv_down.0.weight" in rep1.loaded and rep1.mismatched == []
    # not-loaded parts (decoder upsample, head) differ by random init: copy them over
    s3 = m3.state_dict()
    m1.load_state_dict({k: (v if k == "hmtunet.patch_embed.conv_down.0.weight" else s3[k])
                        for k, v in m1.state_dict().items()})
    m1.eval(), m3.eval()
    grey = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m1(grey), m3(grey.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)


def test_wrong_checkpoints_are_rejected_without_touching_the_model(tmp_path):
    m = HMTUNet(**TOY)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    # another MambaVision size: named in the error, with the fix
    s = HMT_UNET_SIZES["small"]
    sd_s = _meta_checkpoint(mambavision_classifier_shapes(s["dim"], s["in_dim"], s["depths"]))
    with pytest.raises(PretrainedMismatchError, match="size='small'"):
        load_mambavision_checkpoint(meta_model("hmt_unet"), sd_s, PretrainedReport())
    p = tmp_path / "wide.pth"
    torch.save({"state_dict": synthetic_checkpoint(mambavision_classifier_shapes(24, 8, [1, 1, 2, 2]))}, p)
    with pytest.raises(PretrainedMismatchError, match="dim=24"):
        load_pretrained(m, str(p))
    # a VMamba (VM-UNet) checkpoint
    p2 = tmp_path / "vmamba.pth"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(96, 3, 4, 4),
                          "layers.0.blocks.0.ln_1.weight": torch.zeros(96)}}, p2)
    with pytest.raises(PretrainedMismatchError, match="not a MambaVision"):
        load_pretrained(m, str(p2))
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(FileNotFoundError):
        load_pretrained(m, str(tmp_path / "missing.pth"))


def test_full_hmt_unet_state_dict_loads_through_load_pretrained(tmp_path):
    src = HMTUNet(**TOY)
    p = tmp_path / "seg.pth"
    torch.save({"model": src.state_dict()}, p)
    dst = HMTUNet(**TOY)
    rep = load_pretrained(dst, str(p))
    assert len(rep.loaded) == len(src.state_dict()) and not rep.missing
    for k, v in dst.state_dict().items():
        assert torch.equal(v, src.state_dict()[k])


@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 256])
def test_full_tiny_forward_backward(size):
    m = create_model("hmt_unet")
    y = m(torch.randn(1, 3, size, size))
    assert y.shape == (1, 1, size, size)
    y.mean().backward()
    assert all(p.grad is not None for p in m.parameters())
