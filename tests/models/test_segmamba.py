"""SegMamba and its tri-oriented Mamba (ToM) against independent oracles:

* the ToM block against a slow fp64 reference written here from the maths of spec §1.3 (explicit loops over conv
  taps and time steps; the inter-slice visiting order built from its definition, token k*S + j at position
  j*n + k), forward and the gradient of every parameter and of the input;
* the inter-slice order against the spec's MEASURED position-coded example (L = 24, n = 4) and, through a whole
  ToM layer on a position-coded (D, H, W) map, against "one slice per chunk, slice axis fastest";
* parameter counts against spec §8 / §1.3 / §1.6 (every listed configuration), state-dict keys and shapes against
  ``keys/segmamba_keys.txt`` (loaded with ``strict=True``);
* forward/backward at a small size (every parameter gets a gradient, as ``trees/segmamba_unused.txt``), logits out,
  the ``num_slices`` rule and its errors.
"""

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mambaseg.models.blocks.mamba1 as mamba1_mod
from mambaseg.models import create_model, list_models, model_info
from mambaseg.models.blocks.tri_mamba import (TriMambaLayer, TriOrientedMamba, from_interslice, interslice_order,
                                              to_interslice, tri_mamba_param_count)

SPEC = os.environ.get("MAMBASEG_SPEC_DIR", "/work/shared/spec")
needs_spec = pytest.mark.skipif(not os.path.isdir(os.path.join(SPEC, "keys")), reason="spec key files not present")
TINY = dict(depths=(1, 1, 1, 1), feat_size=(48, 8, 8, 8), hidden_size=8, num_slices="depth")


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------- the reference

def _branch_ref(xz, conv, x_proj, dt_proj, A_log, D, E, N, R):
    """One Mamba branch on tokens xz (B, L, 2E) with loops (fp64): causal conv, SiLU, projections, recurrence,
    D skip, SiLU(z) gate. Returns (B, L, E)."""
    B, L, _ = xz.shape
    x, z = xz[..., :E], xz[..., E:]
    K = conv.weight.shape[-1]
    w = conv.weight[:, 0, :]
    cols = []
    for t in range(L):
        acc = conv.bias.expand(B, E).clone()
        for j in range(K):
            src = t - (K - 1) + j
            if src >= 0:
                acc = acc + w[:, j] * x[:, src]
        cols.append(acc)
    x = torch.stack(cols, 1)
    x = x * torch.sigmoid(x)
    dbl = x @ x_proj.weight.T
    dt, Bm, Cm = dbl[..., :R], dbl[..., R:R + N], dbl[..., R + N:]
    delta = F.softplus(dt @ dt_proj.weight.T + dt_proj.bias)
    A = -torch.exp(A_log)
    state = torch.zeros(B, E, N, dtype=xz.dtype)
    ys = []
    for t in range(L):
        state = torch.exp(delta[:, t, :, None] * A) * state + (delta[:, t] * x[:, t])[:, :, None] * Bm[:, t, None, :]
        ys.append((state * Cm[:, t, None, :]).sum(-1) + D * x[:, t])
    return torch.stack(ys, 1) * (z * torch.sigmoid(z))


def tom_reference(m: TriOrientedMamba, h: torch.Tensor, n: int) -> torch.Tensor:
    B, L, _ = h.shape
    E, N, R = m.d_inner, m.d_state, m.dt_rank
    xz = h @ m.in_proj.weight.T
    y_f = _branch_ref(xz, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D, E, N, R)
    rev = list(range(L - 1, -1, -1))
    y_b = _branch_ref(xz[:, rev], m.conv1d_b, m.x_proj_b, m.dt_proj_b, m.A_b_log, m.D_b, E, N, R)[:, rev]
    S = L // n
    order = [k * S + j for j in range(S) for k in range(n)]          # position j*n + k holds token k*S + j
    y_s_perm = _branch_ref(xz[:, order], m.conv1d_s, m.x_proj_s, m.dt_proj_s, m.A_s_log, m.D_s, E, N, R)
    y_s = torch.empty_like(y_s_perm)
    y_s[:, order] = y_s_perm                                         # the output goes back to its token
    return (y_f + y_b + y_s) @ m.out_proj.weight.T


def _randomise(m):
    with torch.no_grad():                                            # make every term of every branch matter
        for sfx in ("", "_b", "_s"):
            getattr(m, f"D{sfx}").normal_()
            getattr(m, f"dt_proj{sfx}").bias.normal_(0, 0.5)
            getattr(m, f"A{sfx}_log").add_(0.3 * torch.randn_like(getattr(m, f"A{sfx}_log")))


@pytest.mark.parametrize("d_model,L,n", [(6, 12, 3), (6, 12, 4), (20, 8, 2)])
def test_tom_forward_and_every_gradient_match_the_math(d_model, L, n):
    torch.manual_seed(0)
    m = TriOrientedMamba(d_model, nslices=n).double()
    _randomise(m)
    h = torch.randn(2, L, d_model, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, L, d_model, dtype=torch.float64)
    ours, ref = m(h), tom_reference(m, h, n)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)
    params = [h] + list(m.parameters())
    g_ours = torch.autograd.grad((ours * g).sum(), params)
    g_ref = torch.autograd.grad((ref * g).sum(), params)
    names = ["input"] + [k for k, _ in m.named_parameters()]
    assert len(names) == 3 * 7 + 2 + 1                               # 3 branches x 7 tensors, in/out proj, input
    for name, a, b in zip(names, g_ours, g_ref):
        assert b.abs().sum() > 0, name                                # the reference depends on every tensor
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=lambda s: f"{name}: {s}")


def test_nslices_per_call_overrides_the_attribute():
    torch.manual_seed(0)
    m = TriOrientedMamba(6, nslices=2).double()
    _randomise(m)
    h = torch.randn(1, 12, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(h, nslices=4), tom_reference(m, h, 4), rtol=1e-9, atol=1e-10)
        assert not torch.allclose(m(h), m(h, nslices=4))             # the chunk count changes the result


def test_float32_is_close_to_the_fp64_math():
    torch.manual_seed(1)
    m = TriOrientedMamba(8, nslices=3)
    h = torch.randn(1, 12, 8)
    with torch.no_grad():
        ref = tom_reference(m.double(), h.double(), 3)
        torch.testing.assert_close(m.float()(h).double(), ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ the slice order

def test_interslice_order_is_upstreams_measured_order():
    # spec §1.3, MEASURED with a position-coded input, L = 24, n = 4: 0, 6, 12, 18, 1, 7, 13, 19, ...
    want = [0, 6, 12, 18, 1, 7, 13, 19, 2, 8, 14, 20, 3, 9, 15, 21, 4, 10, 16, 22, 5, 11, 17, 23]
    assert interslice_order(24, 4).tolist() == want
    codes = torch.arange(24.0).view(1, 1, 24)
    assert to_interslice(codes, 4).flatten().tolist() == want
    assert torch.equal(from_interslice(to_interslice(codes, 4), 4), codes)        # restored exactly


def test_position_coded_map_is_scanned_slice_axis_first():
    """A ToM layer on a (D, H, W) map whose channels hold each voxel's (d, h, w): the forward branch sees row-major
    order, the backward branch its reverse, the inter-slice branch (n = D) every voxel of a (h, w) column before
    the next: position p holds voxel (d = p mod D, h, w from p // D in row-major order)."""
    D, H, W = 4, 3, 5
    layer = TriMambaLayer(4, num_slices=D).double()
    layer.norm = nn.Identity()                                        # keep the codes readable
    m = layer.mamba
    with torch.no_grad():                                             # x channels 0..2 = token channels 0..2
        m.in_proj.weight.zero_()
        m.in_proj.weight[0, 0] = m.in_proj.weight[1, 1] = m.in_proj.weight[2, 2] = 1.0
    d, h, w = torch.meshgrid(torch.arange(D), torch.arange(H), torch.arange(W), indexing="ij")
    x = torch.stack([d, h, w, torch.zeros_like(d)]).double()[None]   # (1, 4, D, H, W)
    seen = {}
    def hook(name):
        def fn(mod, args):
            seen.setdefault(name, args[0][0, :3].T.clone())         # returns None: the input is unchanged
        return fn
    for name in ("conv1d", "conv1d_b", "conv1d_s"):
        getattr(m, name).register_forward_pre_hook(hook(name))
    with torch.no_grad():
        layer(x)
    row_major = [(i, j, k) for i in range(D) for j in range(H) for k in range(W)]
    slice_first = [(p % D, (p // D) // W, (p // D) % W) for p in range(D * H * W)]
    as_list = lambda t: [tuple(int(v) for v in r) for r in t.tolist()]     # noqa: E731
    assert as_list(seen["conv1d"]) == row_major
    assert as_list(seen["conv1d_b"]) == row_major[::-1]
    assert as_list(seen["conv1d_s"]) == slice_first
    # each run of D positions is one (h, w) column through all D slices
    assert all(len({v[1:] for v in slice_first[i:i + D]}) == 1 for i in range(0, D * H * W, D))


# --------------------------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("d,count", [(48, 31_392), (96, 93_888), (192, 312_192), (384, 1_122_048)])
def test_tom_parameter_count_equals_upstream(d, count):
    with torch.device("meta"):
        m = TriOrientedMamba(d)
    assert n_params(m) == count == tri_mamba_param_count(d)


def test_tom_names_order_and_init_are_upstreams():
    torch.manual_seed(0)
    m = TriOrientedMamba(48)
    assert list(m.state_dict())[:6] == ["A_log", "D", "A_b_log", "D_b", "A_s_log", "D_s"]
    mods = [k.rsplit(".", 1)[0] for k in list(m.state_dict())[6:]]
    assert list(dict.fromkeys(mods)) == ["in_proj", "conv1d", "x_proj", "dt_proj", "conv1d_b", "x_proj_b",
                                         "dt_proj_b", "conv1d_s", "x_proj_s", "dt_proj_s", "out_proj"]
    a = torch.log(torch.arange(1, 17.0)).expand(96, 16)
    for sfx in ("", "_b", "_s"):
        torch.testing.assert_close(getattr(m, f"A{sfx}_log"), a)
        assert torch.equal(getattr(m, f"D{sfx}"), torch.ones(96))
        assert getattr(m, f"A{sfx}_log")._no_weight_decay and getattr(m, f"D{sfx}")._no_weight_decay
    assert F.softplus(m.dt_proj.bias).max() <= 0.1 + 1e-6             # Mamba's dt init on the forward branch only
    for sfx in ("_b", "_s"):                                          # PyTorch default: bias U(+-R^-1/2), R = 3
        assert F.softplus(getattr(m, f"dt_proj{sfx}").bias).min() > F.softplus(torch.tensor(-3 ** -0.5)) - 1e-6


def test_tom_refuses_other_bimamba_types_and_bad_lengths():
    with pytest.raises(ValueError, match="bimamba_type must be 'v3'"):
        TriOrientedMamba(8, bimamba_type="v2")
    with pytest.raises(ValueError, match="10 tokens cannot be split into nslices=4"):
        TriOrientedMamba(8, nslices=4)(torch.randn(1, 10, 8))


# spec §8 / §1.6: (in, out) -> parameters
COUNTS = {(4, 4): 67_416_196, (1, 14): 67_363_262, (1, 2): 67_362_674}


def test_registered_as_3d():
    assert "segmamba" in list_models()
    info = model_info("segmamba")
    assert info.default_size == 128 and info.extra["spatial_dims"] == 3


@pytest.mark.parametrize("cin,k", list(COUNTS))
def test_parameter_count_equals_the_spec(cin, k):
    with torch.device("meta"):
        m = create_model("segmamba", in_channels=cin, num_classes=k)
    assert n_params(m) == COUNTS[(cin, k)]


def test_parameter_breakdown_equals_the_spec():
    with torch.device("meta"):
        m = create_model("segmamba", in_channels=4, num_classes=4)
    part = {name: n_params(mod) for name, mod in m.named_children()}
    assert part == {"vit": 15_718_080, "encoder1": 67_584, "encoder2": 377_856, "encoder3": 1_511_424,
                    "encoder4": 6_045_696, "encoder5": 24_182_784, "decoder5": 14_598_144, "decoder4": 3_649_536,
                    "decoder3": 912_384, "decoder2": 228_096, "decoder1": 124_416, "out": 196}
    assert [n_params(s) for s in m.vit.stages] == [62_976, 188_160, 625_152, 2_245_632]
    assert n_params(m.vit.downsample_layers) == 840_720 and n_params(m.vit.gscs) == 10_969_920
    assert n_params(m.vit.mlps) == 785_520
    assert [layer.mamba.nslices for s in m.vit.stages for layer in s] == [64, 64, 32, 32, 16, 16, 8, 8]


def _spec_keys(name):
    rows = [line.split("\t") for line in open(os.path.join(SPEC, "keys", f"{name}_keys.txt")).read().splitlines()]
    return [(k, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())) for k, shape in rows]


@needs_spec
def test_state_dict_keys_and_shapes_equal_upstreams_and_load_strictly():
    with torch.device("meta"):
        m = create_model("segmamba", in_channels=4, num_classes=4)
    spec = _spec_keys("segmamba")
    assert [(k, tuple(v.shape)) for k, v in m.state_dict().items()] == spec        # order included
    with torch.device("meta"):
        sd = {k: torch.empty(s) for k, s in spec}
    res = m.load_state_dict(sd, strict=True, assign=True)
    assert not res.missing_keys and not res.unexpected_keys


# ------------------------------------------------------------------------------------------ forward / backward

def test_forward_backward_small_logits_and_every_parameter_used():
    torch.manual_seed(0)
    m = create_model("segmamba", in_channels=2, num_classes=3, **TINY)
    x = torch.randn(2, 2, 32, 16, 32)
    y = m(x)
    assert y.shape == (2, 3, 32, 16, 32) and y.dtype == torch.float32
    assert y.min() < 0 < y.max()                                      # logits, no activation
    y.square().mean().backward()
    no_grad = [k for k, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []                                              # spec: trees/segmamba_unused.txt is empty
    feats = m.forward_intermediates(x)
    assert [tuple(f.shape) for f in feats] == [(2, 48, 16, 8, 16), (2, 8, 8, 4, 8), (2, 8, 4, 2, 4), (2, 8, 2, 1, 2)]
    assert (m.spatial_dims, m.downsample_factor, m.default_input_size) == (3, 16, (128, 128, 128))


def test_num_slices_modes():
    with torch.device("meta"):
        up = create_model("segmamba", depths=(1, 1, 1, 1), num_slices="upstream")
        dep = create_model("segmamba", depths=(1, 1, 1, 1))                       # the default: "depth"
        fix = create_model("segmamba", depths=(1, 1, 1, 1), num_slices=[64, 32, 16, 8])
    # at depth 128 "depth" derives exactly upstream's [64, 32, 16, 8]
    assert up.slices_for((128, 96, 160)) == dep.slices_for((128, 96, 160)) == [64, 32, 16, 8]
    assert dep.slices_for((64, 32, 32)) == [32, 16, 8, 4]
    assert fix.slices_for((64, 64, 64)) == [64, 32, 16, 8]           # upstream's chunks (half slices) at 64^3
    with pytest.raises(ValueError, match="only for an input depth of 128, got depth 64"):
        up.slices_for((64, 64, 64))
    with pytest.raises(ValueError, match="stage 3 .* 8 tokens, not divisible by num_slices\\[3\\] = 8|not divisible"):
        fix.slices_for((32, 16, 16))
    with pytest.raises(ValueError, match="not divisible by 16"):
        dep.slices_for((40, 32, 32))
    with pytest.raises(ValueError, match="num_slices must be"):
        create_model("segmamba", num_slices="slices")


def test_depth_mode_equals_explicit_chunk_counts():
    """num_slices='depth' at 32x16x16 is the explicit [16, 8, 4, 2] (same weights, same output)."""
    torch.manual_seed(0)
    a = create_model("segmamba", in_channels=1, num_classes=2, **TINY).eval()
    b = create_model("segmamba", in_channels=1, num_classes=2, **dict(TINY, num_slices=[16, 8, 4, 2])).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 32, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
        c = create_model("segmamba", in_channels=1, num_classes=2, **dict(TINY, num_slices=[8, 8, 4, 2])).eval()
        c.load_state_dict(a.state_dict())
        assert not torch.allclose(a(x), c(x))                        # the chunk count is used


def test_bad_inputs_one_clear_error():
    with torch.device("meta"):
        m = create_model("segmamba", in_channels=4, num_classes=4, depths=(1, 1, 1, 1), num_slices="depth")
    with pytest.raises(ValueError, match="expected a 5-D input"):
        m(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="expected 4 input channel"):
        m(torch.randn(1, 3, 32, 32, 32))
    with pytest.raises(ValueError, match="feat_size\\[0\\] must be 48"):
        create_model("segmamba", feat_size=(32, 64, 128, 256))


def test_meta_shapes_at_128_equal_the_spec_trace(monkeypatch):
    """Full-size forward on the meta device (the scan replaced by a shape stand-in): the decoder shapes of
    ``shapes/segmamba_shapes128.txt``."""
    monkeypatch.setattr(mamba1_mod, "selective_scan", lambda u, *a, **k: torch.empty_like(u))
    with torch.device("meta"):
        m = create_model("segmamba", in_channels=4, num_classes=4)
        shapes = {}
        for name in ("encoder5", "decoder5", "decoder2", "out"):
            m.get_submodule(name).register_forward_hook(lambda mod, a, o, name=name: shapes.update({name: o.shape}))
        m(torch.empty(1, 4, 128, 128, 128))
    assert {k: tuple(v) for k, v in shapes.items()} == {
        "encoder5": (1, 768, 8, 8, 8), "decoder5": (1, 384, 16, 16, 16), "decoder2": (1, 48, 128, 128, 128),
        "out": (1, 4, 128, 128, 128)}


def test_bf16_autocast_step_is_finite_without_casts():
    """Upstream runs ToM under the caller's autocast (no fp32 cast): the output comes out in bf16; the scan
    itself computes in fp32; one step gives finite gradients. Three scans per ToM layer (depths 1: 4 layers)."""
    from mambaseg.ops import record_scans
    torch.manual_seed(0)
    m = create_model("segmamba", in_channels=1, num_classes=2, **TINY)
    x = torch.randn(2, 1, 16, 32, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16), record_scans() as calls:
        y = m(x)
    assert y.dtype == torch.bfloat16 and len(calls) == 3 * 4
    y.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
