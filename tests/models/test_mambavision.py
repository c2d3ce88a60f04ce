"""MambaVision blocks (mambaseg.models.blocks.mambavision) against slow references written from the math in spec §4/§5
and the parameter counts measured on the upstream code (spec §4.2)."""

import math

import pytest
import torch
import torch.nn.functional as F

import mambaseg.models.blocks.mambavision as mv
from mambaseg.models.blocks.mambavision import (Attention, Block, ConvBlock, Downsample, FinalPatchExpand2D,
                                         MambaVisionLayer, MambaVisionMixer, MambaVisionStem, PatchExpand2D,
                                         attention_block_indices, pad_to_window, window_partition,
                                         window_reverse)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def _randomise(module, seed=0):
    """Non-trivial values everywhere (upstream init leaves biases at zero, which would hide bias bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) * 2 - 1)
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return module


# ------------------------------------------------------------------------------------------------ mixer

def reference_mixer(m: MambaVisionMixer, h: torch.Tensor) -> torch.Tensor:
    """MambaVisionMixer written from spec §4.2 + §5: explicit convs and a token-by-token recurrence."""
    Bt, L, Cm = h.shape
    half = m.d_inner // 2
    xz = h @ m.in_proj.weight.T
    x, z = xz[..., :half], xz[..., half:]

    def dwconv_same(v, w):  # v (B, L, c), w (c, 1, 3): out[t] = w0 v[t-1] + w1 v[t] + w2 v[t+1]
        vp = F.pad(v.transpose(1, 2), (1, 1))
        out = sum(w[:, 0, k][None, :, None] * vp[:, :, k:k + L] for k in range(3))
        return out.transpose(1, 2)

    x = F.silu(dwconv_same(x, m.conv1d_x.weight))
    z = F.silu(dwconv_same(z, m.conv1d_z.weight))
    x_dbl = x @ m.x_proj.weight.T
    r, N = m.dt_rank, m.d_state
    dt, Bm, Cm_ = x_dbl[..., :r], x_dbl[..., r:r + N], x_dbl[..., r + N:]
    # upstream's double dt bias: W dt + b (dt_proj) + b (delta_bias)
    delta = F.softplus(dt @ m.dt_proj.weight.T + 2 * m.dt_proj.bias)
    A = -torch.exp(m.A_log)
    state = torch.zeros(Bt, half, N, dtype=h.dtype)
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, t, :, None] * A)
        state = dA * state + delta[:, t, :, None] * Bm[:, t, None, :] * x[:, t, :, None]
        ys.append((state * Cm_[:, t, None, :]).sum(-1) + m.D * x[:, t])
    y = torch.stack(ys, dim=1)
    return torch.cat([y, z], dim=-1) @ m.out_proj.weight.T


def test_mixer_matches_reference_with_double_dt_bias():
    torch.manual_seed(0)
    m = _randomise(MambaVisionMixer(24)).double()
    h = torch.randn(2, 11, 24, dtype=torch.float64)
    out = m(h)
    ref = reference_mixer(m, h)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    # the double bias matters: a single-bias version gives a different answer
    with torch.no_grad():
        m_single = _randomise(MambaVisionMixer(24)).double()
        m_single.load_state_dict(m.state_dict())
        m_single.dt_proj.bias.mul_(0.5)  # reference with 2 * (b/2) = b: single bias
    assert not torch.allclose(reference_mixer(m_single, h), out, atol=1e-6)


def test_mixer_defaults_and_param_names():
    m = MambaVisionMixer(320)
    assert (m.d_state, m.d_conv, m.expand, m.dt_rank) == (8, 3, 1, 20)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"in_proj.weight": (320, 320), "x_proj.weight": (36, 160), "dt_proj.weight": (160, 20),
                      "dt_proj.bias": (160,), "A_log": (160, 8), "D": (160,), "out_proj.weight": (320, 320),
                      "conv1d_x.weight": (160, 1, 3), "conv1d_z.weight": (160, 1, 3)}
    assert n_params(m) == 216_320  # spec §4.2 (measured upstream)
    torch.testing.assert_close(m.A_log[3], torch.log(torch.arange(1.0, 9.0)))
    # dt init: softplus(bias) in [dt_min, dt_max]
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001


def test_mixer_calls_selective_scan_as_specified(monkeypatch):
    calls = []
    real = mv.selective_scan

    def spy(u, delta, A, B, C, *args, **kwargs):
        calls.append(dict(u=u, delta=delta, A=A, B=B, C=C, args=args, kwargs=kwargs))
        return real(u, delta, A, B, C, *args, **kwargs)

    monkeypatch.setattr(mv, "selective_scan", spy)
    m = MambaVisionMixer(32)
    m(torch.randn(3, 10, 32))
    (c,) = calls
    assert c["u"].shape == (3, 16, 10) and c["delta"].shape == (3, 16, 10)
    assert c["B"].shape == (3, 8, 10) and c["C"].shape == (3, 8, 10)  # ungrouped 3-D
    kw = c["kwargs"]
    assert "backend" not in kw and not c["args"]
    assert kw["delta_softplus"] is True and kw["z"] is None
    torch.testing.assert_close(kw["delta_bias"], m.dt_proj.bias.detach())
    torch.testing.assert_close(kw["D"], m.D.detach())
    torch.testing.assert_close(c["A"], -torch.exp(m.A_log.detach()))
    # delta handed over already contains dt_proj's bias once (the scan adds it a second time)
    with torch.no_grad():
        dt_low = (c["u"].transpose(1, 2) @ m.x_proj.weight.T)[..., :m.dt_rank]
        expected = (dt_low @ m.dt_proj.weight.T + m.dt_proj.bias).transpose(1, 2)
    torch.testing.assert_close(c["delta"], expected)


def test_mixer_conv_is_non_causal_with_one_token_lookahead():
    torch.manual_seed(1)
    m = _randomise(MambaVisionMixer(16))
    h = torch.randn(1, 9, 16, requires_grad=True)
    out = m(h)
    t = 4
    (g,) = torch.autograd.grad(out[0, t].sum(), h)
    per_token = g[0].abs().sum(-1)
    assert per_token[t + 1] > 0             # sees the next token (symmetric 'same' conv)
    assert torch.all(per_token[t + 2:] == 0)  # but nothing further (the scan itself is causal)
    assert torch.all(per_token[: t + 2] > 0)


def test_mixer_rejects_odd_inner_width():
    with pytest.raises(ValueError, match="even"):
        MambaVisionMixer(15)


# ------------------------------------------------------------------------------------------------ attention

def test_attention_matches_softmax_math():
    torch.manual_seed(2)
    a = _randomise(Attention(16, num_heads=4, qkv_bias=True)).double().eval()
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    qkv = x @ a.qkv.weight.T + a.qkv.bias
    q, k, v = qkv.split(16, dim=-1)
    heads = []
    for hh in range(4):
        sl = slice(4 * hh, 4 * hh + 4)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(4), dim=-1)
        heads.append(w @ v[..., sl])
    ref = torch.cat(heads, -1) @ a.proj.weight.T + a.proj.bias
    torch.testing.assert_close(a(x), ref, rtol=1e-9, atol=1e-9)
    assert set(a.state_dict()) == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}


def test_attention_rejects_bad_heads():
    with pytest.raises(ValueError, match="num_heads"):
        Attention(10, num_heads=4)


# ------------------------------------------------------------------------------------------------ blocks

@pytest.mark.parametrize("depth,expected", [(8, [4, 5, 6, 7]), (4, [2, 3]), (3, [2]), (1, []), (5, [3, 4]),
                                            (7, [4, 5, 6]), (10, [5, 6, 7, 8, 9]), (2, [1])])
def test_attention_block_indices_follow_upstream_rule(depth, expected):
    assert attention_block_indices(depth) == expected


def test_param_counts_match_upstream_measurements():
    # spec §4.2: measured on the upstream code (MambaVision-T widths)
    assert n_params(Block(320, 8, use_attention=False, qkv_bias=True)) == 1_038_400
    assert n_params(Block(320, 8, use_attention=True, qkv_bias=True)) == 1_232_960
    assert n_params(Block(640, 16, use_attention=False, qkv_bias=True)) == 4_137_600
    assert n_params(Block(640, 16, use_attention=True, qkv_bias=True)) == 4_923_520
    assert n_params(ConvBlock(80)) == 115_680
    assert n_params(ConvBlock(160)) == 461_760


def test_block_matches_manual_composition_with_layer_scale():
    torch.manual_seed(3)
    blk = _randomise(Block(16, 2, use_attention=True, qkv_bias=True, layer_scale=1e-5)).eval()
    assert set(k for k in blk.state_dict() if k.startswith("gamma")) == {"gamma_1", "gamma_2"}
    blk.gamma_1.data.fill_(0.7)
    blk.gamma_2.data.fill_(-0.4)
    x = torch.randn(2, 5, 16)
    y = x + 0.7 * blk.mixer(blk.norm1(x))
    y = y + -0.4 * blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(y))))
    torch.testing.assert_close(blk(x), y)
    fresh = Block(16, 2, use_attention=False, layer_scale=1e-5)
    torch.testing.assert_close(fresh.gamma_1.detach(), torch.full((16,), 1e-5))
    assert Block(16, 2, use_attention=False).gamma_1 is None
    assert isinstance(Block(16, 2, use_attention=False).mixer, MambaVisionMixer)


def test_convblock_matches_manual_composition():
    torch.manual_seed(4)
    cb = _randomise(ConvBlock(6, layer_scale=0.5)).eval()
    with torch.no_grad():
        cb.norm1.running_mean.uniform_(-1, 1); cb.norm1.running_var.uniform_(0.5, 2)
        cb.norm2.running_mean.uniform_(-1, 1); cb.norm2.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 6, 7, 9)

    def bn(t, n):
        return (t - n.running_mean[:, None, None]) / torch.sqrt(n.running_var[:, None, None] + 1e-5) * \
            n.weight[:, None, None] + n.bias[:, None, None]

    y = bn(F.conv2d(x, cb.conv1.weight, cb.conv1.bias, padding=1), cb.norm1)
    y = 0.5 * y * (1 + torch.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y ** 3)))
    y = bn(F.conv2d(y, cb.conv2.weight, cb.conv2.bias, padding=1), cb.norm2)
    torch.testing.assert_close(cb(x), x + cb.gamma[:, None, None] * y, rtol=1e-5, atol=1e-5)


def test_stem_and_downsample_shapes_and_names():
    stem = MambaVisionStem(in_chans=1, in_dim=8, dim=12)
    assert stem(torch.randn(2, 1, 32, 48)).shape == (2, 12, 8, 12)
    assert {k.split(".")[1] for k in stem.state_dict()} == {"0", "1", "3", "4"}
    assert stem.conv_down[1].eps == 1e-4 and stem.conv_down[0].bias is None
    d = Downsample(12)
    assert d(torch.randn(1, 12, 8, 12)).shape == (1, 24, 4, 6)
    assert list(d.state_dict()) == ["reduction.0.weight"]


# ------------------------------------------------------------------------------------------------ windows

def test_window_partition_layout_and_roundtrip():
    x = torch.randn(2, 3, 6, 9)
    w = window_partition(x, 3)
    assert w.shape == (2 * 2 * 3, 9, 3)
    for b in range(2):
        for r in range(2):
            for c in range(3):
                win = w[b * 6 + r * 3 + c]
                for j in range(9):
                    torch.testing.assert_close(win[j], x[b, :, 3 * r + j // 3, 3 * c + j % 3])
    torch.testing.assert_close(window_reverse(w, 3, 6, 9), x)


def test_pad_to_window_is_right_bottom_zero_pad():
    x = torch.randn(1, 2, 5, 7)
    p = pad_to_window(x, 4)
    assert p.shape == (1, 2, 8, 8)
    torch.testing.assert_close(p[..., :5, :7], x)
    assert p[..., 5:, :].abs().sum() == 0 and p[..., :, 7:].abs().sum() == 0
    assert pad_to_window(x, 1) is x


def _reference_hybrid_layer(layer, x):
    """Pad right/bottom with zeros, run the blocks on each window's tokens, put back, crop (spec §4.1)."""
    ws = layer.window_size
    B, C, H, W = x.shape
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    xp = torch.zeros(B, C, Hp, Wp, dtype=x.dtype)
    xp[..., :H, :W] = x
    out = torch.empty_like(xp)
    for b in range(B):
        for r in range(Hp // ws):
            for c in range(Wp // ws):
                tok = xp[b, :, r * ws:(r + 1) * ws, c * ws:(c + 1) * ws].reshape(C, ws * ws).T[None]
                for blk in layer.blocks:
                    tok = blk(tok)
                out[b, :, r * ws:(r + 1) * ws, c * ws:(c + 1) * ws] = tok[0].T.reshape(C, ws, ws)
    return out[..., :H, :W]


def test_hybrid_layer_pads_windows_like_upstream():
    torch.manual_seed(5)
    layer = _randomise(MambaVisionLayer(8, depth=2, num_heads=2, window_size=4)).double().eval()
    assert [type(b.mixer) for b in layer.blocks] == [MambaVisionMixer, Attention]
    x = torch.randn(2, 8, 6, 7, dtype=torch.float64)  # 6x7 does not tile 4x4 windows
    out = layer(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _reference_hybrid_layer(layer, x), rtol=1e-9, atol=1e-9)
    # the padded tokens are not masked: running the top-left window's real 4x4 content alone agrees only
    # because that window needs no padding; the bottom-right window (2x3 real tokens) differs from
    # processing its real tokens alone
    real = x[0, :, 4:6, 4:7].reshape(8, 6).T[None]
    for blk in layer.blocks:
        real = blk(real)
    assert not torch.allclose(out[0, :, 4:6, 4:7].reshape(8, 6).T, real[0], atol=1e-6)


def test_layer_with_up_and_downsample():
    layer = MambaVisionLayer(8, depth=1, num_heads=2, window_size=2, conv=True, upsample=True, downsample=True)
    assert layer(torch.randn(1, 16, 3, 5)).shape == (1, 16, 3, 5)  # 16 -> 8 @6x10 -> 16 @3x5
    with pytest.raises(ValueError, match="drop-path"):
        MambaVisionLayer(8, depth=2, num_heads=2, window_size=2, drop_path=[0.1])


# ------------------------------------------------------------------------------------------------ expansion

def test_patch_expand_channel_order():
    torch.manual_seed(6)
    pe = _randomise(PatchExpand2D(3)).eval()
    x = torch.randn(2, 6, 2, 3)
    out = pe(x)
    assert out.shape == (2, 3, 4, 6)
    assert tuple(pe.expand.weight.shape) == (12, 6) and pe.expand.bias is None
    for b in range(2):
        for h in range(2):
            for w in range(3):
                lin = pe.expand.weight @ x[b, :, h, w]           # 12 = (p1, p2, c) with c fastest
                for p1 in range(2):
                    for p2 in range(2):
                        chunk = lin[(p1 * 2 + p2) * 3:(p1 * 2 + p2 + 1) * 3]
                        ref = F.layer_norm(chunk, (3,), pe.norm.weight, pe.norm.bias)
                        torch.testing.assert_close(out[b, :, 2 * h + p1, 2 * w + p2], ref)


def test_final_expand_x4_channel_order():
    torch.manual_seed(7)
    fe = _randomise(FinalPatchExpand2D(8)).eval()
    x = torch.randn(1, 8, 2, 2)
    out = fe(x)
    assert out.shape == (1, 2, 8, 8)
    lin = fe.expand.weight @ x[0, :, 1, 0]                        # 32 = (p1 4, p2 4, c 2)
    for p1 in range(4):
        for p2 in range(4):
            chunk = lin[(p1 * 4 + p2) * 2:(p1 * 4 + p2 + 1) * 2]
            ref = F.layer_norm(chunk, (2,), fe.norm.weight, fe.norm.bias)
            torch.testing.assert_close(out[0, :, 4 + p1, p2], ref)
