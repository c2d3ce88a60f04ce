"""The native scan's sequence chunking (issue 27): forward, last state and every gradient across chunk boundaries
(L off a multiple of the chunk, L = chunk - 1, chunk, chunk + 1, many chunks), thread splits that share a
(batch, group) between threads or leave a thread empty, fp64 / fp32 / bf16 inputs; and a long sequence
(L = 20,000, small d) against a loop written from the math."""

import importlib

import pytest
import torch

from mambaseg.ops import available_backends, selective_scan, selective_scan_reference

pytestmark = pytest.mark.skipif("native" not in available_backends("cpu"), reason="no native kernel here")
scan_native = importlib.import_module("mambaseg.ops.scan_native")

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def inputs(b, d, l, n, g, seed=0, z=True):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    bc = (b, g, n, l) if g else (b, n, l)
    return dict(u=r(b, d, l), delta=0.5 * r(b, d, l) - 1.0, A=-torch.rand(d, n, generator=gen, dtype=torch.float64) - 0.05,
                B=r(*bc), C=r(*bc), D=r(d), z=r(b, d, l) if z else None, delta_bias=0.3 * r(d))


def run(fn, inp, dtype, **kw):
    """out, last state and the gradients of every input of a fixed loss touching both, in float64."""
    a = {k: (v.to(dtype).requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    y, last = fn(**a, delta_softplus=True, return_last_state=True, **kw)
    w = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)
    loss = (y.double() * w).sum() + 0.7 * last.double().sum()
    names = [k for k in NAMES if a[k] is not None]
    grads = torch.autograd.grad(loss, [a[k] for k in names])
    return [y.double(), last.double(), *(gr.double() for gr in grads)]


def close(got, ref, tol):
    for i, (x, r) in enumerate(zip(got, ref)):
        err = ((x - r).abs().max() / r.abs().max().clamp_min(1e-12)).item()
        assert err < tol, f"output {i} ({(['out', 'last'] + NAMES)[i] if i < 2 else 'grad'}): rel err {err:.2e}"


@pytest.fixture
def threads():
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


# (b, d, g, threads): group shared by 3 threads; groups split 1:1 between threads with one thread idle;
# shared and exclusive groups mixed; one thread.
SPLITS = [(1, 5, None, 3), (2, 6, 2, 5), (2, 4, 2, 3), (2, 3, 3, 1)]


@pytest.mark.parametrize("split", SPLITS, ids=lambda s: "b{}d{}g{}t{}".format(*s))
@pytest.mark.parametrize("l", [7, 8, 9, 26])
@pytest.mark.parametrize("n", [16, 3])
def test_small_chunks_match_reference_fp64(monkeypatch, threads, split, l, n):
    b, d, g, nt = split
    monkeypatch.setattr(scan_native, "CHUNK", 8)
    threads(nt)
    inp = inputs(b, d, l, n, g, seed=l * 31 + n)
    close(run(selective_scan, inp, torch.float64, backend="native"),
          run(selective_scan_reference, inp, torch.float64), 1e-10)


@pytest.mark.parametrize("chunk", [5, 8, 16])
def test_small_chunks_fp32_n16_match_reference(monkeypatch, threads, chunk):
    """float32 with n = 16 runs the hand-vectorised recurrences (8-step blocks): chunks of 5 put every chunk
    boundary off the 8-step grid."""
    monkeypatch.setattr(scan_native, "CHUNK", chunk)
    threads(2)
    inp = inputs(1, 5, 3 * chunk + 3, 16, None, seed=chunk)
    close(run(selective_scan, inp, torch.float32, backend="native"),
          run(selective_scan_reference, inp, torch.float64), 2e-5)


@pytest.mark.parametrize("dl", [-1, 0, 1])
def test_default_chunk_plus_minus_one(threads, dl):
    threads(2)
    l = scan_native.CHUNK + dl
    inp = inputs(1, 4, l, 16, None, seed=dl + 7)
    close(run(selective_scan, inp, torch.float32, backend="native"),
          run(selective_scan_reference, inp, torch.float64), 2e-5)


def test_bf16_inputs_across_chunks(monkeypatch, threads):
    """bf16 inputs are computed in fp32 and cast back: chunked like fp32, compared with the fp64 reference on
    the same (rounded) inputs within a bf16 rounding step."""
    monkeypatch.setattr(scan_native, "CHUNK", 8)
    threads(2)
    inp = {k: (v.to(torch.bfloat16).double() if v is not None else None)
           for k, v in inputs(2, 4, 29, 16, 2, seed=3).items()}
    got = run(selective_scan, inp, torch.bfloat16, backend="native")
    ref = run(selective_scan_reference, inp, torch.float64)
    close(got, ref, 2 ** -7)


def _scan_from_the_math(u, delta, A, B, C, D, z, delta_bias):
    """The scan as a loop over time on per-step views (unbind: its backward is one stack, so autograd stays
    linear in L, unlike slicing inside the loop). B, C: (b, n, l)."""
    dt = torch.nn.functional.softplus(delta + delta_bias[:, None])
    x = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for dtt, ut, bt, ct in zip(dt.unbind(-1), u.unbind(-1), B.unbind(-1), C.unbind(-1)):
        x = torch.exp(dtt[..., None] * A) * x + (dtt * ut)[..., None] * bt[:, None, :]
        ys.append((x * ct[:, None, :]).sum(-1))
    y = (torch.stack(ys, -1) + u * D[:, None]) * torch.nn.functional.silu(z)
    return y, x


def test_long_sequence_small_d_matches_the_math(threads):
    """L = 20,000 (about 40 chunks), d = 2, n = 16, fp32 inputs, 2 threads: forward, last state and every
    gradient against a float64 loop written from the math (itself checked against the reference on a prefix)."""
    threads(2)
    inp = inputs(1, 2, 20000, 16, None, seed=11)
    short = {k: (v[..., :40] if v.dim() == 3 else v) for k, v in inp.items()}
    close(run(lambda **kw: _scan_from_the_math(*[kw[k] for k in NAMES]), short, torch.float64),
          run(selective_scan_reference, short, torch.float64), 1e-12)
    close(run(selective_scan, inp, torch.float32, backend="native"),
          run(lambda **kw: _scan_from_the_math(*[kw[k] for k in NAMES]), inp, torch.float64), 1e-4)


def test_avx2_build_matches_reference_across_chunks(tmp_path):
    """The kernel is compiled for the CPU it runs on (-march=native: AVX-512 here if the CPU has it). Build it for
    AVX2+FMA (x86-64-v3) instead, in a fresh process, and check the chunked forward/backward there too."""
    import os
    import subprocess
    import sys
    if "avx2" not in open("/proc/cpuinfo").read():
        pytest.skip("no AVX2 on this CPU")
    code = (
        "import importlib, torch, sys\n"
        "sys.path.insert(0, %r)\n"
        "import test_scan_chunks as t\n"
        "sn = importlib.import_module('mambaseg.ops.scan_native')\n"
        "assert sn.is_available(), sn.why_unavailable()\n"
        "assert '-march=x86-64-v3' in sn.build_flags, sn.build_flags\n"
        "sn.CHUNK = 8\n"
        "torch.set_num_threads(2)\n"
        "inp = t.inputs(1, 5, 29, 16, None, seed=4)\n"
        "t.close(t.run(t.selective_scan, inp, torch.float32, backend='native'),\n"
        "        t.run(t.selective_scan_reference, inp, torch.float64), 2e-5)\n"
        "inp = t.inputs(2, 4, 19, 3, 2, seed=5)\n"
        "t.close(t.run(t.selective_scan, inp, torch.float64, backend='native'),\n"
        "        t.run(t.selective_scan_reference, inp, torch.float64), 1e-10)\n"
        "print('ok')\n") % os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, MAMBASEG_NATIVE_MARCH="x86-64-v3", MAMBASEG_CACHE=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_sequence_has_zero_state_and_gradients(threads, dtype):
    """L = 0: no chunk at all; the last state and the gradients of A, D and delta_bias are zero (not whatever
    the fresh buffers held)."""
    threads(2)
    inp = {k: (v[..., :0] if v is not None and v.dim() == 3 else v) for k, v in inputs(2, 6, 5, 16, None).items()}
    for _ in range(3):   # fresh buffers often reuse memory the previous call wrote
        got = run(selective_scan, inp, dtype, backend="native")
        assert got[1].abs().max() == 0
        for gr in got[2:]:
            assert gr.numel() == 0 or gr.abs().max() == 0
