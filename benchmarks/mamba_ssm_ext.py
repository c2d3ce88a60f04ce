"""mamba-ssm's selective-scan CUDA kernel, built from its PyPI source distribution, as a mambaseg scan backend.

The anchor for the GPU numbers (../shared/spec/gpu_anchor.md) is upstream's CUDA kernel. This builds just
``csrc/selective_scan`` from the sdist (real weights, fp32 and bf16 inputs: the fp16 and complex dispatch
branches are cut from ``selective_scan.cpp`` so their kernels need not be compiled) with torch's JIT extension
loader, and registers it as the scan backend ``mamba_ssm_ext`` (same semantics as mamba-ssm's
``selective_scan_fn``), so that benchmarks can time it beside ours in the same process:

    # on a machine with torch, no GPU needed, never committed:
    MAMBA_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-binary :all: --no-build-isolation mamba-ssm==2.3.2.post1
    # on the GPU machine:
    python benchmarks/mamba_ssm_ext.py --sdist mamba_ssm-2.3.2.post1.tar.gz --build /tmp/mss --arch 90
    python benchmarks/scan.py --device cuda --mamba-ssm-ext /tmp/mss ...

``--check-patch`` only extracts and patches (no compiler needed): the rehearsal on a CPU machine.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tarfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

SOURCES = ["selective_scan.cpp", "selective_scan_fwd_fp32.cu", "selective_scan_fwd_bf16.cu",
           "selective_scan_bwd_fp32_real.cu", "selective_scan_bwd_bf16_real.cu"]
NVCC_FLAGS = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr",
              "--expt-extended-lambda", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__"]


def _cut_branch(text: str, macro: str, condition: str) -> str:
    """Remove the ``if/else if (condition) { ... }`` branch from a dispatch macro's definition."""
    start = text.index(f"#define {macro}(")
    end = text.index("\n\n", start)
    body = text[start:end]
    lines = body.split("\n")
    out, skip = [], False
    for i, line in enumerate(lines):
        if condition in line:
            skip = True
            first = line.lstrip().startswith("if")
            continue
        if skip:
            if re.match(r"\s*\}\s*else", line):
                skip = False
                if first:   # the removed branch opened the chain: the next "} else if" becomes "if"
                    line = line.replace("} else if", "if", 1)
                    if not line.lstrip().startswith("if"):
                        raise ValueError(f"cannot cut {condition} from {macro}")
                out.append(line)
            continue
        out.append(line)
    if skip:
        raise ValueError(f"cannot cut {condition} from {macro}")
    return text[:start] + "\n".join(out) + text[end:]


def patch_dispatch(cpp: str) -> str:
    """Cut the fp16 input branch and the complex weight branch out of the dispatch macros."""
    cpp = _cut_branch(cpp, "DISPATCH_ITYPE_FLOAT_AND_HALF_AND_BF16", "at::ScalarType::Half")
    cpp = _cut_branch(cpp, "DISPATCH_WTYPE_FLOAT_AND_COMPLEX", "at::ScalarType::ComplexFloat")
    return cpp


def extract(sdist: str, build: str) -> str:
    os.makedirs(build, exist_ok=True)
    src_dir = os.path.join(build, "selective_scan")
    os.makedirs(src_dir, exist_ok=True)
    with tarfile.open(sdist) as tf:
        for m in tf.getmembers():
            if "/csrc/selective_scan/" in m.name and m.isfile():
                with tf.extractfile(m) as f:
                    data = f.read()
                with open(os.path.join(src_dir, os.path.basename(m.name)), "wb") as g:
                    g.write(data)
    for name in ("selective_scan_fwd_fp32.cu", "selective_scan_fwd_bf16.cu"):   # drop the complex instantiation
        path = os.path.join(src_dir, name)
        with open(path) as f:
            lines = f.read().split("\n")
        with open(path, "w") as f:
            f.write("\n".join(x for x in lines if not re.match(r"template void .*complex_t>", x)))
    cpp_path = os.path.join(src_dir, "selective_scan.cpp")
    with open(cpp_path) as f:
        cpp = f.read()
    with open(cpp_path, "w") as f:
        f.write(patch_dispatch(cpp))
    return src_dir


def build(sdist: str, build_dir: str, arch: str = "90", verbose: bool = False):
    """Extract, patch and compile; returns the extension module (``fwd``, ``bwd``)."""
    from torch.utils.cpp_extension import load

    src_dir = extract(sdist, build_dir)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", ".".join(arch))
    return load(name="selective_scan_cuda_mambaseg_anchor", sources=[os.path.join(src_dir, s) for s in SOURCES],
                extra_cflags=["-O3", "-std=c++17"],
                extra_cuda_cflags=NVCC_FLAGS + [f"-gencode=arch=compute_{arch},code=sm_{arch}"],
                extra_include_paths=[src_dir], build_directory=build_dir, verbose=verbose)


def register(ext, name: str = "mamba_ssm_ext") -> None:
    """Register ``ext`` as a mambaseg scan backend with mamba-ssm's ``selective_scan_fn`` semantics."""
    import torch

    from mambaseg.ops._common import as_grouped
    from mambaseg.ops.selective_scan import register_backend

    class _Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u, delta, A, B, C, D, z, bias, softplus):
            out, x, *rest = ext.fwd(u, delta, A, B, C, D, z, bias, softplus)
            ctx.softplus, ctx.has_z = softplus, z is not None
            ctx.save_for_backward(u, delta, A, B, C, D, z, bias, x, out)
            last = x[:, :, -1, 1::2]
            return (rest[0] if z is not None else out), last

        @staticmethod
        def backward(ctx, dout, dlast):
            u, delta, A, B, C, D, z, bias, x, out = ctx.saved_tensors
            grads = ext.bwd(u, delta, A, B, C, D, z, bias, dout.contiguous(), x, out, None, ctx.softplus, False)
            du, ddelta, dA, dB, dC, dD, dbias, *rest = grads
            return (du, ddelta, dA, dB, dC, dD if D is not None else None, rest[0] if ctx.has_z else None,
                    dbias if bias is not None else None, None)

    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        B4, C4 = as_grouped(B, C)
        c = lambda t: None if t is None else t.contiguous()  # noqa: E731
        f = lambda t: None if t is None else t.float().contiguous()  # noqa: E731
        out, last = _Fn.apply(c(u), c(delta), f(A), c(B4), c(C4), f(D), c(z), f(delta_bias), bool(delta_softplus))
        return (out, last) if return_last_state else out

    register_backend(name, scan, devices=("cuda",), is_available=lambda: torch.cuda.is_available(), priority=1)


def load_built(build_dir: str, arch: str = "90"):
    """The extension built earlier into ``build_dir`` (torch's loader reuses the compiled objects)."""
    sdist = os.path.join(build_dir, "sdist.tar.gz")
    return build(sdist, build_dir, arch)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sdist", required=True)
    p.add_argument("--build", default="/tmp/mamba_ssm_ext")
    p.add_argument("--arch", default="90")
    p.add_argument("--check-patch", action="store_true", help="extract and patch only (no compiler needed)")
    a = p.parse_args(argv)
    if a.check_patch:
        src_dir = extract(a.sdist, a.build)
        with open(os.path.join(src_dir, "selective_scan.cpp")) as f:
            cpp = f.read()
        assert "at::ScalarType::Half) {" not in cpp.split("#define DISPATCH_WTYPE_FLOAT_AND_HALF")[0]
        assert "ComplexFloat) {" not in cpp.split("#define DISPATCH_WTYPE_FLOAT_AND_COMPLEX")[1].split("\n\n")[0]
        missing = [s for s in SOURCES if not os.path.exists(os.path.join(src_dir, s))]
        print(f"patched {src_dir}/selective_scan.cpp; sources present: {not missing} {missing or ''}")
        return 0 if not missing else 1
    import shutil
    os.makedirs(a.build, exist_ok=True)
    if os.path.abspath(a.sdist) != os.path.abspath(os.path.join(a.build, "sdist.tar.gz")):
        shutil.copy(a.sdist, os.path.join(a.build, "sdist.tar.gz"))
    t = time.perf_counter()
    build(a.sdist, a.build, a.arch, verbose=False)
    print(f"built mamba-ssm selective_scan for sm_{a.arch} in {time.perf_counter() - t:.0f} s into {a.build}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
