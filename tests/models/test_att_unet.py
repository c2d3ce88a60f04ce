"""Attention U-Net baseline: gate equation, coefficient range, parameter count, shapes, gradients."""

import pytest
import torch

from mambaseg.models import create_model, model_info
from mambaseg.models.networks.att_unet import AttentionGate, AttentionUNet


def conv(k, cin, cout, bias):
    return k * k * cin * cout + (cout if bias else 0)


def double_conv(cin, cout):
    return conv(3, cin, cout, False) + 2 * cout + conv(3, cout, cout, False) + 2 * cout


def gate(c):
    # W_x: 1x1 c -> c/2 (no bias); W_g: 1x1 c -> c/2 (bias); psi: 1x1 c/2 -> 1 (bias)
    f = c // 2
    return conv(1, c, f, False) + conv(1, c, f, True) + conv(1, f, 1, True)


def att_unet_params(in_ch, n_cls, base=64, upsample="transpose"):
    ch = [base * 2 ** i for i in range(5)]
    n = double_conv(in_ch, ch[0]) + sum(double_conv(ch[i], ch[i + 1]) for i in range(4))
    for c in ch[:4]:
        n += conv(2, 2 * c, c, True) if upsample == "transpose" else conv(1, 2 * c, c, True)
        n += gate(c) + double_conv(2 * c, c)
    return n + conv(1, ch[0], n_cls, True)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("in_ch,n_cls,base,up", [(3, 1, 64, "transpose"), (1, 4, 16, "bilinear")])
def test_parameter_count_matches_closed_form(in_ch, n_cls, base, up):
    with torch.device("meta"):                       # no storage, no init: counting only
        m = create_model("att_unet", in_channels=in_ch, num_classes=n_cls, base_channels=base, upsample=up)
    assert n_params(m) == att_unet_params(in_ch, n_cls, base, up)


def test_registered_as_baseline():
    info = model_info("att_unet")
    assert info.family == "baseline" and info.default_size == 256 and "Oktay" in info.paper


def test_gate_follows_the_paper_equation_on_a_hand_built_case():
    # alpha = sigmoid(psi * relu(W_x x + W_g g + b_g) + b_psi) with F_l = F_g = 2, F_int = 1
    g8 = AttentionGate(2, 2, inter_channels=1)
    with torch.no_grad():
        g8.W_x.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
        g8.W_g.weight.copy_(torch.tensor([0.0, 1.0]).view(1, 2, 1, 1))
        g8.W_g.bias.fill_(0.5)
        g8.psi.weight.fill_(2.0)
        g8.psi.bias.fill_(-1.0)
    x = torch.tensor([[[[1.0, -3.0]], [[7.0, 7.0]]]])      # (1, 2, 1, 2)
    g = torch.tensor([[[[9.0, 9.0]], [[0.25, 1.0]]]])
    # pixel 0: relu(1 + 0.25 + 0.5) = 1.75 -> sigmoid(2.5); pixel 1: relu(-3 + 1 + 0.5) = 0 -> sigmoid(-1)
    alpha = torch.sigmoid(torch.tensor([2.5, -1.0])).view(1, 1, 1, 2)
    torch.testing.assert_close(g8.attention(x, g), alpha)
    torch.testing.assert_close(g8(x, g), x * alpha)


def test_gate_coefficients_lie_in_unit_interval():
    torch.manual_seed(0)
    g8 = AttentionGate(8, 16)
    a = g8.attention(100 * torch.randn(2, 8, 16, 16), 100 * torch.randn(2, 16, 16, 16))
    assert a.shape == (2, 1, 16, 16)
    assert a.min() >= 0 and a.max() <= 1
    assert a.min() < 0.01 and a.max() > 0.99      # the large inputs saturate both ends


def test_model_attention_maps():
    m = create_model("att_unet", base_channels=4).eval()
    with torch.no_grad():
        maps = m.attention_maps(torch.randn(2, 3, 64, 64))
    assert [tuple(a.shape) for a in maps] == [(2, 1, 8, 8), (2, 1, 16, 16), (2, 1, 32, 32), (2, 1, 64, 64)]
    assert all(a.min() >= 0 and a.max() <= 1 for a in maps)


def test_gate_changes_the_output():
    # Same weights, gates forced open (alpha = 1): the network must then equal a plain skip network,
    # and differ from the gated one.
    torch.manual_seed(0)
    m = create_model("att_unet", base_channels=4).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        gated = m(x)
        for up in m.ups:
            up.gate.psi.weight.zero_()
            up.gate.psi.bias.fill_(50.0)          # sigmoid(50) == 1 in float32
        opened = m(x)
        feats = m.forward_intermediates(x)
        y = feats[-1]
        for up, skip in zip(m.ups, reversed(feats[:-1])):
            y = up.conv(torch.cat([skip, up.up(y)], 1))
        plain = m.head(y)
    torch.testing.assert_close(opened, plain)
    assert not torch.allclose(gated, opened)


@pytest.mark.parametrize("in_ch", [1, 3])
@pytest.mark.parametrize("n_cls", [1, 4])
def test_output_shape(in_ch, n_cls):
    m = create_model("att_unet", in_channels=in_ch, num_classes=n_cls, base_channels=8)
    assert m(torch.randn(2, in_ch, 64, 64)).shape == (2, n_cls, 64, 64)


@pytest.mark.parametrize("size", [224, 256])
def test_paper_sizes(size):
    m = create_model("att_unet", base_channels=4).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, size, size)).shape == (1, 1, size, size)


def test_returns_logits_not_probabilities():
    torch.manual_seed(0)
    m = create_model("att_unet", base_channels=8).eval()
    with torch.no_grad():
        y = m(3 * torch.randn(2, 3, 64, 64))
    assert (y < 0).any() or (y > 1).any()


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = create_model("att_unet", in_channels=1, num_classes=2, base_channels=4)
    y = m(torch.randn(2, 1, 32, 32))
    (y * torch.randn_like(y)).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_eval_is_deterministic():
    m = create_model("att_unet", base_channels=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m(x))


def test_bad_inputs_give_clear_errors():
    m = AttentionUNet(base_channels=4)
    with pytest.raises(ValueError, match="divisible by 16"):
        m(torch.randn(1, 3, 24, 24))
    with pytest.raises(ValueError, match="in_channels=4"):
        m(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="same spatial size"):
        AttentionGate(2, 2).attention(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2))
