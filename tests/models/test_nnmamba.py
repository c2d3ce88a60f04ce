"""nnMamba (README network ``nnmamba``, nnU-Net v1 network ``nnmamba_ds``) against independent oracles:

* parameter counts of spec §5 / §8 for every listed configuration (and the per-module breakdown), state-dict keys
  and shapes of ``keys/nnmamba{,_ds}_keys.txt`` (order included, loaded with ``strict=True``);
* the shared Mamba layer: one object per stage, its parameters counted once, its keys twice (same tensors);
* the MICCSS layer (four orderings, average, residual) and the plain layer against references written here from
  spec §5.1 / §5.2 with explicit index permutations and functional convs (fp64, forward and every gradient);
* a position-coded map proving which token orders the Mamba sees (row-major; channel flip; sequence flip; both);
* forward/backward at a small size, deep supervision outputs, the non-negative output quirk, bad inputs.
"""

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.models import create_model, list_models, model_info
from mambaseg.models.networks.nnmamba import MambaLayer, MambaLayerDS

SPEC = os.environ.get("MAMBASEG_SPEC_DIR", "/work/shared/spec")
needs_spec = pytest.mark.skipif(not os.path.isdir(os.path.join(SPEC, "keys")), reason="spec key files not present")

# spec §8: (name, in, out) -> parameters
COUNTS = {("nnmamba", 1, 16): 15_959_598, ("nnmamba", 4, 4): 15_945_270, ("nnmamba", 1, 6): 15_944_958,
          ("nnmamba_ds", 4, 4): 15_859_266, ("nnmamba_ds", 1, 16): 15_876_318}
KEY_CFG = {"nnmamba": (1, 16), "nnmamba_ds": (4, 4)}                 # the spec's dump configurations


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def meta(name, cin, k, **kw):
    with torch.device("meta"):
        return create_model(name, in_channels=cin, num_classes=k, **kw)


def test_registered_as_3d():
    for name in ("nnmamba", "nnmamba_ds"):
        assert name in list_models()
        assert model_info(name).default_size == 128 and model_info(name).extra["spatial_dims"] == 3


@pytest.mark.parametrize("name,cin,k", list(COUNTS))
def test_parameter_count_equals_the_spec(name, cin, k):
    assert n_params(meta(name, cin, k)) == COUNTS[(name, cin, k)]


def test_parameter_breakdown_equals_the_spec():
    m = meta("nnmamba", 1, 16)
    part = {n: n_params(c) for n, c in m.named_children() if n_params(c)}
    assert part == {"in_conv": 28_704, "att1": 162, "layer1": 652_288, "att2": 580, "layer2": 2_592_768,
                    "att3": 2_184, "layer3": 10_338_304, "conv5": 1_770_240, "conv6": 442_752, "conv7": 110_784,
                    "conv8": 20_832}
    ds = meta("nnmamba_ds", 4, 4)
    assert n_params(ds.layer1[1].mamba_layer) == 36_864 and n_params(m.layer1[1].mamba_layer) == 41_088


def _spec_keys(name):
    rows = [line.split("\t") for line in open(os.path.join(SPEC, "keys", f"{name}_keys.txt")).read().splitlines()]
    return [(k, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())) for k, shape in rows]


@needs_spec
@pytest.mark.parametrize("name", ["nnmamba", "nnmamba_ds"])
def test_state_dict_keys_and_shapes_equal_upstreams_and_load_strictly(name):
    m = meta(name, *KEY_CFG[name])
    spec = _spec_keys(name)
    assert [(k, tuple(v.shape)) for k, v in m.state_dict().items()] == spec        # order and duplicates included
    with torch.device("meta"):
        sd = {k: torch.empty(s, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
              for k, s in spec}
    res = m.load_state_dict(sd, strict=True)
    assert not res.missing_keys and not res.unexpected_keys


@pytest.mark.parametrize("name", ["nnmamba", "nnmamba_ds"])
def test_one_mamba_layer_per_stage_shared_by_blocks_1_and_2(name):
    torch.manual_seed(0)
    m = create_model(name, in_channels=1, num_classes=2, channels=16)
    for layer in (m.layer1, m.layer2, m.layer3):
        assert layer[0].mamba_layer is None and layer[1].mamba_layer is layer[2].mamba_layer
    sd = m.state_dict()
    dup = [k for k in sd if ".2.mamba_layer." in k]
    assert dup and all(sd[k].data_ptr() == sd[k.replace(".2.mamba_layer.", ".1.mamba_layer.")].data_ptr() for k in dup)
    # counted once: the parameter total is the state dict's float entries minus the duplicated ones minus buffers
    bufs = {k for k, _ in m.named_buffers()}
    uniq = sum(v.numel() for k, v in sd.items() if ".2.mamba_layer." not in k and k not in bufs
               and not k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked"))
    assert uniq == n_params(m)
    # a state dict copied from another instance loads strictly and reproduces its outputs
    other = create_model(name, in_channels=1, num_classes=2, channels=16).eval()
    other.load_state_dict(m.state_dict(), strict=True)
    m.eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(other(x), m(x), rtol=0, atol=0)


# --------------------------------------------------------------------------------------- layer references

def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _tokens_by_index(a):
    """(B, C, D, H, W) -> (B, L, C) with token l = (d*H + h)*W + w, built voxel by voxel."""
    B, C, D, H, W = a.shape
    idx = [(d, h, w) for d in range(D) for h in range(H) for w in range(W)]
    return torch.stack([a[:, :, d, h, w] for d, h, w in idx], 1)


def _rev(n):
    return torch.arange(n - 1, -1, -1)


def miccss_reference(layer, x):
    """Spec §5.1 MambaLayer (eval-mode BN): a = relu(bn(nin x)); mean of mamba over the four flips (flipped back);
    + a; relu(bn2(nin2 .))."""
    a = F.relu(_bn(F.conv3d(x, layer.nin.weight), layer.norm))
    t = _tokens_by_index(a)
    L, C = t.shape[1:]
    rc, rl = _rev(C), _rev(L)
    outs = [layer.mamba(t),
            layer.mamba(t[:, :, rc])[:, :, rc],                     # channel flip
            layer.mamba(t[:, rl])[:, rl],                           # sequence flip
            layer.mamba(t[:, rl][:, :, rc])[:, rl][:, :, rc]]       # both
    y = (outs[0] + outs[1] + outs[2] + outs[3]) / 4
    y = y.transpose(1, 2).reshape(a.shape) + a
    return F.relu(_bn(F.conv3d(y, layer.nin2.weight), layer.norm2))


def plain_reference(layer, x):
    a = F.relu(_bn(F.conv3d(x, layer.nin.weight), layer.norm))
    return layer.mamba(_tokens_by_index(a)).transpose(1, 2).reshape(a.shape)


def _randomise_bn(layer):
    with torch.no_grad():
        for bn in (m for m in layer.modules() if isinstance(m, nn.BatchNorm3d)):
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.normal_(1, 0.2)
            bn.bias.normal_(0, 0.2)


@pytest.mark.parametrize("cls,ref", [(MambaLayer, miccss_reference), (MambaLayerDS, plain_reference)])
def test_mamba_layers_forward_and_every_gradient_match_the_spec(cls, ref):
    torch.manual_seed(0)
    layer = cls(6).double().eval()
    _randomise_bn(layer)
    with torch.no_grad():
        layer.mamba.D.normal_()
    x = torch.randn(2, 6, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 6, 2, 3, 4, dtype=torch.float64)
    ours, want = layer(x), ref(layer, x)
    torch.testing.assert_close(ours, want, rtol=1e-10, atol=1e-12)
    params = [x] + [p for p in layer.parameters()]
    g_ours = torch.autograd.grad((ours * g).sum(), params)
    g_ref = torch.autograd.grad((want * g).sum(), params)
    names = ["input"] + [k for k, _ in layer.named_parameters()]
    for name, a, b in zip(names, g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda s: f"{name}: {s}")


def test_position_coded_map_token_orders():
    """The Mamba of the MICCSS layer sees the tokens row-major over (D, H, W), then with the channels reversed,
    then the sequence reversed, then both (nin = identity, BN = identity, codes positive so ReLU keeps them)."""
    D, H, W = 2, 3, 4
    layer = MambaLayer(4).double().eval()
    with torch.no_grad():
        layer.nin.weight.copy_(torch.eye(4).view(4, 4, 1, 1, 1))
        layer.norm.eps = 0.0
    d, h, w = torch.meshgrid(torch.arange(D), torch.arange(H), torch.arange(W), indexing="ij")
    x = torch.stack([d + 1, h + 1, w + 1, torch.full_like(d, 9)]).double()[None]
    seen = []
    layer.mamba.register_forward_pre_hook(lambda mod, a: seen.append(a[0][0].round().long().tolist()) and None)
    with torch.no_grad():
        layer(x)
    fwd = [[i + 1, j + 1, k + 1, 9] for i in range(D) for j in range(H) for k in range(W)]
    assert seen == [fwd, [r[::-1] for r in fwd], fwd[::-1], [r[::-1] for r in fwd[::-1]]]


# ------------------------------------------------------------------------------------------ forward / backward

@pytest.mark.parametrize("name", ["nnmamba", "nnmamba_ds"])
def test_forward_backward_small_and_every_parameter_used(name):
    torch.manual_seed(0)
    m = create_model(name, in_channels=2, num_classes=3, channels=16)
    x = torch.randn(2, 2, 32, 16, 32)
    y = m(x)
    assert y.shape == (2, 3, 32, 16, 32)
    assert y.min() >= 0                                               # upstream quirk: BN + ReLU on the output
    y.mean().backward()
    no_grad = [k for k, p in m.named_parameters() if p.grad is None]  # (a ReLU'd SE unit may get a zero grad)
    heads = [k for k in no_grad if k.startswith("ds")]                # heads only feed deep supervision
    assert no_grad == heads
    feats = m.forward_intermediates(x)
    assert [tuple(f.shape) for f in feats] == [(2, 16, 16, 8, 16), (2, 32, 8, 4, 8), (2, 64, 4, 2, 4),
                                               (2, 128, 2, 1, 2)]
    assert (m.spatial_dims, m.downsample_factor, m.default_input_size) == (3, 16, (128, 128, 128))


def test_deep_supervision_outputs():
    torch.manual_seed(0)
    m = create_model("nnmamba_ds", in_channels=1, num_classes=2, channels=16, deep_supervision=True)
    x = torch.randn(2, 1, 32, 32, 32)
    out = m(x)
    assert [tuple(o.shape) for o in out] == [(2, 2, 32, 32, 32), (2, 2, 16, 16, 16), (2, 2, 8, 8, 8), (2, 2, 4, 4, 4)]
    sum(o.mean() for o in out).backward()
    assert all(p.grad is not None for p in m.parameters())
    m.deep_supervision = "train"
    assert isinstance(m.train()(x), list) and torch.is_tensor(m.eval()(x))
    with pytest.raises(ValueError, match="needs variant='nnunet'"):
        from mambaseg.models.networks.nnmamba import NNMambaBase
        NNMambaBase(deep_supervision=True)


def test_bad_inputs_one_clear_error():
    m = meta("nnmamba", 1, 2)
    with pytest.raises(ValueError, match="expected a 5-D input"):
        m(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="expected 1 input channel"):
        m(torch.randn(1, 2, 32, 32, 32))
    with pytest.raises(ValueError, match="not divisible by 16"):
        m(torch.randn(1, 1, 32, 24, 32))
    with pytest.raises(ValueError, match="channels must be >= 16"):
        create_model("nnmamba", channels=8)


@pytest.mark.parametrize("name,scans", [("nnmamba", 4 * 2 * 3), ("nnmamba_ds", 2 * 3)])
def test_bf16_autocast_step_is_finite(name, scans):
    """No fp32 cast around the Mamba (as upstream); the shared layer runs in blocks 1 and 2 of each stage (x4
    orderings in the README network)."""
    from mambaseg.ops import record_scans
    torch.manual_seed(0)
    m = create_model(name, in_channels=1, num_classes=2, channels=16)
    x = torch.randn(2, 1, 32, 16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16), record_scans() as calls:
        y = m(x)
    assert len(calls) == scans
    y.float().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_a_state_dict_whose_shared_copies_differ_is_refused():
    m = create_model("nnmamba", in_channels=1, num_classes=2, channels=16)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["layer2.2.mamba_layer.mamba.D"] += 1.0
    with pytest.raises(RuntimeError, match="layer2.2.mamba_layer.mamba.D differs from layer2.1.mamba_layer.mamba.D"):
        m.load_state_dict(sd)
