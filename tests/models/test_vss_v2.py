"""VMamba v2 blocks: SS2Dv2 against a slow float64 oracle written from the spec's maths (§A.3), forward and
gradients; Linear2d / LayerNorm2d against their definitions; parameter counts of the spec (§4.3); forward-type
parsing; the "v0" init (A = -1 for d_state 1)."""

import pytest
import torch
import torch.nn.functional as F

from mambaseg.models.blocks.vss_v2 import (LayerNorm2d, Linear2d, SS2Dv2, VSSBlockV2, downsample_v3, parse_forward_type,
                                    patch_embed_v2)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def orderings(H, W):
    """Row-major positions visited by each of the 4 directions (spec §A.3 step 3)."""
    row = [h * W + w for h in range(H) for w in range(W)]
    col = [h * W + w for w in range(W) for h in range(H)]
    return [row, col, row[::-1], col[::-1]]


def ss2d_v2_oracle(m: SS2Dv2, x: torch.Tensor) -> torch.Tensor:
    """Spec §A.3, channels-first, one direction and one time step at a time."""
    B, C, H, W = x.shape
    D, N, R, L = m.d_inner, m.d_state, m.dt_rank, H * W
    xz = torch.einsum("bchw,oc->bohw", x, m.in_proj.weight)
    z = None
    if m.gated:
        xz, z = xz[:, :D], xz[:, D:]
        if not m.flags["nozact"]:
            z = z * torch.sigmoid(z)
    if m.conv2d is not None:
        xz = F.conv2d(xz, m.conv2d.weight, m.conv2d.bias, padding=m.conv2d.padding, groups=D)
    u_map = (xz * torch.sigmoid(xz)).reshape(B, D, L)
    A = -torch.exp(m.A_logs)                                               # (4D, N)
    y = torch.zeros(B, D, L, dtype=x.dtype)
    for k, order in enumerate(orderings(H, W)):
        u = u_map[:, :, order]                                             # (B, D, L) in scan order
        proj = torch.einsum("bdl,cd->bcl", u, m.x_proj_weight[k])
        dt, Bk, Ck = proj[:, :R], proj[:, R:R + N], proj[:, R + N:]
        delta = F.softplus(torch.einsum("brl,dr->bdl", dt, m.dt_projs_weight[k]) + m.dt_projs_bias[k][None, :, None])
        Ak, Dk = A[k * D:(k + 1) * D], m.Ds[k * D:(k + 1) * D]
        h = torch.zeros(B, D, N, dtype=x.dtype)
        for t in range(L):
            h = torch.exp(delta[:, :, t, None] * Ak) * h + delta[:, :, t, None] * Bk[:, None, :, t] * u[:, :, t, None]
            out_t = (h * Ck[:, None, :, t]).sum(-1) + Dk * u[:, :, t]
            y[:, :, order[t]] = y[:, :, order[t]] + out_t                   # back to row-major and sum
    y = y.reshape(B, D, H, W)
    if not m.flags["onnone"]:
        mu = y.mean(1, keepdim=True)
        var = y.var(1, unbiased=False, keepdim=True)
        y = (y - mu) / torch.sqrt(var + 1e-5) * m.out_norm.weight[:, None, None] + m.out_norm.bias[:, None, None]
    if m.flags["oact"]:
        y = F.gelu(y)
    if z is not None:
        y = y * z
    return torch.einsum("bdhw,cd->bchw", y, m.out_proj.weight)


def _randomise(m):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))


@pytest.mark.parametrize("kw", [dict(d_state=1, forward_type="v05_noz"),
                                dict(d_state=2, ssm_ratio=2.0, forward_type="v05"),
                                dict(d_state=1, forward_type="v3_onnone_nozact", conv_bias=True),
                                dict(d_state=3, forward_type="v04_noz_oact", d_conv=1)])
def test_ss2d_v2_matches_fp64_oracle_forward_and_gradients(kw):
    torch.manual_seed(0)
    m = SS2Dv2(6, **kw).double()
    _randomise(m)
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    y = m(x)
    y_ref = ss2d_v2_oracle(m, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    params = [x] + list(m.parameters())
    ours = torch.autograd.grad(y, params, g)
    ref = torch.autograd.grad(y_ref, params, g)
    for (name, _), a, b in zip([("x", None)] + list(m.named_parameters()), ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)


def test_d_state_1_init_gives_a_minus_one_and_v0_dt():
    torch.manual_seed(0)
    m = SS2Dv2(96)
    assert torch.equal(-torch.exp(m.A_logs), -torch.ones(384, 1))
    assert torch.equal(m.Ds, torch.ones(384))
    dt = F.softplus(m.dt_projs_bias.double())
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert m.conv2d.bias is None and m.in_proj.bias is None and not m.gated


def test_linear2d_is_a_1x1_conv_and_loads_4d_weights():
    torch.manual_seed(0)
    lin = Linear2d(5, 3)
    x = torch.randn(2, 5, 4, 6)
    ref = torch.einsum("bchw,oc->bohw", x, lin.weight) + lin.bias[None, :, None, None]
    torch.testing.assert_close(lin(x), ref)
    w4 = torch.randn(3, 5, 1, 1)
    lin.load_state_dict({"weight": w4, "bias": torch.zeros(3)})
    assert torch.equal(lin.weight, w4.flatten(1))


def test_layernorm2d_normalises_over_channels():
    torch.manual_seed(0)
    ln = LayerNorm2d(4)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(2, 4, 3, 5)
    mu, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    ref = (x - mu) / torch.sqrt(var + 1e-5) * ln.weight[:, None, None] + ln.bias[:, None, None]
    torch.testing.assert_close(ln(x), ref)


# spec §4.3: blocks / SS2D / MLP per stage of VMamba-T[s1l8] (d_state 1, ratio 1, v05_noz, MLP ratio 4)
@pytest.mark.parametrize("C,block,ss2d,mlp", [(96, 100_608, 26_016, 74_208), (192, 394_752, 98_112, 295_872),
                                              (384, 1_563_648, 380_544, 1_181_568),
                                              (768, 6_223_872, 1_498_368, 4_722_432)])
def test_v2_block_parameter_counts_match_spec(C, block, ss2d, mlp):
    with torch.device("meta"):
        b = VSSBlockV2(C, d_state=1, ssm_ratio=1.0, forward_type="v05_noz")
    assert (n_params(b), n_params(b.op), n_params(b.mlp)) == (block, ss2d, mlp)


def test_patch_embed_and_downsample_counts_and_indices():
    pe = patch_embed_v2(3, 96)
    assert n_params(pe[:5]) == 1_440 and n_params(pe[5:]) == 41_760
    assert {k.split(".")[0] for k in pe.state_dict()} == {"0", "2", "5", "7"}
    ds = downsample_v3(96)
    assert n_params(ds) == 166_464 and {k.split(".")[0] for k in ds.state_dict()} == {"1", "3"}
    assert pe(torch.randn(1, 3, 32, 32)).shape == (1, 96, 8, 8)


def test_forward_type_parsing():
    assert parse_forward_type("v05_noz") == dict(core="v05", no32=False, oact=False, noz=True, nozact=False,
                                                 onnone=False)
    for bad in ("v052dc_noz", "v05_noz_oncnorm", "xv1a", "v0"):
        with pytest.raises(ValueError, match="not supported"):
            SS2Dv2(8, forward_type=bad)


def test_v2_layer_configured_as_v0_equals_the_v0_ss2d():
    # spec §A.1: with a gate, conv bias, d_state 16 and ratio 2 the v2 layer is the v0 maths (same key names)
    from mambaseg.models.blocks.vss import SS2D
    torch.manual_seed(0)
    v0 = SS2D(8).double()
    v2 = SS2Dv2(8, d_state=16, ssm_ratio=2.0, conv_bias=True, forward_type="v05").double()
    v2.load_state_dict(v0.state_dict(), strict=True)
    x = torch.randn(1, 3, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(v2(x.permute(0, 3, 1, 2)), v0(x).permute(0, 3, 1, 2), rtol=1e-10, atol=1e-12)
