"""Mamba-UNet: parameter counts measured from upstream (spec §3.2), key layout from the spec, Swin-UNet-style
decoder wiring (concat after upsampling), drop-path reuse, shapes, gradients, modes, input checks."""

import pytest
import torch

from mambaseg.models import create_model, list_models, model_info
from mambaseg.models.networks.mamba_unet import MambaUNet

SS2D_KEYS = ["in_proj.weight", "conv2d.weight", "conv2d.bias", "x_proj_weight", "dt_projs_weight",
             "dt_projs_bias", "A_logs", "Ds", "out_norm.weight", "out_norm.bias", "out_proj.weight"]
SMALL = dict(depths=[1, 1, 1, 1])


def meta_model(name, **kwargs):
    """Build on the meta device: structure, names, shapes and counts without allocating or initialising."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def n_params(m, prefix=""):
    return sum(p.numel() for n, p in m.named_parameters() if n.startswith(prefix))


def block_keys(prefix):
    return [f"{prefix}ln_1.weight", f"{prefix}ln_1.bias"] + [f"{prefix}self_attention.{k}" for k in SS2D_KEYS]


def expected_keys(depths):
    """Spec §3.1/§3.4 layout, wrapped in `mamba_unet.` as upstream's MambaUnet."""
    keys = ["patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias"]
    for i, d in enumerate(depths):
        keys += [k for j in range(d) for k in block_keys(f"layers.{i}.blocks.{j}.")]
        if i < 3:
            keys += [f"layers.{i}.downsample.{k}" for k in ("norm.weight", "norm.bias", "reduction.weight")]
    keys += ["layers_up.0.expand.weight", "layers_up.0.norm.weight", "layers_up.0.norm.bias"]
    for i in (1, 2, 3):
        keys += [k for j in range(depths[3 - i]) for k in block_keys(f"layers_up.{i}.blocks.{j}.")]
        if i < 3:
            keys += [f"layers_up.{i}.upsample.{k}" for k in ("expand.weight", "norm.weight", "norm.bias")]
        keys += [f"concat_back_dim.{i}.weight", f"concat_back_dim.{i}.bias"]
    keys += ["norm.weight", "norm.bias", "norm_up.weight", "norm_up.bias", "up.expand.weight", "up.norm.weight",
             "up.norm.bias", "output.weight"]
    return {"mamba_unet." + k for k in keys}


def test_registered_with_paper_default_size():
    assert "mamba_unet" in list_models()
    assert model_info("mamba_unet").default_size == 224 == MambaUNet.default_input_size
    assert "2402.05079" in model_info("mamba_unet").paper


@pytest.mark.parametrize("n_cls,kwargs,total", [(4, {}, 19_121_664), (2, {}, 19_121_472),
                                                (4, {"depths": [2, 2, 9, 2]}, 35_862_528)])
def test_parameter_counts_match_upstream(n_cls, kwargs, total):
    assert n_params(meta_model("mamba_unet", num_classes=n_cls, **kwargs)) == total


def test_encoder_plus_bottleneck_is_13_75m():
    m = meta_model("mamba_unet", num_classes=4)
    enc = n_params(m, "mamba_unet.patch_embed.") + n_params(m, "mamba_unet.layers.") + n_params(m, "mamba_unet.norm.")
    assert round(enc / 1e6, 2) == 13.75


def test_state_dict_keys_match_upstream_layout():
    sd = meta_model("mamba_unet", num_classes=4).state_dict()
    assert set(sd) == expected_keys([2, 2, 2, 2])
    assert len(sd) == 218                                   # spec §3.4
    assert sd["mamba_unet.output.weight"].shape == (4, 96, 1, 1)
    assert sd["mamba_unet.up.expand.weight"].shape == (1536, 96)
    assert sd["mamba_unet.concat_back_dim.1.weight"].shape == (384, 768)


def test_decoder_reuses_encoder_drop_path_rates_mirrored():
    core = meta_model("mamba_unet").mamba_unet
    enc = [[b.drop_path.drop_prob for b in l.blocks] for l in core.layers]
    assert [r for s in enc for r in s] == pytest.approx([0.2 * i / 7 for i in range(8)])
    for i in (1, 2, 3):
        assert [b.drop_path.drop_prob for b in core.layers_up[i].blocks] == pytest.approx(enc[3 - i])


def test_skips_concatenated_after_upsampling():
    """Spec §3.1: decoder stage i (>= 1) gets concat_back_dim[i](cat[x, x_downsample[3-i]])."""
    torch.manual_seed(0)
    core = create_model("mamba_unet", **SMALL).eval().mamba_unet
    seen = {}
    for i, l in enumerate(core.layers):
        l.register_forward_pre_hook(lambda mod, a, i=i: seen.__setitem__(("enc_in", i), a[0]))
    for i, l in enumerate(core.layers_up):
        l.register_forward_pre_hook(lambda mod, a, i=i: seen.__setitem__(("up_in", i), a[0]))
        l.register_forward_hook(lambda mod, a, out, i=i: seen.__setitem__(("up_out", i), out))
    with torch.no_grad():
        core(torch.randn(1, 3, 64, 64))
    for i in (1, 2, 3):
        fused = core.concat_back_dim[i](torch.cat([seen[("up_out", i - 1)], seen[("enc_in", 3 - i)]], dim=-1))
        torch.testing.assert_close(seen[("up_in", i)], fused)
    assert seen[("up_out", 3)].shape == (1, 16, 16, 96)     # last decoder stage: no upsampling


def test_one_channel_model_has_one_channel_patch_embedding():
    assert create_model("mamba_unet", in_channels=1, **SMALL).mamba_unet.patch_embed.proj.in_channels == 1
