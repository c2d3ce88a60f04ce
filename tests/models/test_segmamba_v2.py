"""SegMamba-V2 against independent oracles: parameter counts of spec §2 / §8 (both configurations, and the vit /
Mamba / head split), state-dict keys and shapes of ``keys/segmamba_v2_keys.txt`` (loaded with ``strict=True``);
the tri-ordered Mamba layer against a reference written from spec §2 with the three voxel orders enumerated by
explicit loops (fp64, forward and every gradient), and a position-coded map showing the orders the Mamba sees;
forward/backward at a small size, bad inputs."""

import os

import pytest
import torch
import torch.nn as nn

from mambaseg.models import create_model, list_models, model_info
from mambaseg.models.networks.segmamba_v2 import TriOrderMambaLayer

SPEC = os.environ.get("MAMBASEG_SPEC_DIR", "/work/shared/spec")
needs_spec = pytest.mark.skipif(not os.path.isdir(os.path.join(SPEC, "keys")), reason="spec key files not present")
TINY = dict(depths=(1, 1, 1, 1), feat_size=(48, 8, 8, 8), hidden_size=8)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def meta(cin, k, **kw):
    with torch.device("meta"):
        return create_model("segmamba_v2", in_channels=cin, num_classes=k, **kw)


def test_registered_as_3d():
    assert "segmamba_v2" in list_models()
    assert model_info("segmamba_v2").default_size == 128 and model_info("segmamba_v2").extra["spatial_dims"] == 3


@pytest.mark.parametrize("cin,k,count", [(4, 4, 138_776_824), (1, 2, 138_772_694)])
def test_parameter_count_equals_the_spec(cin, k, count):
    m = meta(cin, k)
    assert n_params(m) == count
    assert n_params(m.vit) == 87_078_708 and n_params(m.vit.stages) == 2_433_024
    if (cin, k) == (4, 4):
        assert count - n_params(m.vit) == 51_698_116                  # "the same encoder1..out" as SegMamba


@needs_spec
def test_state_dict_keys_and_shapes_equal_upstreams_and_load_strictly():
    m = meta(4, 4)
    rows = [line.split("\t") for line in open(os.path.join(SPEC, "keys", "segmamba_v2_keys.txt")).read().splitlines()]
    spec = [(k, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())) for k, shape in rows]
    assert [(k, tuple(v.shape)) for k, v in m.state_dict().items()] == spec
    assert m.vit.stages[0] is None and m.vit.stages[1] is None       # no keys for stages 0 and 1
    with torch.device("meta"):
        sd = {k: torch.empty(s) for k, s in spec}
    res = m.load_state_dict(sd, strict=True, assign=True)
    assert not res.missing_keys and not res.unexpected_keys


# ------------------------------------------------------------------------------------------- the Mamba layer

def _orders(D, H, W):
    """The three voxel orders of spec §2 by explicit loops: (D, H, W) row-major; H slowest, then D, then W;
    W slowest, then H, then D."""
    return ([(d, h, w) for d in range(D) for h in range(H) for w in range(W)],
            [(d, h, w) for h in range(H) for d in range(D) for w in range(W)],
            [(d, h, w) for w in range(W) for h in range(H) for d in range(D)])


def reference(layer, x):
    out = x.clone()
    for order in _orders(*x.shape[2:]):
        t = torch.stack([x[:, :, d, h, w] for d, h, w in order], 1)    # (B, L, C)
        y = layer.mamba(layer.norm(t))
        back = torch.zeros_like(x)
        for i, (d, h, w) in enumerate(order):
            back[:, :, d, h, w] = y[:, i]
        out = out + back
    return out


def test_tri_order_layer_forward_and_every_gradient_match_the_spec():
    torch.manual_seed(0)
    layer = TriOrderMambaLayer(6).double()
    with torch.no_grad():
        layer.mamba.D.normal_()
        layer.norm.weight.normal_(1, 0.2)
        layer.norm.bias.normal_(0, 0.2)
    x = torch.randn(2, 6, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn_like(x)
    ours, want = layer(x), reference(layer, x)
    torch.testing.assert_close(ours, want, rtol=1e-10, atol=1e-12)
    params = [x] + list(layer.parameters())
    g_ours = torch.autograd.grad((ours * g).sum(), params)
    g_ref = torch.autograd.grad((want * g).sum(), params)
    names = ["input"] + [k for k, _ in layer.named_parameters()]
    for name, a, b in zip(names, g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda s: f"{name}: {s}")


def test_position_coded_map_token_orders():
    D, H, W = 2, 3, 4
    layer = TriOrderMambaLayer(3).double()
    layer.norm = nn.Identity()
    d, h, w = torch.meshgrid(torch.arange(D), torch.arange(H), torch.arange(W), indexing="ij")
    x = torch.stack([d, h, w]).double()[None]
    seen = []
    layer.mamba.register_forward_pre_hook(
        lambda mod, a: seen.append([tuple(r) for r in a[0][0].long().tolist()]) and None)
    with torch.no_grad():
        layer(x)
    assert seen == [list(o) for o in _orders(D, H, W)]


# ------------------------------------------------------------------------------------------ forward / backward

def test_forward_backward_small_logits_and_every_parameter_used():
    torch.manual_seed(0)
    m = create_model("segmamba_v2", in_channels=2, num_classes=3, **TINY)
    x = torch.randn(2, 2, 32, 16, 32)
    y = m(x)
    assert y.shape == (2, 3, 32, 16, 32) and y.min() < 0 < y.max()
    y.square().mean().backward()
    assert [k for k, p in m.named_parameters() if p.grad is None] == []   # spec: segmamba_v2_unused.txt is empty
    assert [tuple(f.shape) for f in m.forward_intermediates(x)] == [(2, 48, 16, 8, 16), (2, 8, 8, 4, 8),
                                                                    (2, 8, 4, 2, 4), (2, 8, 2, 1, 2)]


def test_bad_inputs_one_clear_error():
    m = meta(4, 4, depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="expected a 5-D input"):
        m(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="expected 4 input channel"):
        m(torch.randn(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match="not divisible by 16"):
        m(torch.randn(1, 4, 32, 40, 32))
    with pytest.raises(ValueError, match="feat_size\\[0\\] must be 48"):
        create_model("segmamba_v2", feat_size=(32, 64, 128, 256))


def test_bf16_autocast_step_is_finite():
    from mambaseg.ops import record_scans
    torch.manual_seed(0)
    m = create_model("segmamba_v2", in_channels=1, num_classes=2, **TINY)
    x = torch.randn(2, 1, 16, 32, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16), record_scans() as calls:
        y = m(x)
    assert len(calls) == 3 * 2                                      # three orders x one layer in stages 2 and 3
    y.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
