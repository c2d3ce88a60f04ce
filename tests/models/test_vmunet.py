"""VM-UNet: parameter counts measured from upstream (spec §1.2), key layout from the spec, defaults, shapes,
skip wiring, gradients, modes, input checks."""

import pytest
import torch

from mambaseg.models import create_model, list_models, model_info
from mambaseg.models.networks.vmunet import VMUNet

SS2D_KEYS = ["in_proj.weight", "conv2d.weight", "conv2d.bias", "x_proj_weight", "dt_projs_weight",
             "dt_projs_bias", "A_logs", "Ds", "out_norm.weight", "out_norm.bias", "out_proj.weight"]
SMALL = dict(depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1])


def block_keys(prefix):
    return [f"{prefix}ln_1.weight", f"{prefix}ln_1.bias"] + [f"{prefix}self_attention.{k}" for k in SS2D_KEYS]


def expected_vmunet_keys(depths, depths_decoder):
    """Spec §1.1/§1.4 layout, wrapped in `vmunet.` as upstream's VMUNet."""
    keys = ["patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias"]
    for i, d in enumerate(depths):
        for j in range(d):
            keys += block_keys(f"layers.{i}.blocks.{j}.")
        if i < 3:
            keys += [f"layers.{i}.downsample.norm.weight", f"layers.{i}.downsample.norm.bias",
                     f"layers.{i}.downsample.reduction.weight"]
    for i, d in enumerate(depths_decoder):
        for j in range(d):
            keys += block_keys(f"layers_up.{i}.blocks.{j}.")
        if i > 0:
            keys += [f"layers_up.{i}.upsample.expand.weight", f"layers_up.{i}.upsample.norm.weight",
                     f"layers_up.{i}.upsample.norm.bias"]
    keys += ["final_up.expand.weight", "final_up.norm.weight", "final_up.norm.bias", "final_conv.weight",
             "final_conv.bias"]
    return {"vmunet." + k for k in keys}


def meta_model(name, **kwargs):
    """Build on the meta device: structure, names, shapes and counts without allocating or initialising."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_registered_with_paper_default_size():
    assert "vmunet" in list_models()
    assert model_info("vmunet").default_size == 256 == VMUNet.default_input_size
    assert "2402.02491" in model_info("vmunet").paper


def test_paper_config_parameter_count():
    m = meta_model("vmunet")                       # default = paper config [2,2,2,2] / [2,2,2,1]
    assert n_params(m) == 27_427_561
    assert (m.in_channels, m.num_classes) == (3, 1)


def test_upstream_class_default_parameter_count():
    m = meta_model("vmunet", depths=[2, 2, 9, 2], depths_decoder=[2, 9, 2, 2])
    assert n_params(m) == 44_273_833


def test_state_dict_keys_match_upstream_layout():
    sd = meta_model("vmunet").state_dict()
    assert set(sd) == expected_vmunet_keys([2, 2, 2, 2], [2, 2, 2, 1])
    assert len(sd) == 222                            # "model_dict 222" in the spec's load simulation
    assert sd["vmunet.final_conv.weight"].shape == (1, 24, 1, 1)
    assert sd["vmunet.layers_up.1.upsample.expand.weight"].shape == (1536, 768)


def test_upstream_shaped_state_dict_loads_strictly():
    m = create_model("vmunet", **SMALL)
    other = create_model("vmunet", **SMALL)
    m.load_state_dict(other.state_dict(), strict=True)


def test_drop_path_rates_encoder_increasing_decoder_reversed():
    core = meta_model("vmunet").vmunet
    enc = [b.drop_path.drop_prob for l in core.layers for b in l.blocks]
    dec = [b.drop_path.drop_prob for l in core.layers_up for b in l.blocks]
    assert enc == pytest.approx([0.2 * i / 7 for i in range(8)])
    assert dec == pytest.approx([0.2 * i / 6 for i in range(7)][::-1])   # layers_up.0 largest, last block 0


def test_returns_logits_not_probabilities():
    torch.manual_seed(0)
    m = create_model("vmunet", **SMALL).eval()
    with torch.no_grad():
        y = m(torch.randn(1, 3, 32, 32))
    assert y.min() < 0                               # a sigmoid output could not be negative


def test_one_channel_model_has_one_channel_patch_embedding():
    m = create_model("vmunet", in_channels=1, **SMALL)
    assert m.vmunet.patch_embed.proj.weight.shape == (96, 1, 4, 4)
    with pytest.raises(ValueError, match="expected 1 input channel"):
        m(torch.randn(1, 3, 64, 64))


def test_skips_are_added_before_each_upsampling():
    """Spec §1.1: layers_up[i] (i >= 1) receives x + skip_list[-i], skip_list = inputs of the encoder stages."""
    torch.manual_seed(0)
    core = create_model("vmunet", **SMALL).eval().vmunet
    seen = {}
    for i, l in enumerate(core.layers):
        l.register_forward_pre_hook(lambda mod, a, i=i: seen.__setitem__(("enc_in", i), a[0]))
    for i, l in enumerate(core.layers_up):
        l.register_forward_pre_hook(lambda mod, a, i=i: seen.__setitem__(("up_in", i), a[0]))
        l.register_forward_hook(lambda mod, a, out, i=i: seen.__setitem__(("up_out", i), out))
    with torch.no_grad():
        core(torch.randn(1, 3, 64, 64))
    for i in (1, 2, 3):
        torch.testing.assert_close(seen[("up_in", i)], seen[("up_out", i - 1)] + seen[("enc_in", 4 - i)])


def test_no_drop_path_means_train_equals_eval():
    torch.manual_seed(0)
    m = create_model("vmunet", drop_path_rate=0.0, **SMALL)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m.train()(x), m.eval()(x))     # no BatchNorm / dropout anywhere
