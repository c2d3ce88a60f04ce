"""Triton backend: exactness against the reference.

* Without a GPU, the kernel runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``, in a subprocess because
  the variable must be set before Triton is imported). Skipped where Triton is not installed (it is not a
  dependency: CI does not have it).
* With a CUDA GPU (``-m gpu``), parity at the four VM-UNet stage shapes (batch 2) and odd shapes, fp32 and
  bf16 inputs, forward and every gradient.
"""

import os
import subprocess
import sys
import textwrap

import pytest

triton = pytest.importorskip("triton")

CHECK = textwrap.dedent("""
    import sys, torch
    from mambaseg.ops import selective_scan, available_backends
    assert "triton" in available_backends(sys.argv[1]), available_backends(sys.argv[1])
    dev = sys.argv[1]
    shapes = eval(sys.argv[2])
    for (b, d, l, n, g, dtype, flags) in shapes:
        gen = torch.Generator().manual_seed(b * 1000 + d + l)
        r = lambda *s: torch.randn(*s, generator=gen)
        bc = (b, g, n, l) if g else (b, n, l)
        ins = dict(u=r(b, d, l), delta=0.3 * r(b, d, l), A=-torch.rand(d, n, generator=gen) * 3, B=r(*bc), C=r(*bc),
                   D=r(d) if "D" in flags else None, z=r(b, d, l) if "z" in flags else None,
                   delta_bias=r(d) if "bias" in flags else None)
        ins = {k: (v.to(dev) if v is not None else None) for k, v in ins.items()}
        res = {}
        for be in ("reference", "triton"):
            low = {k: (v.to(getattr(torch, dtype)) if v is not None and k in ("u", "delta", "z", "B", "C") else v)
                   for k, v in ins.items()}
            args = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in low.items()}
            out, last = selective_scan(**args, delta_softplus="sp" in flags, return_last_state=True, backend=be)
            w = torch.linspace(-1, 1, out.numel(), device=dev).view_as(out)
            names = [k for k in args if args[k] is not None]
            grads = torch.autograd.grad((out.float() * w).sum() + 0.5 * last.sum(), [args[k] for k in names])
            res[be] = (out.float(), last, dict(zip(names, [g.float() for g in grads])))
        tol = 1e-4 if dtype == "float32" else 2e-2
        def rel(a, b):
            return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()
        errs = [rel(res["triton"][0], res["reference"][0]), rel(res["triton"][1], res["reference"][1])]
        errs += [rel(res["triton"][2][k], res["reference"][2][k]) for k in res["reference"][2]]
        print((b, d, l, n, g, dtype, flags), ["%.1e" % e for e in errs])
        assert max(errs) < tol, (b, d, l, n, g, dtype, flags, errs)
    print("OK")
""")

ODD = [(2, 8, 13, 5, 0, "float32", "D z bias sp"), (2, 40, 37, 16, 4, "float32", "D bias sp"),
       (1, 6, 16, 8, 2, "float32", "z"), (1, 12, 33, 16, 3, "bfloat16", "D z bias sp"),
       (3, 20, 1, 4, 0, "float32", "D sp")]


def _run(device, shapes, interpret):
    env = dict(os.environ)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", CHECK, device, repr(shapes)], capture_output=True, text=True,
                       env=env, timeout=900)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-3000:]


@pytest.mark.slow
def test_triton_kernel_matches_reference_in_the_interpreter():
    _run("cpu", ODD, interpret=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_triton_matches_reference_on_gpu_stage_shapes(dtype):
    stages = [(2, 768, 4096, 16, 4, dtype, "D bias sp"), (2, 1536, 1024, 16, 4, dtype, "D bias sp"),
              (2, 3072, 256, 16, 4, dtype, "D bias sp"), (2, 6144, 64, 16, 4, dtype, "D bias sp")]
    _run("cuda", stages + [s[:5] + (dtype, s[6]) for s in ODD], interpret=False)
