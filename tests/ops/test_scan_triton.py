"""Triton backend: exactness against the reference, and ahead-of-time compilation for sm_80 / sm_90.

* Without a GPU, the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, in a subprocess because
  the variable must be set before Triton is imported): the plain scan against ``selective_scan_reference``
  (forward, last state, every gradient; fp32 and bf16 inputs; grouped and ungrouped B/C; odd l and d; several
  chunks) and the fused cross scan against ``cross_scan`` -> reference scan -> ``cross_merge`` composed.
* The kernels the shipped networks launch compile for sm_80 and sm_90 without a GPU (``triton.compile`` with a
  ``GPUTarget``), with no register spills.
* With a CUDA GPU (``-m gpu``), parity at the four VM-UNet stage shapes (batch 2) and odd shapes, fp32 and
  bf16 inputs, forward and every gradient, compiled (not interpreted).

Triton is in the ``dev`` extra (Linux x86-64), so CI runs the interpreter and compile tests; elsewhere they
skip.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

triton = pytest.importorskip("triton")

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))

# The oracle: mambaseg.ops.selective_scan_reference (the math as written), reached through backend="reference";
# the fused cross scan's oracle composes the tested cross_scan / cross_merge around it.
CHECK = textwrap.dedent("""
    import sys, torch
    from mambaseg.ops import selective_scan, available_backends, cross_scan, cross_merge
    from mambaseg.ops.scan_triton import cross_selective_scan_triton
    dev, kind, shapes = sys.argv[1], sys.argv[2], eval(sys.argv[3])
    if len(sys.argv) > 4 and sys.argv[4]:   # steps between the backward's checkpoints (default 512)
        import mambaseg.ops.scan_triton as st
        st.SEG_STEPS = int(sys.argv[4])
    oracle = sys.argv[5] if len(sys.argv) > 5 else "reference"   # "torch" at volumetric lengths (see below)
    assert "triton" in available_backends(dev), available_backends(dev)

    def rel(a, b):
        return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()

    def grads(fn, ins, lowp, dtype):
        args = {k: (v.to(dtype) if k in lowp else v).clone().requires_grad_() for k, v in ins.items()}
        out = fn(**args)
        outs = out if isinstance(out, tuple) else (out,)
        ws = [torch.linspace(-1, 1, o.numel(), device=dev).view_as(o) for o in outs]
        loss = sum((o.float() * w).sum() for o, w in zip(outs, ws))
        g = torch.autograd.grad(loss, list(args.values()))
        return [o.float() for o in outs], dict(zip(args, [x.float() for x in g]))

    def to_scan_order(x, h, w):     # (b, 4, c, h*w) at row-major positions -> each direction's scan order
        b, _, c, L = x.shape
        m = x.reshape(b, 4, c, h, w)
        row, col = m[:, 0].flatten(2), m[:, 1].transpose(2, 3).flatten(2)
        return torch.stack([row, col, m[:, 2].flatten(2).flip(-1), m[:, 3].transpose(2, 3).flatten(2).flip(-1)], 1)

    for case in shapes:
        gen = torch.Generator().manual_seed(hash(case) % 2**31)
        r = lambda *s: torch.randn(*s, generator=gen).to(dev)
        if kind == "plain":
            b, d, l, n, g, dtype, flags = case
            bc = (b, g, n, l) if g else (b, n, l)
            ins = dict(u=r(b, d, l), delta=0.3 * r(b, d, l), A=-torch.rand(d, n, generator=gen).to(dev) * 3,
                       B=r(*bc), C=r(*bc))
            for k, shape in (("D", (d,)), ("z", (b, d, l)), ("delta_bias", (d,))):
                if k.split("_")[-1] in flags or k in flags:
                    ins[k] = r(*shape)
            sp = "sp" in flags
            def run(be):
                return lambda **a: selective_scan(**a, delta_softplus=sp, return_last_state=True, backend=be)
            ref, tri = run(oracle), run("triton")
            lowp = ("u", "delta", "z", "B", "C")
        else:
            b, d, h, w, n, dtype = case
            L = h * w
            ins = dict(u=r(b, d, L), delta=0.3 * r(b, 4, d, L), A=-torch.rand(4 * d, n, generator=gen).to(dev) * 3,
                       B=r(b, 4, n, L), C=r(b, 4, n, L), D=r(4 * d), delta_bias=r(4 * d))
            def ref(u, delta, A, B, C, D, delta_bias):
                xs = cross_scan(u.reshape(b, d, h, w)).reshape(b, 4 * d, L)
                y = selective_scan(xs, to_scan_order(delta, h, w).reshape(b, 4 * d, L), A, to_scan_order(B, h, w),
                                   to_scan_order(C, h, w), D, delta_bias=delta_bias, delta_softplus=True,
                                   backend="reference")
                return cross_merge(y.reshape(b, 4, d, L), h, w)
            def tri(u, delta, A, B, C, D, delta_bias):
                return cross_selective_scan_triton(u, delta, A, B, C, D, delta_bias, True, h=h, w=w)
            lowp = ("u", "delta", "B", "C")
        dt = getattr(torch, dtype)
        (o_r, g_r), (o_t, g_t) = grads(ref, ins, lowp, dt), grads(tri, ins, lowp, dt)
        errs = {f"out{i}": rel(a, b_) for i, (a, b_) in enumerate(zip(o_t, o_r))}
        errs.update({f"d{k}": rel(g_t[k], g_r[k]) for k in g_r})
        tol = 1e-4 if dtype == "float32" else 2e-2
        print(case, {k: "%.1e" % v for k, v in errs.items()})
        assert max(errs.values()) < tol, (case, errs)
    print("OK")
""")

# (b, d, l, n, g, dtype, flags): odd d and l, several chunks of 16 steps, one step, grouped (g = 2, 3) and
# ungrouped (g = 0) B/C, every optional input, fp32 and bf16. Small, because the interpreter is slow.
PLAIN = [(2, 5, 37, 4, 0, "float32", "D z bias sp"), (1, 6, 19, 3, 3, "float32", "D bias sp"),
         (1, 4, 13, 2, 2, "float32", "z"), (1, 3, 21, 4, 0, "bfloat16", "D z bias sp"),
         (2, 3, 1, 2, 0, "float32", "D sp")]
# (b, d, h, w, n, dtype): non-square maps (so row- and column-major orders differ), one longer than a chunk,
# d_state 1, fp32 and bf16.
CROSS = [(2, 3, 3, 7, 4, "float32"), (1, 5, 5, 4, 1, "float32"), (1, 2, 2, 3, 2, "bfloat16")]


def _run(device, kind, shapes, interpret, seg_steps=None, oracle=None):
    env = dict(os.environ)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    extra = [str(seg_steps) if seg_steps else ""] + ([oracle] if oracle else [])
    r = subprocess.run([sys.executable, "-c", CHECK, device, kind, repr(shapes), *extra], capture_output=True,
                       text=True, env=env, timeout=900)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-3000:]


def test_triton_scan_matches_reference_in_the_interpreter():
    _run("cpu", "plain", PLAIN, interpret=True)


def test_triton_fused_cross_scan_matches_composed_cross_scan_in_the_interpreter():
    _run("cpu", "cross", CROSS, interpret=True)


# Checkpoint segments (SEG_STEPS steps between the backward's stored states) shorter than the sequence: 32 = two
# 16-step chunks per segment, so the last segment of l = 37 (three chunks) and l = 70 (five) is partial; 16 = one
# chunk per segment for the cross scan, whose four directions share the scratch rows.
SEGMENTED = [(2, 5, 37, 4, 0, "float32", "D z bias sp"), (1, 6, 70, 3, 3, "float32", "D bias sp")]


@pytest.mark.slow
def test_triton_backward_checkpoint_segments_in_the_interpreter():
    _run("cpu", "plain", SEGMENTED, interpret=True, seg_steps=32)


@pytest.mark.slow
def test_triton_cross_scan_checkpoint_segments_in_the_interpreter():
    _run("cpu", "cross", CROSS[:1], interpret=True, seg_steps=16)


DISPATCH = textwrap.dedent("""
    import torch
    from mambaseg.ops import cross_selective_scan
    from mambaseg.ops.cross_selective_scan import fused_backends
    assert "triton" in fused_backends(), fused_backends()
    g = torch.Generator().manual_seed(0)
    b, d, h, w, n = 1, 3, 3, 5, 4
    r = lambda *s: torch.randn(*s, generator=g)
    args = (r(b, d, h * w), 0.3 * r(b, 4, d, h * w), -torch.rand(4 * d, n, generator=g), r(b, 4, n, h * w),
            r(b, 4, n, h * w), r(4 * d), r(4 * d), True)
    tri = cross_selective_scan(*args, h=h, w=w, backend="triton")
    nat = cross_selective_scan(*args, h=h, w=w, backend="native")
    ref = cross_selective_scan(*args, h=h, w=w, backend="reference")
    assert (tri - ref).abs().max() < 1e-5 and (nat - ref).abs().max() < 1e-5, ((tri - ref).abs().max(), (nat - ref).abs().max())
    print("OK")
""")


def test_triton_is_the_fused_cross_scan_of_backend_triton():
    """``cross_selective_scan(..., backend="triton")`` reaches the Triton kernel and agrees with the native
    fused kernel and the composed reference."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", DISPATCH], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-3000:]


@pytest.mark.slow
def test_triton_kernels_compile_ahead_of_time_for_sm80_and_sm90(tmp_path):
    """Every kernel the shipped networks launch compiles for sm_80 and sm_90 (PTX and cubin), with at most a few
    bytes of register spills (ptxas -v); a fresh Triton cache, so CI really compiles."""
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "cache"), TRITON_DEFAULT_FP_FUSION="1",
               PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = "import json; from mambaseg.ops.triton_aot import aot_report; print(json.dumps(aot_report((80, 90))))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    assert {row["arch"] for row in rows} == {"sm_80", "sm_90"}
    failed = [(row["kernel"], row["arch"], row.get("error")) for row in rows if not row["ok"]]
    assert not failed, failed
    for row in rows:
        assert row["cubin_bytes"] > 0 and row["registers"] > 0, row
        # ptxas reports a few bytes (4 on sm_90 for the plain backward at BLOCK_D 4); BLOCK_D 16 spilled 0.6-1.3 kB
        assert 0 <= row["spill_store_bytes"] <= 64 and 0 <= row["spill_load_bytes"] <= 64, f"register spills: {row}"
        assert row["local_bytes"] == 0, row
        assert row["shared_bytes"] <= 99 * 1024, row       # fits an sm_80 SM with room for two programs


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_triton_matches_reference_on_gpu_stage_shapes(dtype):
    stages = [(2, 768, 4096, 16, 4, dtype, "D bias sp"), (2, 1536, 1024, 16, 4, dtype, "D bias sp"),
              (2, 3072, 256, 16, 4, dtype, "D bias sp"), (2, 6144, 64, 16, 4, dtype, "D bias sp")]
    _run("cuda", "plain", stages + [s[:5] + (dtype, s[6]) for s in PLAIN], interpret=False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_triton_fused_cross_scan_matches_composed_on_gpu(dtype):
    # VM-UNet's stage maps at 256² (64², 32², 16², 8²) with its d_inner per stage, batch 2; and the odd ones.
    stages = [(2, 192, 64, 64, 16, dtype), (2, 384, 32, 32, 16, dtype), (2, 768, 16, 16, 16, dtype),
              (2, 1536, 8, 8, 16, dtype)]
    _run("cuda", "cross", stages + [c[:5] + (dtype,) for c in CROSS], interpret=False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_triton_matches_torch_backend_on_gpu_at_volumetric_lengths(dtype):
    # SegMamba's first stage at a 128³ patch scans 262,144 tokens per branch; U-Mamba Enc 3D's 2,097,152. The
    # step-by-step reference would take minutes at these lengths, so the oracle is the blocked `torch` backend
    # (itself tested against the reference in tests/ops/test_selective_scan.py); many backward segments.
    _run("cuda", "plain", [(1, 96, 262144, 16, 0, dtype, "D bias sp"), (1, 16, 2097152, 16, 0, dtype, "D bias sp")],
         interpret=False, oracle="torch")
