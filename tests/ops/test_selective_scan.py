"""selective_scan: every backend against the reference written from the math (fp64), plus gradcheck,
hypothesis-drawn shapes, numerical stress, low precision and bad input."""

import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mambaseg.ops import (BackendUnavailableError, available_backends, record_scans, selective_scan,
                          selective_scan_reference, use_backend)
import importlib

ss_mod = importlib.import_module("mambaseg.ops.selective_scan")

FAST = [b for b in available_backends("cpu") if b != "reference"]
ARG_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def make_inputs(b=2, d=8, l=17, n=4, g=None, dtype=torch.float64, D=True, z=True, bias=True, seed=0,
                dt_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    bc = (b, g, n, l) if g else (b, n, l)
    return dict(u=r(b, d, l), delta=0.5 * r(b, d, l) * dt_scale, A=-torch.rand(d, n, generator=gen, dtype=dtype) * 2,
                B=r(*bc), C=r(*bc), D=r(d) if D else None, z=r(b, d, l) if z else None,
                delta_bias=0.3 * r(d) if bias else None)


def run(inputs, backend, softplus=True, last=False, grads=True):
    args = {k: (v.clone().requires_grad_(grads) if v is not None else None) for k, v in inputs.items()}
    res = selective_scan(**args, delta_softplus=softplus, return_last_state=last, backend=backend)
    out, st_ = res if last else (res, None)
    if not grads:
        return out, st_, {}
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    loss = (out * w).sum() + (st_.sum() * 0.7 if last else 0)
    names = [k for k in ARG_NAMES if args[k] is not None]
    gs = torch.autograd.grad(loss, [args[k] for k in names])
    return out, st_, dict(zip(names, gs))


CASES = [
    dict(g=None, D=True, z=True, bias=True, softplus=True, last=False),
    dict(g=2, D=True, z=True, bias=True, softplus=True, last=True),
    dict(g=4, D=False, z=False, bias=False, softplus=False, last=False),
    dict(g=None, D=False, z=True, bias=False, softplus=True, last=True),
    dict(g=8, D=True, z=False, bias=True, softplus=False, last=True),
]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_forward_and_all_gradients_match_reference_fp64(backend, case):
    inputs = make_inputs(g=case["g"], D=case["D"], z=case["z"], bias=case["bias"])
    ref = run(inputs, "reference", case["softplus"], case["last"])
    got = run(inputs, backend, case["softplus"], case["last"])
    torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-10)
    if case["last"]:
        torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-10)
    assert got[2].keys() == ref[2].keys()
    for k in ref[2]:
        torch.testing.assert_close(got[2][k], ref[2][k], rtol=1e-9, atol=1e-9, msg=f"gradient of {k}")


def test_reference_matches_a_hand_computed_two_step_scan():
    # d=1, n=1, l=2: x1 = dt1*u1*B1; x2 = exp(dt2*A)*x1 + dt2*u2*B2; y = x*C + D*u
    u = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    dt = torch.tensor([[[0.5, 0.25]]], dtype=torch.float64)
    A = torch.tensor([[-2.0]], dtype=torch.float64)
    B = torch.tensor([[[3.0, -1.0]]], dtype=torch.float64)
    C = torch.tensor([[[2.0, 4.0]]], dtype=torch.float64)
    D = torch.tensor([0.5], dtype=torch.float64)
    x1 = 0.5 * 1 * 3
    x2 = math.exp(0.25 * -2) * x1 + 0.25 * 2 * -1
    expect = torch.tensor([[[x1 * 2 + 0.5, x2 * 4 + 1.0]]], dtype=torch.float64)
    for backend in ["reference", *FAST]:
        torch.testing.assert_close(selective_scan(u, dt, A, B, C, D, backend=backend), expect)


@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_gradcheck_tiny(backend):
    inp = make_inputs(b=1, d=4, l=5, n=3, g=2, seed=3)
    names = ARG_NAMES
    tensors = [inp[k].clone().requires_grad_() for k in names]

    def f(*ts):
        kw = dict(zip(names, ts))
        return selective_scan(**kw, delta_softplus=True, return_last_state=True, backend=backend)

    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), h=st.integers(1, 4), g=st.sampled_from([None, 1, 2, 3]), l=st.integers(1, 40),
       n=st.integers(1, 9), seed=st.integers(0, 10_000), flags=st.integers(0, 31))
def test_hypothesis_shapes_match_reference(b, h, g, l, n, seed, flags):
    d = h * (g or 1)
    inputs = make_inputs(b=b, d=d, l=l, n=n, g=g, seed=seed, D=bool(flags & 1), z=bool(flags & 2),
                         bias=bool(flags & 4))
    softplus, last = bool(flags & 8), bool(flags & 16)
    ref = run(inputs, "reference", softplus, last)
    for backend in FAST:
        got = run(inputs, backend, softplus, last)
        torch.testing.assert_close(got[0], ref[0], rtol=1e-9, atol=1e-9)
        for k in ref[2]:
            torch.testing.assert_close(got[2][k], ref[2][k], rtol=1e-8, atol=1e-8, msg=f"{backend} grad {k}")


def vmamba_like(b, d, l, n, g, dt_mult, seed=0, dtype=torch.float32):
    """Inputs as VMamba's SS2D sees them at init, with dt multiplied by ``dt_mult``."""
    gen = torch.Generator().manual_seed(seed)
    dt0 = torch.exp(torch.rand(d, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)) * dt_mult
    bias = dt0 + torch.log(-torch.expm1(-dt0))          # inverse softplus
    return dict(u=torch.randn(b, d, l, generator=gen), delta=0.3 * torch.randn(b, d, l, generator=gen),
                A=-torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1), B=torch.randn(b, g, n, l, generator=gen),
                C=torch.randn(b, g, n, l, generator=gen), D=torch.ones(d), z=None, delta_bias=bias)


@pytest.mark.parametrize("backend", FAST)
def test_stress_large_dt_long_sequence_stays_finite_and_exact(backend):
    # dt ten times VMamba's init range [1e-3, 0.1], L = 4096: exp-of-cumsum rewrites overflow here.
    inputs = vmamba_like(b=1, d=8, l=4096, n=16, g=2, dt_mult=10.0)
    ref64 = selective_scan_reference(**{k: (v.double() if v is not None else None) for k, v in inputs.items()},
                                     delta_softplus=True)
    out, _, grads = run(inputs, backend)
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(g).all() for g in grads.values())
    err = (out.double() - ref64).abs().max() / ref64.abs().max()
    assert err < 1e-5, err
    # gradients agree with the fp64 reference (autograd through the loop) on a shorter prefix
    short = {k: (v[..., :256] if v is not None and v.dim() >= 3 else v) for k, v in inputs.items()}
    ref_g = run({k: (v.double() if v is not None else None) for k, v in short.items()}, "reference")[2]
    got_g = run(short, backend)[2]
    for k in ref_g:
        rel = (got_g[k].double() - ref_g[k]).abs().max() / ref_g[k].abs().max()
        assert rel < 1e-4, (k, rel)


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_fp32_and_cast_back(backend, dtype):
    inputs = make_inputs(b=1, d=6, l=64, n=4, g=3, dtype=torch.float32, seed=5)
    low = {k: (v.to(dtype) if v is not None else None) for k, v in inputs.items()}
    # oracle: the same (rounded) values, computed in fp64, rounded once at the end
    exact = selective_scan_reference(**{k: (v.double() if v is not None else None) for k, v in low.items()},
                                     delta_softplus=True)
    out = selective_scan(**low, delta_softplus=True, backend=backend)
    assert out.dtype == dtype
    # at most one rounding step away from the correctly rounded result
    ulp = {torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}[dtype]
    assert ((out.double() - exact).abs() <= ulp * exact.abs() + 1e-6).all()


@pytest.mark.parametrize("backend", FAST)
def test_autocast_does_not_lower_the_scan_precision(backend):
    inputs = make_inputs(b=1, d=4, l=32, n=4, dtype=torch.float32)
    plain = selective_scan(**inputs, delta_softplus=True, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = selective_scan(**inputs, delta_softplus=True, backend=backend)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, plain)


@pytest.mark.parametrize("arg,bad,expect", [
    ("delta", lambda i: i["delta"][..., :-1], "delta has shape (2, 8, 16), expected (b, d, l) = (2, 8, 17)"),
    ("A", lambda i: i["A"][:-1], "A has shape (7, 4), expected (d, n) with d = 8"),
    ("B", lambda i: i["B"][:, :-1], "B has shape (2, 3, 17), expected (b, n, l) = (2, 4, 17)"),
    ("C", lambda i: torch.randn(2, 3, 4, 17, dtype=torch.float64), "C has shape (2, 3, 4, 17), expected (b, g, n, l)"),
    ("D", lambda i: i["D"][:3], "D has shape (3,), expected (d,) = (8,)"),
    ("z", lambda i: i["z"][:1], "z has shape (1, 8, 17)"),
    ("delta_bias", lambda i: torch.zeros(2, 8, dtype=torch.float64), "delta_bias has shape (2, 8), expected (d,)"),
    ("u", lambda i: i["u"][0], "u has shape (8, 17), expected (b, d, l)"),
    ("delta", lambda i: i["delta"].float(), "delta has dtype torch.float32 but u has torch.float64"),
    ("B", lambda i: i["B"].long(), "B has dtype torch.int64, expected a floating dtype"),
])
def test_bad_input_raises_value_error_naming_the_argument(arg, bad, expect):
    inputs = make_inputs()
    inputs[arg] = bad(inputs)
    with pytest.raises(ValueError) as e:
        selective_scan(**inputs)
    assert expect in str(e.value)


def test_complex_A_is_refused_with_a_clear_error():
    inputs = make_inputs()
    inputs["A"] = inputs["A"].to(torch.complex128)
    with pytest.raises(NotImplementedError, match="complex"):
        selective_scan(**inputs)


def test_backend_selection_is_visible_and_errors_are_clear(monkeypatch):
    avail = available_backends("cpu")
    assert avail[-1] == "reference" and "torch" in avail
    inputs = make_inputs()
    with pytest.raises(ValueError, match="unknown scan backend 'cuda_magic'"):
        selective_scan(**inputs, backend="cuda_magic")
    monkeypatch.setattr(ss_mod._BACKENDS["torch"], "is_available", lambda: False)
    monkeypatch.setattr(ss_mod._BACKENDS["torch"], "why_unavailable", lambda: "switched off by the test")
    with pytest.raises(BackendUnavailableError, match="switched off by the test"):
        selective_scan(**inputs, backend="torch")


def test_use_backend_and_record_scans():
    inputs = make_inputs(b=1, d=4, l=5, n=3, g=2)
    with use_backend("reference"), record_scans() as calls:
        selective_scan(**inputs)
    assert [(c.b, c.d, c.l, c.n, c.backend) for c in calls] == [(1, 4, 5, 3, "reference")]
    assert calls[0].flops == 9 * 1 * 5 * 4 * 3 + 2 * 1 * 4 * 5


def _subprocess_backends(env_extra):
    env = dict(os.environ, **env_extra)
    code = ("import torch; from mambaseg.ops import available_backends, selective_scan, resolve_backend;"
            "print(available_backends()); print(resolve_backend('auto'));"
            "u=torch.randn(1,2,3); print(selective_scan(u,u,-torch.ones(2,2),torch.randn(1,2,3),"
            "torch.randn(1,2,3)).shape)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_native_can_be_disabled_and_auto_falls_back():
    out = _subprocess_backends({"MAMBASEG_NATIVE": "0"})
    assert "native" not in out.splitlines()[0] and out.splitlines()[1] == "torch"


def test_missing_compiler_falls_back_to_torch(tmp_path):
    out = _subprocess_backends({"CC": str(tmp_path / "no-such-cc"), "MAMBASEG_CACHE": str(tmp_path)})
    assert "native" not in out.splitlines()[0] and out.splitlines()[1] == "torch"


@pytest.mark.parametrize("backend", FAST)
def test_grouped_B_with_ungrouped_C_and_vice_versa(backend):
    inputs = make_inputs(b=2, d=6, l=9, n=3, g=3, seed=7)
    for swap in (False, True):
        ins = dict(inputs)
        key = "C" if not swap else "B"
        ins[key] = ins[key][:, 0]                                # (b, n, l): shared by every channel
        ref = run(ins, "reference", last=True)
        got = run(ins, backend, last=True)
        torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-10)
        for k in ref[2]:
            torch.testing.assert_close(got[2][k], ref[2][k], rtol=1e-9, atol=1e-9, msg=f"grad {k}")


def test_unwritable_cache_dir_still_builds_the_native_kernel(tmp_path):
    if "native" not in FAST:
        pytest.skip("no native kernel on this machine")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = _subprocess_backends({"MAMBASEG_CACHE": str(blocker / "cache")})
    assert "native" in out.splitlines()[0] and out.splitlines()[1] == "native"
