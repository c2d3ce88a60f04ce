"""VM-UNetV2: parameter counts measured from upstream (spec §2.2), the unused stage 4 and unused heads,
use_last_stage / deep_supervision switches, SDI semantics, key layout, shapes, gradients, modes."""

import pytest
import torch
import torch.nn.functional as F

from mambaseg.models import create_model, list_models, model_info
from mambaseg.models.networks.vmunet_v2 import SDI, VMUNetV2

SS2D_KEYS = ["in_proj.weight", "conv2d.weight", "conv2d.bias", "x_proj_weight", "dt_projs_weight",
             "dt_projs_bias", "A_logs", "Ds", "out_norm.weight", "out_norm.bias", "out_proj.weight"]
SMALL = dict(depths=[1, 1, 1, 1])


def meta_model(name, **kwargs):
    """Build on the meta device: structure, names, shapes and counts without allocating or initialising."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def n_params(m, prefix=""):
    return sum(p.numel() for n, p in m.named_parameters() if n.startswith(prefix))


def expected_v2_keys(depths, num_stages=4):
    keys = ["patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias"]
    for i in range(num_stages):
        for j in range(depths[i]):
            keys += [f"layers.{i}.blocks.{j}.ln_1.weight", f"layers.{i}.blocks.{j}.ln_1.bias"]
            keys += [f"layers.{i}.blocks.{j}.self_attention.{k}" for k in SS2D_KEYS]
        if i < 3:
            keys += [f"layers.{i}.downsample.{k}" for k in ("norm.weight", "norm.bias", "reduction.weight")]
    keys = ["vmunet." + k for k in keys]
    for i in range(1, 5):
        keys += [f"ca_{i}.fc1.weight", f"ca_{i}.fc2.weight", f"sa_{i}.conv1.weight", f"Translayer_{i}.conv.weight"]
        keys += [f"Translayer_{i}.bn.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                                    "num_batches_tracked")]
        keys += [f"sdi_{i}.convs.{c}.{k}" for c in range(4) for k in ("weight", "bias")]
    keys += [f"seg_outs.{i}.{k}" for i in range(4) for k in ("weight", "bias")]
    keys += [f"deconv{i}.weight" for i in range(2, 6)] + ["deconv6.weight", "deconv6.bias"]
    return set(keys)


def test_registered_with_repo_defaults():
    assert "vmunet_v2" in list_models()
    assert model_info("vmunet_v2").default_size == 256 == VMUNetV2.default_input_size
    m = meta_model("vmunet_v2")
    assert m.vmunet.depths == [2, 2, 9, 2] and m.deep_supervision and m.use_last_stage


@pytest.mark.parametrize("depths,total", [([2, 2, 9, 2], 22_770_934), ([2, 2, 2, 2], 14_400_502)])
def test_parameter_counts_match_upstream(depths, total):
    m = meta_model("vmunet_v2", depths=depths)
    assert n_params(m) == total
    assert total - n_params(m, "vmunet.") == 648_022              # attention + SDI + decoder (spec §2.2)


def test_never_updated_parameter_count_matches_spec():
    m = meta_model("vmunet_v2")
    unused = n_params(m, "vmunet.layers.3.") + n_params(m, "deconv5.") + n_params(m, "seg_outs.0.") \
        + n_params(m, "seg_outs.1.")
    assert (n_params(m, "vmunet.layers.3."), unused) == (8_911_872, 8_948_834)


def test_use_last_stage_false_drops_stage_four():
    m = meta_model("vmunet_v2", use_last_stage=False)
    assert len(m.vmunet.layers) == 3
    assert n_params(m) == 22_770_934 - 8_911_872


def test_state_dict_keys_match_upstream_layout():
    assert set(meta_model("vmunet_v2").state_dict()) == expected_v2_keys([2, 2, 9, 2])
    assert set(meta_model("vmunet_v2", use_last_stage=False).state_dict()) == expected_v2_keys([2, 2, 9, 2], 3)


def test_dropping_stage_four_does_not_change_the_output():
    """Upstream discards stage 4's output, so a model without it computes the same function."""
    torch.manual_seed(0)
    full = create_model("vmunet_v2", **SMALL).eval()
    lean = create_model("vmunet_v2", use_last_stage=False, **SMALL).eval()
    res = lean.load_state_dict(full.state_dict(), strict=False)
    assert not res.missing_keys and res.unexpected_keys and \
        all(k.startswith("vmunet.layers.3.") for k in res.unexpected_keys)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(full(x), lean(x))


@pytest.mark.parametrize("use_last_stage,deep_supervision,unused_prefixes", [
    (True, True, ("vmunet.layers.3.", "deconv5.", "seg_outs.0.", "seg_outs.1.")),
    (False, True, ("deconv5.", "seg_outs.0.", "seg_outs.1.")),
    (False, False, ("deconv5.", "seg_outs.0.", "seg_outs.1.", "seg_outs.2.", "deconv6.")),
])
def test_gradients_reach_exactly_the_used_parameters(use_last_stage, deep_supervision, unused_prefixes):
    torch.manual_seed(0)
    m = create_model("vmunet_v2", use_last_stage=use_last_stage, deep_supervision=deep_supervision,
                     **SMALL).train()
    m(torch.randn(2, 3, 64, 64)).square().mean().backward()
    for name, p in m.named_parameters():
        if name.startswith(unused_prefixes):
            assert p.grad is None, f"{name} should get no gradient (unused upstream)"
        else:
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name


def test_deep_supervision_adds_deconvolved_h8_head():
    """Output = seg3 + deconv6(seg2 up x4); with deconv6 zeroed it equals the plain seg3 output."""
    torch.manual_seed(0)
    ds = create_model("vmunet_v2", **SMALL).eval()
    plain = create_model("vmunet_v2", deep_supervision=False, **SMALL).eval()
    plain.load_state_dict(ds.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(ds(x), plain(x))
        ds.deconv6.weight.zero_()
        ds.deconv6.bias.fill_(0.25)
        torch.testing.assert_close(ds(x), plain(x) + 0.25)


def test_sdi_resizes_every_level_to_the_anchor_and_multiplies():
    torch.manual_seed(0)
    sdi = SDI(4)
    xs = [torch.randn(1, 4, s, s) for s in (8, 4, 2, 1)]
    anchor = xs[1]
    ref = (sdi.convs[0](F.adaptive_avg_pool2d(xs[0], 4)) * sdi.convs[1](xs[1])
           * sdi.convs[2](F.interpolate(xs[2], size=(4, 4), mode="bilinear", align_corners=True))
           * sdi.convs[3](F.interpolate(xs[3], size=(4, 4), mode="bilinear", align_corners=True)))
    torch.testing.assert_close(sdi(xs, anchor), ref)


def test_batchnorm_modes_and_eval_determinism():
    torch.manual_seed(0)
    m = create_model("vmunet_v2", drop_path_rate=0.0, **SMALL)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tr = m.train()(x)
        m.eval()
        a, b = m(x), m(x)
    assert torch.equal(a, b)
    assert not torch.allclose(tr, a)                   # BatchNorm: batch statistics vs running statistics
