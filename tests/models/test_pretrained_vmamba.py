"""VMamba v0 checkpoints into VM-UNet / VM-UNetV2 / Mamba-UNet.

Synthetic checkpoints are built from the spec's v0 key layout and shapes (spec §0 table, §1.4), never from our
model; every tensor holds one distinct constant (a stride-0 expanded scalar, so full-size files stay tiny), which
lets the tests check that each model tensor received exactly the checkpoint tensor the upstream mapping names.
Key counts come from the spec's simulation of the upstream loaders (117 then 91; 208; 197 of 218).
"""

import math
import re

import pytest
import torch

from mambaseg.models import PretrainedMismatchError, create_model, load_pretrained
from mambaseg.models.pretrained_vmamba import checkpoint_filter_fn

SS2D_KEYS = ["in_proj.weight", "conv2d.weight", "conv2d.bias", "x_proj_weight", "dt_projs_weight",
             "dt_projs_bias", "A_logs", "Ds", "out_norm.weight", "out_norm.bias", "out_proj.weight"]


def v0_shapes(depths, dims=(96, 192, 384, 768), d_state=16, in_ch=3, n_cls=1000):
    """Key -> shape of a VMamba v0 classifier (spec §0 parameter table, §1.4 key pattern)."""
    s = {"patch_embed.proj.weight": (dims[0], in_ch, 4, 4), "patch_embed.proj.bias": (dims[0],),
         "patch_embed.norm.weight": (dims[0],), "patch_embed.norm.bias": (dims[0],)}
    N = d_state
    for i, (C, depth) in enumerate(zip(dims, depths)):
        D, R = 2 * C, math.ceil(C / 16)
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            s.update({p + "ln_1.weight": (C,), p + "ln_1.bias": (C,)})
            a = p + "self_attention."
            s.update({a + "in_proj.weight": (2 * D, C), a + "conv2d.weight": (D, 1, 3, 3), a + "conv2d.bias": (D,),
                      a + "x_proj_weight": (4, R + 2 * N, D), a + "dt_projs_weight": (4, D, R),
                      a + "dt_projs_bias": (4, D), a + "A_logs": (4 * D, N), a + "Ds": (4 * D,),
                      a + "out_norm.weight": (D,), a + "out_norm.bias": (D,), a + "out_proj.weight": (C, D)})
        if i < len(depths) - 1:
            s.update({f"layers.{i}.downsample.norm.weight": (4 * C,), f"layers.{i}.downsample.norm.bias": (4 * C,),
                      f"layers.{i}.downsample.reduction.weight": (2 * C, 4 * C)})
    s.update({"norm.weight": (dims[-1],), "norm.bias": (dims[-1],), "head.weight": (n_cls, dims[-1]),
              "head.bias": (n_cls,)})
    return s


def synthetic(shapes):
    """Each tensor is the constant (its index + 1) / 1000, stored stride-0."""
    return {k: torch.full((1,), (i + 1) / 1000.0).expand(shape) for i, (k, shape) in enumerate(shapes.items())}


SMALL_V0 = v0_shapes([2, 2, 27, 2])     # vmamba_small_e238_ema.pth
TINY_V0 = v0_shapes([2, 2, 9, 2])       # vmamba_tiny_e292.pth


def save(tmp_path, sd, name="ckpt.pth", wrap=True):
    path = tmp_path / name
    torch.save({"model": sd} if wrap else sd, path)
    return str(path)


def value_of(t):
    return t.flatten()[0].item()


def assert_all_equal(t, v):
    assert torch.all(t == torch.tensor(v, dtype=t.dtype)), (t.flatten()[:3], v)


def test_synthetic_checkpoints_have_the_spec_key_counts():
    assert len(SMALL_V0) == 446 and len(TINY_V0) == 212


# ---- VM-UNet -------------------------------------------------------------------------------------------------
def test_vmunet_paper_config_from_small_117_then_91(tmp_path):
    sd = synthetic(SMALL_V0)
    m = create_model("vmunet")
    rep = load_pretrained(m, save(tmp_path, sd))
    assert (len(rep.loaded), len(rep.mirrored), len(rep.missing)) == (117, 91, 14)
    assert not rep.mismatched
    assert len(rep.unused) == 446 - 117 and "head.weight" in rep.unused and "norm.weight" in rep.unused
    own = m.state_dict()
    for k in rep.loaded:                                      # vmunet.<ckpt key>
        assert_all_equal(own[k], value_of(sd[k[len("vmunet."):]]))
    for k in rep.mirrored:                                    # layers_up.{3-X} <- layers.X
        m_ = re.match(r"vmunet\.layers_up\.(\d)\.blocks\.(\d+)\.(.+)", k)
        src = f"layers.{3 - int(m_.group(1))}.blocks.{m_.group(2)}.{m_.group(3)}"
        assert_all_equal(own[k], value_of(sd[src]))
    reasons = rep.missing
    assert sum("upsampl" in r for k, r in reasons.items() if ".upsample." in k) == 9
    assert {k for k in reasons if "head" in reasons[k]} == {
        "vmunet.final_up.expand.weight", "vmunet.final_up.norm.weight", "vmunet.final_up.norm.bias",
        "vmunet.final_conv.weight", "vmunet.final_conv.bias"}


def test_vmunet_deeper_decoder_mirrors_more_blocks(tmp_path):
    m = create_model("vmunet", depths=[1, 1, 3, 1], depths_decoder=[1, 3, 1, 1])
    rep = load_pretrained(m, save(tmp_path, synthetic(SMALL_V0)))
    assert len(rep.loaded) == 4 + 6 * 13 + 9
    assert len(rep.mirrored) == 6 * 13              # layers_up.1 takes blocks 0-2 of stage 2


def test_vmunet_reports_blocks_missing_from_a_shallower_checkpoint(tmp_path):
    m = create_model("vmunet", depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 3])
    rep = load_pretrained(m, save(tmp_path, synthetic(TINY_V0)))
    missing_blk = [k for k in rep.missing if k.startswith("vmunet.layers_up.3.blocks.2.")]
    assert len(missing_blk) == 13 and all("does not have" in rep.missing[k] for k in missing_blk)


# ---- VM-UNetV2 -----------------------------------------------------------------------------------------------
def test_vmunet_v2_encoder_only_208(tmp_path):
    sd = synthetic(SMALL_V0)
    m = create_model("vmunet_v2")
    rep = load_pretrained(m, save(tmp_path, sd))
    assert (len(rep.loaded), len(rep.mirrored)) == (208, 0)
    assert all(k.startswith("vmunet.") for k in rep.loaded)
    assert set(rep.missing) == {k for k in m.state_dict() if not k.startswith("vmunet.")}
    assert all("deliberately not mirrored" in r for r in rep.missing.values())
    own = m.state_dict()
    for k in rep.loaded:
        assert_all_equal(own[k], value_of(sd[k[len("vmunet."):]]))


def test_vmunet_v2_without_last_stage_ignores_it(tmp_path):
    m = create_model("vmunet_v2", use_last_stage=False)
    rep = load_pretrained(m, save(tmp_path, synthetic(SMALL_V0)))
    assert len(rep.loaded) == 208 - 2 * 13
    assert "layers.3.blocks.0.ln_1.weight" in rep.unused


# ---- Mamba-UNet ----------------------------------------------------------------------------------------------
def test_mamba_unet_from_tiny_197_of_218(tmp_path):
    sd = synthetic(TINY_V0)
    m = create_model("mamba_unet", num_classes=4)
    rep = load_pretrained(m, save(tmp_path, sd))
    assert len(rep.loaded) + len(rep.mirrored) == 197 and len(m.state_dict()) == 218
    assert (len(rep.loaded), len(rep.mirrored)) == (119, 78)
    own = m.state_dict()
    assert_all_equal(own["mamba_unet.norm.weight"], value_of(sd["norm.weight"]))
    assert_all_equal(own["mamba_unet.layers_up.1.blocks.1.self_attention.A_logs"],
                     value_of(sd["layers.2.blocks.1.self_attention.A_logs"]))
    prefixes = ("concat_back_dim.", "layers_up.0.", "layers_up.1.upsample.", "layers_up.2.upsample.", "norm_up.",
                "up.", "output.")
    assert set(rep.missing) == {k for k in own if k[len("mamba_unet."):].startswith(prefixes)}
    assert len(rep.missing) == 21


# ---- later VMamba key layout, adaptations, errors ------------------------------------------------------------
def renamed_layout(sd):
    """The renames of later VMamba releases listed in spec §1.4 (v0 -> new)."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^patch_embed\.proj\.", "patch_embed.0.", k)
        k = re.sub(r"^patch_embed\.norm\.", "patch_embed.2.", k)
        k = re.sub(r"^(layers\.\d+\.blocks\.\d+)\.ln_1\.", r"\1.norm.", k)
        k = re.sub(r"^(layers\.\d+\.blocks\.\d+)\.self_attention\.", r"\1.op.", k)
        k = re.sub(r"^norm\.", "classifier.norm.", k)
        k = re.sub(r"^head\.", "classifier.head.", k)
        out[k] = v
    return out


def test_filter_fn_maps_later_layout_back_to_v0():
    sd = synthetic(TINY_V0)
    new = renamed_layout(sd)
    assert "layers.0.blocks.0.op.out_norm.weight" in new and "patch_embed.0.weight" in new
    back = checkpoint_filter_fn({"module." + k: v for k, v in new.items()})
    assert list(back) == list(sd)


def test_later_layout_loads_like_v0(tmp_path):
    sd = synthetic(TINY_V0)
    a, b = create_model("mamba_unet", depths=[1, 1, 2, 1]), create_model("mamba_unet", depths=[1, 1, 2, 1])
    ra = load_pretrained(a, save(tmp_path, sd, "v0.pth"))
    rb = load_pretrained(b, save(tmp_path, renamed_layout(sd), "new.pth", wrap=False))
    assert (ra.loaded, ra.mirrored) == (rb.loaded, rb.mirrored)
    sa, sb = a.state_dict(), b.state_dict()
    for k in ra.loaded + ra.mirrored:
        assert torch.equal(sa[k], sb[k])


def test_one_channel_model_sums_rgb_input_conv(tmp_path):
    """Summing the RGB kernels == feeding the gray image repeated to RGB (upstream's approach)."""
    torch.manual_seed(0)
    sd = synthetic(TINY_V0)
    sd["patch_embed.proj.weight"] = torch.randn(96, 3, 4, 4)
    path = save(tmp_path, sd)
    rgb = create_model("vmunet", depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1])
    gray = create_model("vmunet", in_channels=1, depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1])
    load_pretrained(rgb, path)
    rep = load_pretrained(gray, path)
    assert "vmunet.patch_embed.proj.weight" in rep.loaded and not rep.mismatched
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(gray.vmunet.patch_embed(x), rgb.vmunet.patch_embed(x.repeat(1, 3, 1, 1)))


def test_other_channel_count_reports_input_conv_mismatch(tmp_path):
    m = create_model("vmunet", in_channels=2, depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1])
    rep = load_pretrained(m, save(tmp_path, synthetic(TINY_V0)))
    assert rep.mismatched == [("vmunet.patch_embed.proj.weight", (96, 3, 4, 4), (96, 2, 4, 4))]
    assert "input conv" in rep.missing["vmunet.patch_embed.proj.weight"]
    assert len(rep.loaded) == 4 + 4 * 13 + 9 - 1


def unchanged(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["swin", "vmamba_v2_blocks", "wider", "conv_downsample"])
def test_checkpoint_of_another_architecture_raises_before_loading(tmp_path, kind):
    if kind == "swin":          # Swin-T shares patch_embed/downsample names and shapes, but has attention blocks
        sd = {k.replace("self_attention.in_proj", "attn.qkv"): v for k, v in synthetic(TINY_V0).items()
              if "self_attention" not in k or "in_proj" in k}
    elif kind == "vmamba_v2_blocks":   # later VMamba: blocks with an MLP
        sd = synthetic(TINY_V0)
        sd["layers.0.blocks.0.mlp.fc1.weight"] = torch.zeros(384, 96)
    elif kind == "wider":       # VMamba-base widths
        sd = synthetic(v0_shapes([2, 2, 27, 2], dims=(128, 256, 512, 1024)))
    else:                       # conv downsampling instead of PatchMerging2D
        sd = {re.sub(r"downsample\.reduction\.", "downsample.1.", k): v for k, v in synthetic(TINY_V0).items()}
    m = create_model("vmunet", depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1])
    before = unchanged(m)
    with pytest.raises(PretrainedMismatchError, match="architecture|another|not a VMamba"):
        load_pretrained(m, save(tmp_path, sd))
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_full_segmentation_state_dict_gets_a_hint(tmp_path):
    m = create_model("mamba_unet", depths=[1, 1, 1, 1])
    with pytest.raises(PretrainedMismatchError, match="load_state_dict"):
        load_pretrained(m, save(tmp_path, m.state_dict(), wrap=False))


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_pretrained(create_model("vmunet_v2", depths=[1, 1, 1, 1]), str(tmp_path / "nope.pth"))


def test_create_model_pretrained_keeps_the_report(tmp_path):
    m = create_model("vmunet", pretrained=save(tmp_path, synthetic(SMALL_V0)))
    assert (len(m.pretrained_report.loaded), len(m.pretrained_report.mirrored)) == (117, 91)
