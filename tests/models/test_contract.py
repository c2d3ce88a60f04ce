"""Every registered network keeps the model contract (mambaseg.models.contract) that the engine, export and
profiling read without getattr fallbacks: channels, spatial axes, the input-size rule, the default size (stored on
the class only), logits as output, a valid feature_info."""

import os
import sys

import pytest
import torch
import torch.nn as nn

from mambaseg.models import list_models, model_info, register_model
from mambaseg.models.backbone import BackboneMixin
from mambaseg.models.contract import SegmentationNetwork
from mambaseg.models.features import check_feature_info

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from small_models import SIZE, size_for, small_model  # noqa: E402

NAMES = list_models()


@pytest.mark.parametrize("name", NAMES)
def test_registered_class_and_default_size(name):
    info = model_info(name)
    cls = info.model_class
    assert cls is not None and issubclass(cls, SegmentationNetwork) and issubclass(cls, nn.Module), name
    # a class taking spatial_dims as an argument (LightM-UNet, U-Mamba, nnU-Net) is registered once per number of
    # axes; the registration says which
    assert info.spatial_dims in (2, 3) and cls.spatial_dims in (2, 3)
    assert len(info.default_input_size) == info.spatial_dims and all(s > 0 for s in info.default_input_size)
    own = cls.class_default_size()
    if own is not None and len(own) == info.spatial_dims:  # stored once: the registry reads the class's default
        assert info.default_input_size == own


@pytest.mark.parametrize("name", NAMES)
def test_instance_keeps_the_contract(name):
    torch.manual_seed(0)
    net = small_model(name, in_channels=3, num_classes=2).eval()
    assert isinstance(net, SegmentationNetwork)
    assert (net.in_channels, net.num_classes) == (3, 2)
    dims = net.spatial_dims
    assert dims == model_info(name).spatial_dims  # the instance has the axes its registration says
    div = net.input_divisor
    assert len(div) == dims and all(isinstance(d, int) and d >= 1 for d in div)
    fixed = net.fixed_input_size
    assert fixed is None or (len(fixed) == dims and net.input_size == tuple(fixed))
    check_feature_info(net.feature_info)
    names = {n for n, _ in net.named_modules()}
    assert net.encoder_modules and net.encoder_modules[0] in names, (net.encoder_modules, name)
    size = tuple(fixed) if fixed is not None else size_for(name)
    assert all(s % d == 0 for s, d in zip(size, div))
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        y = net(x)
    assert not net.returns_list()  # default configuration, eval mode: logits
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (1, 2, *size)
    if fixed is None and dims == 2:  # the size rule is the whole rule: another multiple of the divisor works too
        other = (SIZE[1], SIZE[0])
        assert all(s % d == 0 for s, d in zip(other, div))
        with torch.no_grad():
            assert tuple(net(torch.randn(1, 3, *other)).shape) == (1, 2, *other)


@pytest.mark.parametrize("name,kwargs", [("unet_pp", {"deep_supervision": True}),
                                         ("umamba_bot", {"deep_supervision": "train"}),
                                         ("vmunet_v2", {"deep_supervision": True})])
def test_output_kind_follows_the_mode(name, kwargs):
    """returns_list() says what forward gives in each mode (VM-UNetV2's deep_supervision is one summed output)."""
    net = small_model(name, **kwargs)
    size = size_for(name)
    for training in (True, False):
        net.train(training)
        with torch.no_grad():
            y = net(torch.randn(1, 3, *size))
        assert isinstance(y, list) == net.returns_list(), (name, training)
    assert net.train(True).returns_list() == (name != "vmunet_v2")


class _Sized(BackboneMixin, nn.Module):
    default_input_size = (64, 64)


def _sized_factory(in_channels: int = 3, num_classes: int = 1) -> _Sized:
    return _Sized()


def test_default_size_has_one_home():
    """register_model(default_size=...) that contradicts the class's default_input_size is refused (not registered)."""
    with pytest.raises(ValueError, match="contradicts _Sized.default_input_size"):
        register_model("contract_test_contradicting_size", default_size=128)(_sized_factory)
    assert "contract_test_contradicting_size" not in list_models()
