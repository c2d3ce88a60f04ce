"""Counting machinery of ``mambaseg.profiling`` against hand-computed counts on tiny networks.

Oracles: closed-form operation counts written out in each test (thop 0.1.1's rules for ``paper``, true
multiply-accumulates for ``full``), the 9·B·L·D·N scan formula, and torch's FlopCounterMode on an explicit
matmul implementation of attention. The published-number checks on the registered models are in
``test_published.py``.
"""

import importlib
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.ops import selective_scan, selective_scan_reference, use_backend
from mambaseg.profiling import (FlopCount, count_flops, count_params, measure_latency, parse_dtype,
                                profile_model)

ss_mod = importlib.import_module("mambaseg.ops.selective_scan")


def flops(model, shape, conventions=("paper", "full")):
    return count_flops(model, shape, conventions)


# --- Linear / Conv ---------------------------------------------------------------------------------------------

def test_linear_counts_match_hand_computation():
    m = nn.Linear(7, 5)                                   # with bias: thop ignores it, so does FlopCounterMode
    r = flops(m, (3, 4, 7))                               # 12 tokens
    macs = 12 * 7 * 5
    assert r["paper"].macs == macs
    assert r["paper"].params == 7 * 5 + 5
    assert r["full"].parts["gemm_macs"] == macs
    assert r["full"].macs == macs and r["full"].flops == 2 * macs
    assert r["full"].parts["scan_flops"] == 0 and r["full"].parts["attention_macs"] == 0


@pytest.mark.parametrize("groups,bias", [(1, True), (1, False), (4, True)])
def test_conv2d_counts_match_hand_computation(groups, bias):
    m = nn.Conv2d(8, 12, kernel_size=3, stride=2, padding=1, groups=groups, bias=bias)
    r = flops(m, (2, 8, 10, 10))
    out_elems = 2 * 12 * 5 * 5                            # (2, 12, 5, 5)
    macs = out_elems * (8 // groups) * 9
    assert r["paper"].macs == macs                        # thop 0.1.1: no bias term
    assert r["full"].parts["gemm_macs"] == macs
    assert r["paper"].params == 12 * (8 // groups) * 9 + (12 if bias else 0)


def test_conv_transpose_paper_uses_thop_formula_full_the_real_cost():
    m = nn.ConvTranspose2d(6, 4, kernel_size=2, stride=2, bias=False)
    r = flops(m, (1, 6, 5, 5))                            # -> (1, 4, 10, 10)
    assert r["paper"].macs == (4 * 10 * 10) * 6 * 4      # thop: y.numel * C_in * k^2
    assert r["full"].parts["gemm_macs"] == (6 * 5 * 5) * 4 * 4   # each input pixel scatters C_out*k^2 MACs
    assert r["paper"].parts["convtranspose_excess_macs"] == r["paper"].macs - r["full"].parts["gemm_macs"]
    assert r["full"].macs < r["paper"].macs                # the one case where thop over-counts


def test_conv1d_and_depthwise():
    m = nn.Conv1d(6, 6, kernel_size=3, padding=1, groups=6)
    r = flops(m, (2, 6, 11))
    assert r["paper"].macs == 2 * 6 * 11 * 1 * 3 == r["full"].parts["gemm_macs"]


# --- norms, pools, activations ----------------------------------------------------------------------------------

def test_norm_rules():
    x = (2, 4, 3, 3)
    n = math.prod(x)
    assert flops(nn.BatchNorm2d(4), x)["paper"].macs == 4 * n            # 2 per element, x2 affine
    assert flops(nn.BatchNorm2d(4, affine=False), x)["paper"].macs == 2 * n
    assert flops(nn.LayerNorm(3), x)["paper"].macs == 4 * n
    assert flops(nn.LayerNorm(3, elementwise_affine=False), x)["paper"].macs == 2 * n
    assert flops(nn.InstanceNorm2d(4), x)["paper"].macs == 2 * n         # affine=False by default
    # norms carry no GEMM: full gets them through the same rules, as "other"
    r = flops(nn.LayerNorm(3), x)
    assert r["full"].parts["gemm_macs"] == 0 and r["full"].parts["other_ops"] == 4 * n
    assert r["paper"].params == 6


def test_pool_upsample_softmax_activation_rules():
    x = (1, 2, 8, 8)
    assert flops(nn.AvgPool2d(2), x)["paper"].macs == 2 * 4 * 4
    assert flops(nn.AdaptiveAvgPool2d(1), x)["paper"].macs == (64 + 1) * 2
    assert flops(nn.AdaptiveAvgPool2d(2), x)["paper"].macs == (16 + 1) * 8
    assert flops(nn.MaxPool2d(2), x)["paper"].macs == 0
    assert flops(nn.Upsample(scale_factor=2, mode="bilinear"), x)["paper"].macs == 11 * 2 * 16 * 16
    assert flops(nn.Upsample(scale_factor=2, mode="nearest"), x)["paper"].macs == 2 * 16 * 16
    assert flops(nn.Softmax(dim=1), x)["paper"].macs == 64 * (3 * 2 - 1)
    for act in (nn.ReLU(), nn.GELU(), nn.SiLU(), nn.Sigmoid(), nn.Dropout(0.1), nn.Identity()):
        assert flops(act, x)["paper"].macs == 0


# --- what thop misses, by construction --------------------------------------------------------------------------

class RawWeights(nn.Module):
    """Registered Linear + a raw Parameter used through einsum + a branch that never runs."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6, bias=False)
        self.raw = nn.Parameter(torch.randn(6, 3))
        self.never = nn.Linear(3, 3)

    def forward(self, x):                                 # x (b, l, 4)
        return torch.einsum("bld,de->ble", self.lin(x), self.raw)


def test_paper_misses_raw_parameters_and_unexecuted_modules_full_does_not():
    m = RawWeights()
    r = flops(m, (2, 5, 4))
    assert r["paper"].macs == 10 * 4 * 6
    assert r["paper"].params == 24                        # lin only: raw and never are not thop params
    assert r["full"].parts["gemm_macs"] == 10 * 4 * 6 + 10 * 6 * 3
    p = count_params(m, (2, 5, 4))
    assert (p.total, p.trainable) == (24 + 18 + 12, 24 + 18 + 12)
    assert p.used == 24 + 18 and sorted(p.unused) == ["never.bias", "never.weight"]


def test_module_run_twice_counts_ops_twice_params_once():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 5)

        def forward(self, x):
            return self.lin(self.lin(x))

    r = flops(Twice(), (3, 5))
    assert r["paper"].macs == 2 * 3 * 5 * 5 and r["paper"].params == 30
    assert r["full"].parts["gemm_macs"] == 2 * 3 * 5 * 5


def test_count_params_trainable_and_state_restored():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    m[0].weight.requires_grad_(False)
    m.eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m[3].weight.grad = torch.full_like(m[3].weight, 7.0)
    p = count_params(m, (2, 3, 8, 8))
    assert p.total == 3 * 4 * 9 + 4 + 8 + 4 * 2 + 2
    assert p.trainable == p.total - 3 * 4 * 9
    assert p.used == p.total and p.unused == []           # frozen weights are still used by the forward
    assert not m.training and not m[0].weight.requires_grad
    assert torch.equal(m[3].weight.grad, torch.full_like(m[3].weight, 7.0))
    for k, v in m.state_dict().items():                   # BN running stats untouched by the train-mode pass
        assert torch.equal(v, before[k]), k


# --- the selective scan ------------------------------------------------------------------------------------------

class OneScan(nn.Module):
    """A single selective scan of known size: u (b, d, l), state n, grouped B/C, D skip and z gate."""

    def __init__(self, d=8, n=4, g=2, use_D=True, use_z=True):
        super().__init__()
        self.A = nn.Parameter(-torch.rand(d, n))
        self.D = nn.Parameter(torch.ones(d)) if use_D else None
        self.n, self.g, self.use_z = n, g, use_z

    def forward(self, u):
        b, d, l = u.shape
        gen = torch.Generator().manual_seed(0)
        B = torch.randn(b, self.g, self.n, l, generator=gen)
        C = torch.randn(b, self.g, self.n, l, generator=gen)
        z = u.flip(-1) if self.use_z else None
        return selective_scan(u, u * 0.1, self.A, B, C, D=self.D, z=z, delta_softplus=True)


@pytest.mark.parametrize("use_D,use_z", [(True, True), (False, False), (True, False)])
def test_scan_counted_analytically(use_D, use_z):
    b, d, l, n = 2, 8, 6, 4
    r = flops(OneScan(d, n, use_D=use_D, use_z=use_z), (b, d, l))
    expect = 9 * b * l * d * n + (b * d * l if use_D else 0) + (b * d * l if use_z else 0)
    assert r["full"].parts["scan_flops"] == expect
    assert r["full"].parts["scan_calls"] == 1
    assert r["full"].flops == expect and r["full"].macs == expect // 2
    assert r["paper"].macs == 0 and r["paper"].params == 0   # thop sees nothing of the scan


def test_scan_backend_internals_are_not_counted_twice(monkeypatch):
    """A backend that does a (useless) matmul inside: FlopCounterMode sees it, full must subtract it."""
    calls = []

    def bmm_backend(u, delta, A, B, C, **kw):
        calls.append(1)
        torch.einsum("bdl,bel->bde", u, delta)            # b*d*d*l MACs that are scan internals
        return selective_scan_reference(u, delta, A, B, C, **kw)

    entry = ss_mod._BACKENDS["reference"]
    monkeypatch.setitem(ss_mod._BACKENDS, "reference",
                        type(entry)("reference", bmm_backend, entry.devices, entry.is_available,
                                    entry.why_unavailable, entry.priority))
    b, d, l, n = 1, 8, 5, 2
    m = OneScan(d, n, g=1, use_D=False, use_z=False)
    with use_backend("reference"):
        r = count_flops(m, (b, d, l), run_scan=True)
        assert calls, "the patched backend did not run"
        stand_in = count_flops(m, (b, d, l))               # default: the scan is not computed at all
    assert len(calls) == 1
    assert r["full"].parts["gemm_macs"] == 0
    assert r["full"].parts["excluded_scan_counter_flops"] == 2 * b * d * d * l
    assert r["full"].parts["scan_flops"] == 9 * b * l * d * n
    assert ss_mod._BACKENDS["reference"].fn is bmm_backend   # our wrapper was removed again
    for conv in ("paper", "full"):
        assert stand_in[conv].macs == r[conv].macs and stand_in[conv].flops == r[conv].flops


def test_real_scan_and_stand_in_give_identical_counts():
    m = Mixed()
    a, b = count_flops(m, (1, 3, 6, 6), run_scan=True), count_flops(m, (1, 3, 6, 6), run_scan=False)
    for conv in ("paper", "full"):
        assert (a[conv].macs, a[conv].flops, a[conv].params) == (b[conv].macs, b[conv].flops, b[conv].params)


# --- attention --------------------------------------------------------------------------------------------------

class SDPA(nn.Module):
    def __init__(self, heads, explicit):
        super().__init__()
        self.heads, self.explicit = heads, explicit

    def forward(self, x):                                 # x (b, l, c)
        b, l, c = x.shape
        q = x.view(b, l, self.heads, c // self.heads).transpose(1, 2)
        k, v = q * 0.5, q + 1
        if self.explicit:
            a = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
            o = a @ v
        else:
            o = F.scaled_dot_product_attention(q, k, v)
        return o.transpose(1, 2).reshape(b, l, c)


def test_attention_counted_analytically_and_equal_to_explicit_matmuls():
    b, l, heads, hd = 2, 7, 3, 4
    r = flops(SDPA(heads, explicit=False), (b, l, heads * hd))
    assert r["full"].parts["attention_macs"] * 2 == 4 * b * heads * l * l * hd
    assert r["full"].parts["gemm_macs"] == 0              # nothing counted twice (CPU or not)
    ref = flops(SDPA(heads, explicit=True), (b, l, heads * hd))
    assert ref["full"].parts["gemm_macs"] == r["full"].parts["attention_macs"]   # FlopCounterMode's own count
    assert r["paper"].macs == 0


# --- full >= paper ----------------------------------------------------------------------------------------------

class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.proj = nn.Linear(8, 8)
        self.ln = nn.LayerNorm(8)
        self.scan = OneScan(8, 4, g=1)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        t = self.ln(self.proj(y.flatten(2).transpose(1, 2)))     # (b, l, 8)
        s = self.scan(t.transpose(1, 2).contiguous())            # (b, 8, l)
        return self.pool(s.view_as(y))


def test_full_at_least_paper_and_mode_restored():
    m = Mixed().train()
    r = flops(m, (1, 3, 6, 6))
    assert m.training
    assert r["full"].macs >= r["paper"].macs and r["full"].flops >= r["paper"].macs
    conv = 8 * 36 * 27
    lin = 36 * 8 * 8
    norms = 4 * 8 * 36 + 4 * 36 * 8
    pool = (9 + 1) * 8 * 4
    assert r["paper"].macs == conv + lin + norms + pool
    assert r["full"].parts["gemm_macs"] == conv + lin
    assert r["full"].parts["scan_flops"] == 9 * 36 * 8 * 4 + 36 * 8 * 2
    assert r["full"].macs == conv + lin + (9 * 36 * 8 * 4 + 36 * 8 * 2) // 2 + norms + pool


def test_conventions_selection_and_errors():
    m = nn.Linear(2, 2)
    assert set(count_flops(m, (1, 2), ("paper",))) == {"paper"}
    assert set(count_flops(m, (1, 2), ("full",))) == {"full"}
    with pytest.raises(ValueError, match="unknown FLOP convention"):
        count_flops(m, (1, 2), ("fvcore",))
    with pytest.raises(ValueError, match="input_shape"):
        count_flops(m, (0, 2))
    with pytest.raises(ValueError, match="cannot count the FLOPs"):
        count_flops(m, (1, 3))                             # wrong feature size: a clear error, not a traceback
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("int3")
    assert parse_dtype("bf16") is torch.bfloat16


def test_batch_scales_counts_linearly():
    m = Mixed()
    r1, r3 = flops(m, (1, 3, 6, 6)), flops(m, (3, 3, 6, 6))
    for conv in ("paper", "full"):
        assert r3[conv].macs == 3 * r1[conv].macs


# --- latency and profile_model ----------------------------------------------------------------------------------

def test_measure_latency_reports_its_conditions():
    m = nn.Conv2d(3, 4, 3)
    lat = measure_latency(m, (2, 3, 16, 16), device="cpu", dtype="float32", warmup=1, repeats=3)
    assert len(lat.times_s) == 3 and lat.repeats == 3 and lat.warmup == 1
    assert lat.min_s <= lat.q25_s <= lat.median_s <= lat.q75_s <= lat.max_s
    assert lat.batch == 2 and lat.dtype == "float32" and lat.device == "cpu" and lat.threads >= 1
    assert lat.scan_backend
    assert lat.fps == pytest.approx(2 / lat.median_s)
    text = lat.describe()
    for word in ("median", "device=cpu", "dtype=float32", "batch=2", "input=3x16x16", "scan=", "warm-up"):
        assert word in text
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(m, (1, 3, 8, 8), repeats=0)


def test_profile_model_on_a_module():
    m = Mixed()
    p = profile_model(m, size=6, batch=1, latency=True, warmup=0, repeats=2, used_size=6)
    assert p.input_shape == (1, 3, 6, 6)
    assert p.params.total == sum(t.numel() for t in m.parameters())
    assert p.params.used == p.params.total
    assert isinstance(p.flops["paper"], FlopCount) and p.flops["full"].macs >= p.flops["paper"].macs
    assert p.latency is not None and p.latency.repeats == 2
    assert next(m.parameters()).dtype == torch.float32     # the latency run used a copy
    text = p.format()
    assert "paper" in text and "GMAC" in text and "GFLOP" in text and "latency" in text
    d = p.to_dict()
    assert d["flops"]["full"]["macs"] == p.flops["full"].macs and "fps" in d["latency"]


def test_low_precision_latency_runs_under_autocast():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(14))
    lat = measure_latency(m, (1, 3, 16, 16), dtype="bfloat16", warmup=0, repeats=1)
    assert lat.dtype == "bfloat16 (autocast)"
    assert next(m.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown device"):
        measure_latency(m, (1, 3, 16, 16), device="tpu")


@pytest.mark.gpu
def test_latency_on_cuda():
    m = nn.Conv2d(3, 4, 3)
    lat = measure_latency(m, (2, 3, 32, 32), device="cuda", dtype="float16", warmup=1, repeats=3)
    assert lat.device.startswith("cuda") and lat.scan_backend and len(lat.times_s) == 3
    p = profile_model(Mixed(), size=6, device="cuda", warmup=1, repeats=2, used_size=6)
    assert p.latency.device.startswith("cuda") and p.flops["full"].macs > 0


def test_paper_convention_agrees_with_thop_if_installed():
    """Optional dev-only oracle: thop itself (not a dependency of mambaseg)."""
    thop = pytest.importorskip("thop")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, groups=1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.ln = nn.LayerNorm(8)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            y = self.dw(F.relu(self.conv(x))).permute(0, 2, 3, 1)
            return self.fc(self.ln(y))

    m = Net()
    ops, params = thop.profile(m, inputs=(torch.randn(1, 3, 8, 8),), verbose=False)
    r = count_flops(m, (1, 3, 8, 8), ("paper",))["paper"]
    assert r.macs == int(ops) and r.params == int(params)
