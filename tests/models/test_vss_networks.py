"""The contract every VSS network keeps (VM-UNet, VM-UNetV2, Mamba-UNet), one test each, parametrized over the
three: logit shapes for 1/3 channels and 1/4/9 classes, 224 and 256 inputs, upstream's grey-to-RGB repeat and
its switch, clear size errors, gradients, and eval determinism. Model-specific behaviour stays in each model's
own test file."""

import pytest
import torch

from mambaseg.models import create_model

SMALL = {"vmunet": dict(depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1]),
         "vmunet_v2": dict(depths=[1, 1, 1, 1]),
         "mamba_unet": dict(depths=[1, 1, 1, 1])}
NETS = list(SMALL)
BAD_SHAPES = [("vmunet", (1, 3, 60, 64)), ("vmunet", (1, 3, 64, 48)), ("vmunet", (3, 64, 64)),
              ("vmunet_v2", (1, 3, 40, 40)), ("mamba_unet", (1, 3, 224, 200))]


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("in_ch", [1, 3])
@pytest.mark.parametrize("n_cls", [1, 4, 9])
def test_logit_shapes_small_input(name, in_ch, n_cls):
    torch.manual_seed(0)
    m = create_model(name, in_channels=in_ch, num_classes=n_cls, **SMALL[name]).eval()
    with torch.no_grad():
        y = m(torch.randn(1, in_ch, 32, 64))
    assert y.shape == (1, n_cls, 32, 64) and torch.isfinite(y).all()


@pytest.mark.parametrize("name,in_ch,n_cls", [("vmunet", 3, 1), ("vmunet_v2", 3, 1), ("mamba_unet", 1, 4)])
@pytest.mark.parametrize("size", [224, 256])
def test_full_size_inputs(name, in_ch, n_cls, size):
    m = create_model(name, num_classes=n_cls, **SMALL[name]).eval()
    with torch.no_grad():
        assert m(torch.randn(1, in_ch, size, size)).shape == (1, n_cls, size, size)


@pytest.mark.parametrize("name", NETS)
def test_gray_input_repeated_to_rgb_like_upstream_and_switchable(name):
    torch.manual_seed(0)
    m = create_model(name, **SMALL[name]).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x.repeat(1, 3, 1, 1)))
    m.gray_to_rgb = False
    with pytest.raises(ValueError, match="in_channels=1"):
        m(x)


@pytest.mark.parametrize("name,shape", BAD_SHAPES)
def test_bad_input_sizes_raise_clear_error(name, shape):
    m = create_model(name, **SMALL[name])
    with pytest.raises(ValueError, match="divisible by 32|4-D"):
        m(torch.randn(*shape))


@pytest.mark.parametrize("name,n_cls", [("vmunet", 2), ("mamba_unet", 4)])
def test_every_parameter_gets_a_finite_gradient(name, n_cls):
    # (VM-UNetV2 runs an unused stage: its own test checks exactly which parameters get none)
    torch.manual_seed(0)
    m = create_model(name, num_classes=n_cls, **SMALL[name]).train()
    m(torch.randn(1, 3, 64, 64)).square().mean().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ["vmunet", "mamba_unet"])
def test_eval_is_deterministic_and_train_mode_drops_paths(name):
    torch.manual_seed(0)
    m = create_model(name, drop_path_rate=0.5, **SMALL[name])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        m.eval()
        a, b = m(x), m(x)
        m.train()
        torch.manual_seed(1)
        t1 = m(x)
        torch.manual_seed(2)
        t2 = m(x)
    assert torch.equal(a, b)
    assert not torch.allclose(t1, t2)
    assert a.min() < 0                                       # logits: a sigmoid output could not be negative
