"""Shared VMamba v0 blocks: parameter layout and counts from the spec, SS2D against a from-the-math oracle,
patch merging / expanding against explicit index formulas, the scan call contract."""

import pytest
import torch
import torch.nn.functional as F

import mambaseg.models.blocks.vss as vss
from mambaseg.models.blocks.vss import (SS2D, FinalPatchExpand2D, FinalPatchExpandX4, PatchEmbed2D, PatchExpand,
                                 PatchExpand2D, PatchMerging2D, VSSBlock, VSSLayer, VSSLayerUp,
                                 pixel_shuffle_channels_last, stage_drop_path_rates)
from mambaseg.ops import selective_scan_reference


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ---- spec §0: per-block parameter counts and the SS2D parameter table --------------------------------------
@pytest.mark.parametrize("C,expected", [(96, 105_408), (192, 339_840), (384, 1_195_776), (768, 4_455_936)])
def test_vss_block_parameter_count_matches_spec(C, expected):
    assert n_params(VSSBlock(C)) == expected


def test_ss2d_parameter_names_and_shapes_match_spec_table():
    C, D, R, N = 96, 192, 6, 16            # dt_rank = ceil(96/16) = 6
    shapes = {k: tuple(v.shape) for k, v in SS2D(C).state_dict().items()}
    assert shapes == {
        "in_proj.weight": (2 * D, C),
        "conv2d.weight": (D, 1, 3, 3), "conv2d.bias": (D,),
        "x_proj_weight": (4, R + 2 * N, D),
        "dt_projs_weight": (4, D, R),
        "dt_projs_bias": (4, D),
        "A_logs": (4 * D, N),
        "Ds": (4 * D,),
        "out_norm.weight": (D,), "out_norm.bias": (D,),
        "out_proj.weight": (C, D),
    }


@pytest.mark.parametrize("C,rank", [(96, 6), (192, 12), (384, 24), (768, 48)])
def test_dt_rank_is_ceil_c_over_16(C, rank):
    assert SS2D(C).dt_rank == rank


def test_ss2d_initialisation_follows_spec():
    torch.manual_seed(0)
    m = SS2D(96)
    D, R = 192, 6
    assert torch.equal(m.A_logs, torch.log(torch.arange(1, 17.0)).expand(4 * D, 16))      # S4D-real
    assert torch.equal(m.Ds, torch.ones(4 * D))
    dt = F.softplus(m.dt_projs_bias.double())                                               # dt ~ logU[1e-3, .1]
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert m.dt_projs_weight.abs().max() <= R ** -0.5
    assert m.x_proj_weight.abs().max() <= D ** -0.5
    assert m.conv2d.bias is not None and m.in_proj.bias is None and m.out_proj.bias is None
    assert m.A_logs._no_weight_decay and m.Ds._no_weight_decay


def test_block_uses_layernorm_eps_1e5_and_has_no_mlp():
    blk = VSSBlock(32)
    assert blk.ln_1.eps == 1e-5
    assert {n.split(".")[0] for n, _ in blk.named_parameters()} == {"ln_1", "self_attention"}


# ---- SS2D forward against an oracle written from the spec's math --------------------------------------------
def ss2d_oracle(m: SS2D, x: torch.Tensor) -> torch.Tensor:
    """Spec §0 forward, one direction at a time with the ungrouped reference scan and explicit index maps."""
    B, H, W, C = x.shape
    L, D, N, R = H * W, m.d_inner, m.d_state, m.dt_rank
    xz = x @ m.in_proj.weight.t()
    xi, z = xz[..., :D], xz[..., D:]
    xi = F.silu(F.conv2d(xi.permute(0, 3, 1, 2), m.conv2d.weight, m.conv2d.bias, padding=1, groups=D))
    row = xi.reshape(B, D, L)                                        # index h*W + w
    col = xi.transpose(2, 3).reshape(B, D, L)                        # index w*H + h
    seqs = [row, col, row.flip(-1), col.flip(-1)]
    outs = []
    for k in range(4):
        u = seqs[k]
        proj = torch.einsum("bdl,cd->bcl", u, m.x_proj_weight[k])
        dts, Bk, Ck = proj[:, :R], proj[:, R:R + N], proj[:, R + N:]
        delta = torch.einsum("brl,dr->bdl", dts, m.dt_projs_weight[k])
        sl = slice(k * D, (k + 1) * D)
        outs.append(selective_scan_reference(u, delta, -torch.exp(m.A_logs[sl]), Bk, Ck, D=m.Ds[sl],
                                             delta_bias=m.dt_projs_bias[k], delta_softplus=True))
    y = torch.zeros(B, D, H, W, dtype=x.dtype)
    for h in range(H):
        for w in range(W):
            i_row, i_col = h * W + w, w * H + h
            y[:, :, h, w] = (outs[0][:, :, i_row] + outs[2][:, :, L - 1 - i_row]
                             + outs[1][:, :, i_col] + outs[3][:, :, L - 1 - i_col])
    y = F.layer_norm(y.permute(0, 2, 3, 1), (D,), m.out_norm.weight, m.out_norm.bias)
    return (y * F.silu(z)) @ m.out_proj.weight.t()


@pytest.mark.parametrize("H,W", [(3, 5), (4, 4)])
def test_ss2d_matches_oracle_float64(H, W):
    torch.manual_seed(0)
    m = SS2D(8).double()
    with torch.no_grad():
        m.out_norm.weight.normal_()
        m.out_norm.bias.normal_()
    x = torch.randn(2, H, W, 8, dtype=torch.float64)
    torch.testing.assert_close(m(x), ss2d_oracle(m, x), rtol=1e-9, atol=1e-10)


def test_ss2d_float32_close_to_float64_oracle():
    torch.manual_seed(1)
    m = SS2D(16)
    x = torch.randn(1, 4, 6, 16)
    ref = ss2d_oracle(m.double(), x.double()).float()
    torch.testing.assert_close(m.float()(x), ref, rtol=1e-4, atol=1e-5)


def test_ss2d_calls_the_fused_cross_scan_in_fp32_with_bias_and_softplus(monkeypatch):
    calls = []
    real = vss.cross_selective_scan

    def spy(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, **kw):
        calls.append(dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias,
                          delta_softplus=delta_softplus, kw=kw))
        return real(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus, **kw)

    monkeypatch.setattr(vss, "cross_selective_scan", spy)
    m = SS2D(16)                                   # D = 32, N = 16, L = 12
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(torch.randn(2, 3, 4, 16))
    (c,) = calls
    assert c["kw"] == {"h": 3, "w": 4}             # no backend argument: the process default is used
    assert c["u"].shape == (2, 32, 12) and c["delta"].shape == (2, 4, 32, 12)
    assert c["A"].shape == (128, 16) and c["B"].shape == (2, 4, 16, 12) and c["C"].shape == (2, 4, 16, 12)
    assert c["D"].shape == (128,) and c["delta_bias"].shape == (128,)
    assert c["delta_softplus"] is True
    for k in ("u", "delta", "A", "B", "C", "D", "delta_bias"):
        assert c[k].dtype == torch.float32, k
    assert (c["A"] < 0).all()


# ---- patch embedding / merging / expanding --------------------------------------------------------------------
def test_patch_embed_param_count_and_shape():
    pe = PatchEmbed2D(4, 3, 96)
    assert n_params(pe) == 4_896                                      # spec §0
    assert pe(torch.randn(1, 3, 32, 64)).shape == (1, 8, 16, 96)


def test_patch_merging_matches_index_formula():
    torch.manual_seed(0)
    m = PatchMerging2D(3)
    x = torch.randn(2, 4, 6, 3)
    out = m(x)
    assert out.shape == (2, 2, 3, 6)
    for i in range(2):
        for j in range(3):
            cat = torch.cat([x[:, 2 * i, 2 * j], x[:, 2 * i + 1, 2 * j], x[:, 2 * i, 2 * j + 1],
                             x[:, 2 * i + 1, 2 * j + 1]], dim=-1)    # offsets (0,0), (1,0), (0,1), (1,1)
            torch.testing.assert_close(out[:, i, j], m.reduction(m.norm(cat)))
    assert m.reduction.bias is None


def test_patch_merging_rejects_odd_maps():
    with pytest.raises(ValueError, match="divisible by 32"):
        PatchMerging2D(3)(torch.randn(1, 5, 4, 3))


def test_pixel_shuffle_matches_einops():
    einops = pytest.importorskip("einops")
    x = torch.randn(2, 3, 5, 4 * 4 * 6)
    for p in (2, 4):
        ref = einops.rearrange(x, "b h w (p1 p2 c) -> b (h p1) (w p2) c", p1=p, p2=p)
        assert torch.equal(pixel_shuffle_channels_last(x, p), ref)


@pytest.mark.parametrize("cls,dim,in_c,out_c,scale,params", [
    (PatchExpand2D, 384, 768, 384, 2, 768 * 1536 + 2 * 384),        # VM-UNet: Linear(2d->4d), LN(d)
    (FinalPatchExpand2D, 96, 96, 24, 4, 96 * 384 + 2 * 24),          # VM-UNet head: Linear(96->384), LN(24)
    (PatchExpand, 768, 768, 384, 2, 768 * 1536 + 2 * 384),           # Mamba-UNet: Linear(d->2d), LN(d/2)
    (FinalPatchExpandX4, 96, 96, 96, 4, 96 * 1536 + 2 * 96),         # Mamba-UNet head: Linear(96->1536), LN(96)
])
def test_expand_layers_shapes_and_counts(cls, dim, in_c, out_c, scale, params):
    m = cls(dim)
    assert n_params(m) == params and m.expand.bias is None
    assert m(torch.randn(1, 2, 3, in_c)).shape == (1, 2 * scale, 3 * scale, out_c)


def test_layer_up_order_of_upsampling_and_blocks():
    torch.manual_seed(0)
    first = VSSLayerUp(8, 1, upsample=PatchExpand2D(8), upsample_first=True)        # VM-UNet: 16ch -> up -> 8
    assert first(torch.randn(1, 2, 2, 16)).shape == (1, 4, 4, 8)
    last = VSSLayerUp(8, 1, upsample=PatchExpand(8), upsample_first=False)          # Mamba-UNet: 8ch -> 4
    assert last(torch.randn(1, 2, 2, 8)).shape == (1, 4, 4, 4)


def test_vss_layer_blocks_then_merging():
    layer = VSSLayer(8, 2, drop_path=[0.0, 0.1], downsample=True)
    assert [b.drop_path.drop_prob for b in layer.blocks] == [0.0, 0.1]
    assert layer(torch.randn(1, 4, 4, 8)).shape == (1, 2, 2, 16)
    assert VSSLayer(8, 1).downsample is None


def test_drop_path_rates_are_linspace_over_all_blocks():
    rates = stage_drop_path_rates([2, 2, 2, 2], 0.2)
    flat = [r for s in rates for r in s]
    assert [len(s) for s in rates] == [2, 2, 2, 2]
    assert flat == pytest.approx([0.2 * i / 7 for i in range(8)])


def test_block_drop_path_drops_whole_samples_and_rescales():
    torch.manual_seed(0)
    blk = VSSBlock(8, drop_path=0.5)
    x = torch.randn(16, 2, 2, 8)
    branch = blk.eval()(x) - x                       # eval: the full residual branch
    delta = blk.train()(x) - x
    kept = [not torch.equal(delta[i], torch.zeros_like(delta[i])) for i in range(16)]
    assert 0 < sum(kept) < 16
    for i in range(16):
        if kept[i]:
            torch.testing.assert_close(delta[i], branch[i] / 0.5)
