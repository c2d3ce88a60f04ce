"""U-Net baseline: parameter count from the architecture, shapes, logits, gradients, size errors."""

import pytest
import torch

from mambaseg.models import create_model, model_info
from mambaseg.models.networks.unet import UNet


def conv(k, cin, cout, bias):
    return k * k * cin * cout + (cout if bias else 0)


def double_conv(cin, cout):
    # conv3x3 (no bias) + BN(2*cout) + conv3x3 (no bias) + BN(2*cout); BN running stats are buffers
    return conv(3, cin, cout, False) + 2 * cout + conv(3, cout, cout, False) + 2 * cout


def unet_params(in_ch, n_cls, base=64, upsample="transpose"):
    ch = [base * 2 ** i for i in range(5)]
    n = double_conv(in_ch, ch[0]) + sum(double_conv(ch[i], ch[i + 1]) for i in range(4))
    for c in ch[:4]:                     # decoder level: up (2c -> c), DoubleConv(2c -> c)
        n += conv(2, 2 * c, c, True) if upsample == "transpose" else conv(1, 2 * c, c, True)
        n += double_conv(2 * c, c)
    return n + conv(1, ch[0], n_cls, True)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("in_ch,n_cls,base,up", [(3, 1, 64, "transpose"), (3, 1, 64, "bilinear"),
                                                 (1, 4, 16, "transpose"), (1, 4, 16, "bilinear")])
def test_parameter_count_matches_closed_form(in_ch, n_cls, base, up):
    with torch.device("meta"):                       # no storage, no init: counting only
        m = create_model("unet", in_channels=in_ch, num_classes=n_cls, base_channels=base, upsample=up)
    assert n_params(m) == unet_params(in_ch, n_cls, base, up)


def test_default_width_is_64_with_transposed_conv():
    m = UNet()
    assert m.inc[0].out_channels == 64 and m.downs[-1][1][0].out_channels == 1024
    assert isinstance(m.ups[0].up.up, torch.nn.ConvTranspose2d)
    assert n_params(m) == unet_params(3, 1)


def test_registered_as_baseline():
    info = model_info("unet")
    assert info.family == "baseline" and info.default_size == 256 and "Ronneberger" in info.paper


@pytest.mark.parametrize("in_ch", [1, 3])
@pytest.mark.parametrize("n_cls", [1, 4])
def test_output_shape(in_ch, n_cls):
    m = create_model("unet", in_channels=in_ch, num_classes=n_cls, base_channels=8)
    y = m(torch.randn(2, in_ch, 64, 64))
    assert y.shape == (2, n_cls, 64, 64)


@pytest.mark.parametrize("size", [224, 256])
@pytest.mark.parametrize("up", ["transpose", "bilinear"])
def test_paper_sizes(size, up):
    m = create_model("unet", base_channels=4, upsample=up).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, size, size)).shape == (1, 1, size, size)


def test_returns_logits_not_probabilities():
    torch.manual_seed(0)
    m = create_model("unet", base_channels=8).eval()
    with torch.no_grad():
        y = m(3 * torch.randn(2, 3, 64, 64))
    assert (y < 0).any() or (y > 1).any()


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = create_model("unet", in_channels=1, num_classes=2, base_channels=4, upsample="bilinear")
    y = m(torch.randn(2, 1, 32, 32))
    (y * torch.randn_like(y)).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_eval_is_deterministic():
    m = create_model("unet", base_channels=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m(x))


def test_bad_inputs_give_clear_errors():
    m = create_model("unet", base_channels=4)
    with pytest.raises(ValueError, match="divisible by 16"):
        m(torch.randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match="in_channels=1"):
        m(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="upsample"):
        UNet(upsample="nearest")
    with pytest.raises(ValueError, match="base_channels"):
        UNet(base_channels=0)
