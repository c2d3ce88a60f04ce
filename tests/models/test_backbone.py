"""Encoders as backbones: ``feature_info`` / ``forward_intermediates`` / ``forward_features`` and
``create_model(name, features_only=True)``, for every registered network.

Oracle: the maps the *full network's forward* produces, captured with forward hooks on the modules
``feature_info`` names (independent of ``forward_intermediates``' own code path)."""

import pytest
import torch

from mambaseg.models import create_model, list_models
from mambaseg.models.backbone import FeatureEncoder

from small_models import SIZE, size_for, small_model  # noqa: F401


def _to_nchw(t, c, h, w, *more):
    """A hooked tensor (channels-first, channels-last or (B, L, C) tokens) as (B, C, h, w); 3-D networks'
    channels-first maps (B, C, d, h, w) as they are."""
    if more:
        assert tuple(t.shape[1:]) == (c, h, w, *more), (tuple(t.shape), (c, h, w, *more))
        return t
    if t.dim() == 4 and tuple(t.shape[1:]) == (c, h, w):
        return t
    if t.dim() == 4 and tuple(t.shape[1:]) == (h, w, c):
        return t.permute(0, 3, 1, 2)
    if t.dim() == 3 and tuple(t.shape[1:]) == (h * w, c):
        return t.transpose(1, 2).reshape(t.shape[0], c, h, w)
    raise AssertionError(f"hooked map of shape {tuple(t.shape)} is not ({c}, {h}, {w}) in any layout")


def _hooked_maps(model, x):
    got = {}
    handles = []
    for i, f in enumerate(model.feature_info):
        mod = model.get_submodule(f["module"])
        if f.get("hook_type") == "forward_pre":
            handles.append(mod.register_forward_pre_hook(lambda m, a, i=i: got.setdefault(i, a[0].clone())))
        else:
            handles.append(mod.register_forward_hook(lambda m, a, o, i=i: got.setdefault(i, o.clone())))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return got


@pytest.mark.parametrize("name", list_models())
def test_feature_info_and_intermediates_match_the_full_network(name):
    SIZE = size_for(name)
    torch.manual_seed(0)
    model = small_model(name).eval()
    info = model.feature_info
    assert [f["reduction"] for f in info] == sorted({f["reduction"] for f in info}), "reductions must increase"
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        feats = model.forward_intermediates(x)
        deepest = model.forward_features(x)
        hooked = _hooked_maps(model, x)
    assert len(feats) == len(info)
    for i, (f, t) in enumerate(zip(info, feats)):
        red = f.get("reduction_per_axis", (f["reduction"],) * len(SIZE))
        shape = (2, f["num_chs"]) + tuple(s // r for s, r in zip(SIZE, red))
        assert tuple(t.shape) == shape, (i, tuple(t.shape), shape)
        ref = _to_nchw(hooked[i], *shape[1:])
        torch.testing.assert_close(t, ref, rtol=0, atol=0)
    torch.testing.assert_close(deepest, feats[-1], rtol=0, atol=0)


@pytest.mark.parametrize("name", list_models())
def test_features_only_is_the_encoder_alone(name):
    SIZE = size_for(name)
    torch.manual_seed(0)
    full = small_model(name).eval()
    enc = create_model(name, features_only=True, **_kwargs(name)).eval()
    assert isinstance(enc, FeatureEncoder)
    missing = enc.load_from_full(full.state_dict())
    assert missing == []
    n_full = sum(p.numel() for p in full.parameters())
    n_enc = sum(p.numel() for p in enc.parameters())
    assert n_enc < n_full                                    # the decoder is gone
    assert set(enc.model.state_dict()) < set(full.state_dict())
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        got, want = enc(x), full.forward_intermediates(x)
    assert enc.feature_info_channels() == [t.shape[1] for t in got]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _kwargs(name):
    from small_models import SMALL
    return SMALL.get(name, {})


def test_out_indices_and_errors():
    enc = create_model("unet", features_only=True, out_indices=(1, -1), base_channels=4)
    assert enc.feature_info_reductions() == [2, 16]
    out = enc(torch.randn(1, 3, 32, 32))
    assert [tuple(t.shape) for t in out] == [(1, 8, 16, 16), (1, 64, 2, 2)]
    with pytest.raises(ValueError, match="out_indices"):
        create_model("unet", features_only=True, out_indices=(7,), base_channels=4)
