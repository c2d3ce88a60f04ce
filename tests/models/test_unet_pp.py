"""UNet++ baseline: nested-node parameter count, deep supervision outputs in train and eval, shapes, gradients."""

import pytest
import torch

from mambaseg.models import create_model, model_info
from mambaseg.models.networks.unet_pp import UNetPlusPlus


def conv(k, cin, cout, bias):
    return k * k * cin * cout + (cout if bias else 0)


def double_conv(cin, cout):
    return conv(3, cin, cout, False) + 2 * cout + conv(3, cout, cout, False) + 2 * cout


def unet_pp_params(in_ch, n_cls, base=64, deep_supervision=False):
    F = [base * 2 ** i for i in range(5)]
    n = double_conv(in_ch, F[0]) + sum(double_conv(F[i - 1], F[i]) for i in range(1, 5))    # X^{i,0}
    # X^{i,j}, j >= 1: input = j earlier nodes of level i (F_i each) + upsampled X^{i+1,j-1} (F_{i+1}, no params)
    n += sum(double_conv(j * F[i] + F[i + 1], F[i]) for j in range(1, 5) for i in range(5 - j))
    return n + (4 if deep_supervision else 1) * conv(1, F[0], n_cls, True)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("in_ch,n_cls,base,ds", [(3, 1, 64, False), (3, 1, 64, True), (1, 4, 32, True)])
def test_parameter_count_matches_closed_form(in_ch, n_cls, base, ds):
    with torch.device("meta"):                       # no storage, no init: counting only
        m = create_model("unet_pp", in_channels=in_ch, num_classes=n_cls, base_channels=base, deep_supervision=ds)
    assert n_params(m) == unet_pp_params(in_ch, n_cls, base, ds)


def test_has_the_fifteen_nodes_of_the_paper():
    m = UNetPlusPlus(base_channels=4)
    assert sorted(m.nodes) == sorted(f"{i}_{j}" for i in range(5) for j in range(5 - i))


def test_registered_as_baseline():
    info = model_info("unet_pp")
    assert info.family == "baseline" and info.default_size == 256 and "Zhou" in info.paper


@pytest.mark.parametrize("in_ch", [1, 3])
@pytest.mark.parametrize("n_cls", [1, 4])
def test_output_shape(in_ch, n_cls):
    m = create_model("unet_pp", in_channels=in_ch, num_classes=n_cls, base_channels=8)
    y = m(torch.randn(2, in_ch, 64, 64))
    assert isinstance(y, torch.Tensor) and y.shape == (2, n_cls, 64, 64)
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(2, in_ch, 64, 64)).shape == (2, n_cls, 64, 64)


@pytest.mark.parametrize("size", [224, 256])
def test_paper_sizes(size):
    m = create_model("unet_pp", base_channels=4).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, size, size)).shape == (1, 1, size, size)


def test_deep_supervision_returns_four_logits_in_train_mode():
    m = create_model("unet_pp", num_classes=3, base_channels=4, deep_supervision=True).train()
    outs = m(torch.randn(2, 3, 32, 32))
    assert isinstance(outs, list) and len(outs) == 4
    assert all(o.shape == (2, 3, 32, 32) for o in outs)


def test_deep_supervision_eval_returns_mean_or_last_head():
    torch.manual_seed(0)
    m = create_model("unet_pp", num_classes=2, base_channels=4, deep_supervision=True).eval()
    last = create_model("unet_pp", num_classes=2, base_channels=4, deep_supervision=True, ds_eval="last").eval()
    last.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        mean_out, last_out = m(x), last(x)
        m.training = True                      # only the top module: BN layers stay in eval mode
        branches = m(x)
        m.training = False
    assert isinstance(mean_out, torch.Tensor) and mean_out.shape == (2, 2, 32, 32)
    torch.testing.assert_close(mean_out, (branches[0] + branches[1] + branches[2] + branches[3]) / 4)
    torch.testing.assert_close(last_out, branches[3])
    assert not torch.allclose(branches[0], branches[3])


def test_returns_logits_not_probabilities():
    torch.manual_seed(0)
    m = create_model("unet_pp", base_channels=8).eval()
    with torch.no_grad():
        y = m(3 * torch.randn(2, 3, 64, 64))
    assert (y < 0).any() or (y > 1).any()


@pytest.mark.parametrize("ds", [False, True])
def test_gradients_reach_every_parameter(ds):
    torch.manual_seed(0)
    m = create_model("unet_pp", in_channels=1, num_classes=2, base_channels=4, deep_supervision=ds).train()
    out = m(torch.randn(2, 1, 32, 32))
    outs = out if ds else [out]
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_eval_is_deterministic():
    m = create_model("unet_pp", base_channels=4, deep_supervision=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m(x))


def test_bad_inputs_give_clear_errors():
    m = UNetPlusPlus(base_channels=4)
    with pytest.raises(ValueError, match="divisible by 16"):
        m(torch.randn(1, 3, 50, 64))
    with pytest.raises(ValueError, match="in_channels=1"):
        m(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="ds_eval"):
        UNetPlusPlus(ds_eval="max")
