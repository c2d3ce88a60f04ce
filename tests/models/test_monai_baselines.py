"""The MONAI 3-D baselines (``swin_unetr``, ``unetr``) against MONAI itself: same parameter names, shapes and
count as MONAI's class built with the same arguments; a MONAI state_dict loads strictly and gives MONAI's output
exactly; the wrapper's children are the MONAI network's (moves, copies and modes stay shared)."""

import copy

import pytest
import torch

monai_nets = pytest.importorskip("monai.networks.nets")

from mambaseg.models import create_model, list_models, model_info  # noqa: E402

CASES = {
    "swin_unetr": (dict(feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)), (32, 32, 64),
                   lambda: monai_nets.SwinUNETR(in_channels=2, out_channels=3, feature_size=12, depths=(1, 1, 1, 1),
                                                num_heads=(1, 2, 2, 4))),
    "unetr": (dict(img_size=(32, 16, 32), feature_size=4, hidden_size=24, mlp_dim=48, num_heads=2), (32, 16, 32),
              lambda: monai_nets.UNETR(in_channels=2, out_channels=3, img_size=(32, 16, 32), feature_size=4,
                                       hidden_size=24, mlp_dim=48, num_heads=2)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_registered_as_3d_baselines(name):
    assert name in list_models(family="baseline")
    assert model_info(name).extra["spatial_dims"] == 3


@pytest.mark.parametrize("name", list(CASES))
def test_same_names_as_monai_and_monai_weights_give_monais_output(name):
    kw, size, build = CASES[name]
    torch.manual_seed(0)
    ref = build().eval()
    ours = create_model(name, in_channels=2, num_classes=3, **kw).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 2, *size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_children_are_shared_with_the_monai_network():
    kw, size, _ = CASES["unetr"]
    m = create_model("unetr", in_channels=2, num_classes=3, **kw)
    assert m._monai_net.vit is m.vit
    c = copy.deepcopy(m)
    assert c._monai_net.vit is c.vit and c.vit is not m.vit
    c.double()
    x = torch.randn(1, 2, *size, dtype=torch.float64)
    with torch.no_grad():
        assert c(x).dtype == torch.float64


def test_bad_inputs_one_clear_error():
    kw, size, _ = CASES["unetr"]
    u = create_model("unetr", in_channels=2, num_classes=3, **kw)
    with pytest.raises(ValueError, match="differs from the img_size 32x16x32"):
        u(torch.randn(1, 2, 32, 32, 32))
    s = create_model("swin_unetr", in_channels=2, num_classes=3, **CASES["swin_unetr"][0])
    with pytest.raises(ValueError, match="not divisible by 32"):
        s(torch.randn(1, 2, 32, 48, 32))
    with pytest.raises(ValueError, match="expected 2 input channel"):
        s(torch.randn(1, 1, 32, 32, 32))
