"""cross_selective_scan (issues 18/19): the fused op against its definition, written here with cross_scan and
the reference scan (fp64 and fp32, forward and every gradient, odd h/w, SS2D's grouped B/C), the dispatch
(fused where registered, composed elsewhere and under intercept_scans), bad input, and the native kernel's
float32 exp / log1p against float64."""

import ctypes

import pytest
import torch

from mambaseg.ops import (available_backends, cross_merge, cross_scan, cross_selective_scan, intercept_scans,
                          record_scans, selective_scan_reference)
from mambaseg.ops.cross_selective_scan import cross_selective_scan_composed, fused_backends, scan_orders

HAS_NATIVE = "native" in available_backends("cpu")
ARGS = ["u", "delta", "A", "B", "C", "D", "delta_bias"]


def make(b=2, d=5, h=3, w=7, n=4, dtype=torch.float64, D=True, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    L = h * w
    return dict(u=r(b, d, L), delta=0.5 * r(b, 4, d, L), A=-torch.rand(4 * d, n, generator=g, dtype=dtype) * 2 - 0.1,
                B=r(b, 4, n, L), C=r(b, 4, n, L), D=r(4 * d) if D else None, delta_bias=0.3 * r(4 * d) if bias else None)


def oracle(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, *, h, w):
    """The convention's formula literally: every row-major tensor is put in scan order by cross_scan itself."""
    b, d, L = u.shape

    def order(x):  # (b, 4, c, L) row-major -> direction k's values in direction k's order
        return torch.stack([cross_scan(x[:, k].reshape(b, -1, h, w))[:, k] for k in range(4)], 1)

    ys = selective_scan_reference(cross_scan(u.reshape(b, d, h, w)).reshape(b, 4 * d, L),
                                  order(delta).reshape(b, 4 * d, L), A, order(B), order(C), D,
                                  delta_bias=delta_bias, delta_softplus=delta_softplus)
    return cross_merge(ys.view(b, 4, d, L), h, w)


def run(fn, inputs, h, w, softplus=True, **kw):
    args = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}
    y = fn(**args, delta_softplus=softplus, h=h, w=w, **kw)
    wgt = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    names = [k for k in ARGS if args[k] is not None]
    gs = torch.autograd.grad((y * wgt).sum(), [args[k] for k in names])
    return y, dict(zip(names, gs))


def test_scan_orders_are_cross_scans_orders():
    for h, w in [(1, 1), (3, 5), (4, 4), (7, 2)]:
        idx = torch.arange(h * w).view(1, 1, h, w)
        assert torch.equal(scan_orders(h, w), cross_scan(idx)[0, :, 0])


CASES = [dict(b=2, d=5, h=3, w=7, n=4), dict(b=1, d=8, h=5, w=5, n=16, D=False),
         dict(b=2, d=3, h=4, w=1, n=1, bias=False), dict(b=1, d=6, h=2, w=9, n=16)]


@pytest.mark.skipif(not HAS_NATIVE, reason="no native kernel on this machine")
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("softplus", [True, False])
def test_native_fused_matches_the_definition_fp64(case, softplus):
    h, w = case["h"], case["w"]
    inputs = make(**case)
    ref_y, ref_g = run(oracle, inputs, h, w, softplus)
    y, g = run(cross_selective_scan, inputs, h, w, softplus, backend="native")
    torch.testing.assert_close(y, ref_y, rtol=1e-10, atol=1e-10)
    assert g.keys() == ref_g.keys()
    for k in g:
        torch.testing.assert_close(g[k], ref_g[k], rtol=1e-9, atol=1e-9, msg=lambda m: f"grad {k}: {m}")


@pytest.mark.skipif(not HAS_NATIVE, reason="no native kernel on this machine")
@pytest.mark.parametrize("threads", [1, 2])
def test_native_fused_fp32_matches_fp64_definition(threads):
    case = dict(b=2, d=6, h=5, w=9, n=16)
    inputs = make(**case)
    ref_y, ref_g = run(oracle, inputs, case["h"], case["w"])
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y, g = run(cross_selective_scan, {k: v.float() if v is not None else None for k, v in inputs.items()},
                   case["h"], case["w"], backend="native")
    finally:
        torch.set_num_threads(old)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), ref_y, rtol=1e-4, atol=1e-4)
    for k in g:
        torch.testing.assert_close(g[k].double(), ref_g[k], rtol=1e-4, atol=1e-4, msg=lambda m: f"grad {k}: {m}")


@pytest.mark.skipif(not HAS_NATIVE, reason="no native kernel on this machine")
def test_native_fused_gradcheck_tiny():
    inputs = make(b=1, d=2, h=2, w=3, n=2)
    args = tuple(v.clone().requires_grad_(True) for v in inputs.values())
    assert torch.autograd.gradcheck(
        lambda *a: cross_selective_scan(*a, delta_softplus=True, h=2, w=3, backend="native"), args)


@pytest.mark.parametrize("backend", [b for b in available_backends("cpu") if b not in fused_backends()][:2])
def test_backends_without_a_fused_version_use_the_composed_form(backend):
    inputs = make(b=1, d=3, h=3, w=4, n=4)
    ref_y, ref_g = run(oracle, inputs, 3, 4)
    y, g = run(cross_selective_scan, inputs, 3, 4, backend=backend)
    torch.testing.assert_close(y, ref_y, rtol=1e-9, atol=1e-9)
    for k in g:
        torch.testing.assert_close(g[k], ref_g[k], rtol=1e-8, atol=1e-8)


def test_composed_form_equals_the_definition():
    inputs = make(b=2, d=3, h=5, w=3, n=4)
    torch.testing.assert_close(cross_selective_scan_composed(**inputs, delta_softplus=True, h=5, w=3,
                                                             backend="reference"),
                               oracle(**inputs, delta_softplus=True, h=5, w=3))


def test_record_scans_sees_one_grouped_call_and_interceptors_see_the_scan():
    inputs = make(b=2, d=3, h=2, w=4, n=4)
    with record_scans() as calls:
        cross_selective_scan(**inputs, h=2, w=4)
    assert [(c.b, c.d, c.l, c.n, c.has_D) for c in calls] == [(2, 12, 8, 4, True)]
    seen = []

    def wrap(fn):
        def wrapped(*a, **k):
            seen.append(a[0].shape)
            return fn(*a, **k)
        return wrapped
    with intercept_scans(wrap):
        y = cross_selective_scan(**inputs, h=2, w=4)
    assert seen == [torch.Size([2, 12, 8])]
    torch.testing.assert_close(y, oracle(**inputs, h=2, w=4))


@pytest.mark.parametrize("arg,shape,expect", [
    ("u", (2, 3, 9), "u has shape"), ("delta", (2, 3, 3, 8), "delta has shape"), ("A", (11, 4), "A has shape"),
    ("B", (2, 4, 5, 8), "B has shape"), ("D", (3,), "D has shape"), ("delta_bias", (13,), "delta_bias has shape")])
def test_bad_shapes_raise_one_clear_error(arg, shape, expect):
    inputs = make(b=2, d=3, h=2, w=4, n=4)
    inputs[arg] = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=expect):
        cross_selective_scan(**inputs, h=2, w=4)
    with pytest.raises(ValueError, match="h and w"):
        cross_selective_scan(**make(b=1, d=1, h=2, w=4, n=1), h=0, w=8)


@pytest.mark.skipif(not HAS_NATIVE, reason="no native kernel on this machine")
def test_native_float32_exp_and_log1p_errors_against_float64():
    """The kernel's polynomial exp (used for every decay and the softplus) and its log1p on [0, 1]: relative
    error below 3.5e-7 (about 3 ulp) against float64 over the whole finite range."""
    from mambaseg.ops import scan_native
    lib = scan_native.get_lib()
    x = torch.cat([torch.linspace(-87.0, 88.0, 400_001), -30 * torch.rand(100_000, generator=torch.Generator().manual_seed(0))])
    y = torch.empty_like(x)
    lib.mambaseg_expf_array(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr()), ctypes.c_int64(x.numel()))
    ref = torch.exp(x.double())
    assert ((y.double() - ref).abs() / ref).max().item() < 3.5e-7
    e = torch.cat([torch.logspace(-30, 0, 200_001), torch.rand(100_000, generator=torch.Generator().manual_seed(1))])
    y = torch.empty_like(e)
    lib.mambaseg_log1p01f_array(ctypes.c_void_p(e.data_ptr()), ctypes.c_void_p(y.data_ptr()), ctypes.c_int64(e.numel()))
    ref = torch.log1p(e.double())
    assert ((y.double() - ref).abs() / ref).max().item() < 3.5e-7


@pytest.mark.skipif(not HAS_NATIVE, reason="no native kernel on this machine")
@pytest.mark.parametrize("n", [8, 16])
@pytest.mark.parametrize("l", [5, 8, 29])
def test_native_plain_scan_n8_n16_fp32_paths_match_reference(l, n):
    """n = 8 and 16, float32, run the hand-vectorised recurrences (8-step blocks + a tail): forward, last state, z
    gate and every gradient against the float64 reference, l below, at and off a multiple of 8."""
    from mambaseg.ops import selective_scan
    g = torch.Generator().manual_seed(l)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    inp = dict(u=r(2, 4, l), delta=0.5 * r(2, 4, l), A=-torch.rand(4, n, generator=g, dtype=torch.float64) - 0.1,
               B=r(2, 2, n, l), C=r(2, 2, n, l), D=r(4), z=r(2, 4, l), delta_bias=0.3 * r(4))

    def go(fn, dtype, **kw):
        a = {k: v.to(dtype).requires_grad_(True) for k, v in inp.items()}
        y, last = fn(**a, delta_softplus=True, return_last_state=True, **kw)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)).sum() + 0.7 * last.sum()
        return [y, last, *torch.autograd.grad(loss, list(a.values()))]
    ref = go(selective_scan_reference, torch.float64)
    got = go(selective_scan, torch.float32, backend="native")
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
