"""Mamba-1 block: against a slow fp64 reference written here from the math (forward and gradients), upstream's
parameter names / shapes / counts (spec §1), its initialisation, causality."""

import math

import pytest
import torch
import torch.nn.functional as F

from mambaseg.models.blocks.mamba1 import Mamba, mamba_param_count


def reference_mamba(m: Mamba, h: torch.Tensor) -> torch.Tensor:
    """Spec §1 steps 1-6 with explicit loops over the kernel taps and the time steps (fp64)."""
    B, L, _ = h.shape
    E, N, R, K = m.d_inner, m.d_state, m.dt_rank, m.d_conv
    xz = h @ m.in_proj.weight.T                                   # (B, L, 2E)
    x, z = xz[..., :E], xz[..., E:]
    w = m.conv1d.weight[:, 0, :]                                  # (E, K)
    conv = []
    for t in range(L):                                            # causal: taps on x[t-K+1 .. t]
        acc = m.conv1d.bias.expand(B, E).clone()
        for j in range(K):
            src = t - (K - 1) + j
            if src >= 0:
                acc = acc + w[:, j] * x[:, src]
        conv.append(acc)
    x = torch.stack(conv, 1)
    x = x * torch.sigmoid(x)                                      # SiLU
    dbl = x @ m.x_proj.weight.T
    dt, Bm, Cm = dbl[..., :R], dbl[..., R:R + N], dbl[..., R + N:]
    delta = F.softplus(dt @ m.dt_proj.weight.T + m.dt_proj.bias)  # (B, L, E)
    A = -torch.exp(m.A_log)                                       # (E, N)
    state = torch.zeros(B, E, N, dtype=h.dtype)
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, t, :, None] * A)
        state = dA * state + (delta[:, t] * x[:, t])[:, :, None] * Bm[:, t, None, :]
        ys.append((state * Cm[:, t, None, :]).sum(-1) + m.D * x[:, t])
    y = torch.stack(ys, 1) * (z * torch.sigmoid(z))
    return y @ m.out_proj.weight.T


@pytest.mark.parametrize("d_model,L", [(6, 9), (20, 5)])
def test_forward_and_gradients_match_the_math(d_model, L):
    torch.manual_seed(0)
    m = Mamba(d_model).double()
    with torch.no_grad():                                         # make every term matter
        m.D.normal_()
        m.dt_proj.bias.normal_(0, 0.5)
        m.A_log.add_(0.3 * torch.randn_like(m.A_log))
    h = torch.randn(2, L, d_model, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, L, d_model, dtype=torch.float64)
    ours = m(h)
    ref = reference_mamba(m, h)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)
    params = [h] + list(m.parameters())
    g_ours = torch.autograd.grad((ours * g).sum(), params)
    g_ref = torch.autograd.grad((ref * g).sum(), params)
    names = ["input"] + [n for n, _ in m.named_parameters()]
    for n, a, b in zip(names, g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=lambda s: f"{n}: {s}")


def test_float32_is_close_to_the_fp64_math():
    torch.manual_seed(1)
    m = Mamba(8)
    h = torch.randn(1, 12, 8)
    ref = reference_mamba(m.double(), h.double())
    torch.testing.assert_close(m.float()(h).double(), ref, rtol=1e-4, atol=1e-5)


def test_causal():
    torch.manual_seed(0)
    m = Mamba(4)
    h = torch.randn(1, 10, 4)
    h2 = h.clone()
    h2[:, 6:] += torch.randn(1, 4, 4)
    with torch.no_grad():
        a, b = m(h), m(h2)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("d_model,count", [(512, 1_694_720), (32, 9_920), (6, 900)])
def test_parameter_count_equals_upstream(d_model, count):
    with torch.device("meta"):
        m = Mamba(d_model)
    assert sum(p.numel() for p in m.parameters()) == count == mamba_param_count(d_model)
    assert count == 6 * d_model ** 2 + 2 * d_model * (2 * math.ceil(d_model / 16) + 55)


def test_state_dict_names_and_shapes_are_upstreams():
    sd = Mamba(512).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "A_log": (1024, 16), "D": (1024,), "in_proj.weight": (2048, 512), "conv1d.weight": (1024, 1, 4),
        "conv1d.bias": (1024,), "x_proj.weight": (64, 1024), "dt_proj.weight": (1024, 32), "dt_proj.bias": (1024,),
        "out_proj.weight": (512, 1024)}
    assert list(sd)[:2] == ["A_log", "D"]                         # bare parameters first, as upstream


def test_initialisation():
    torch.manual_seed(0)
    m = Mamba(64)
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1, 17.0)).expand(128, 16))
    assert torch.equal(m.D, torch.ones(128))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 0.1 + 1e-6
    s = m.dt_rank ** -0.5
    assert m.dt_proj.weight.abs().max() <= s
    assert m.A_log._no_weight_decay and m.D._no_weight_decay


def test_bad_token_shape_is_one_clear_error():
    with pytest.raises(ValueError, match=r"expected tokens \(B, L, 8\)"):
        Mamba(8)(torch.randn(1, 8, 4, 4))
