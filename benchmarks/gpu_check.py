"""The whole GPU check of the GPU issue, in one run of under 10 minutes on an H100/H200.

    python3 benchmarks/gpu_check.py --sdist mamba_ssm-2.3.2.post1.tar.gz --out $OUT      # on the GPU machine
    python3 benchmarks/gpu_check.py --rehearse --out /tmp/gpu_rehearsal                  # here, on the CPU

Steps (each with its own time limit; a failed step is reported and the rest still run):

1. environment: GPU, driver, torch, Triton; the device-to-device copy rate;
2. mamba-ssm's selective-scan CUDA extension built from the carried sdist (``benchmarks/mamba_ssm_ext.py``),
   in the background on the host CPUs while steps 3-4 use the GPU;
3. parity of the compiled Triton kernels against the reference (``pytest -m gpu tests/ops/test_scan_triton.py``):
   the four VM-UNet stage shapes at batch 2 and the odd shapes, fp32 and bf16, forward and every gradient,
   plain and fused cross scan;
4. the fused cross scan (Triton) against cross_scan -> Triton scan -> cross_merge, VM-UNet's stage maps, batch 32;
5. ``benchmarks/scan.py --device cuda --batch 32``: Triton vs mamba-ssm vs torch, bandwidth vs the copy rate;
6. ``benchmarks/train_step.py --device cuda``: the four Mamba networks, fp32 and bf16 autocast, with our Triton
   scan and with mamba-ssm's kernel swapped in;
7. a bf16-autocast training run of 200 steps on synthetic-skin beside an fp32 one: finite, and the losses;
8. 3D: a training step at a 128³ patch, batch 2, bf16, for ``segmamba`` and ``umamba_bot_3d`` (and the nnU-Net 3D
   U-Net baseline), with our Triton scan and with mamba-ssm's kernel swapped in, each network its own step;
9. 3D: the volumetric pipeline's sliding window over one 4x240x240x155 case at patch 128³ (nnU-Net 3D U-Net),
   ours against MONAI's ``sliding_window_inference``, seconds and peak memory.

Everything goes to ``OUT/gpu_check.log``; a short table is printed last (and saved as ``OUT/gpu_check.md``).
``--rehearse`` runs the same steps on the CPU at toy sizes (the Triton kernels in the interpreter), to check the
script itself before GPU time is spent on it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(ROOT, "src")

CROSS_TIMING = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, sys.argv[1])
    from mambaseg.ops import selective_scan, cross_scan, cross_merge
    from mambaseg.ops.scan_triton import cross_selective_scan_triton
    dev, b, shapes, reps = sys.argv[2], int(sys.argv[3]), eval(sys.argv[4]), int(sys.argv[5])
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    print("fused cross scan vs composed (cross_scan -> triton scan -> cross_merge), fwd+bwd ms, median")
    for d, h, w in shapes:
        L, n = h * w, 16
        g = torch.Generator(device=dev).manual_seed(0)
        r = lambda *s: torch.randn(*s, device=dev, generator=g)
        u, delta = r(b, d, L), 0.3 * r(b, 4, d, L)
        A, B, C, D, bias = -torch.rand(4 * d, n, device=dev) * 3, r(b, 4, n, L), r(b, 4, n, L), r(4 * d), r(4 * d)
        ins = [t.requires_grad_() for t in (u, delta, A, B, C, D, bias)]
        def fused():
            return cross_selective_scan_triton(*ins, True, h=h, w=w)
        def composed():
            xs = cross_scan(ins[0].view(b, d, h, w)).reshape(b, 4 * d, L)
            y = selective_scan(xs, ins[1].reshape(b, 4 * d, L), ins[2], ins[3], ins[4], ins[5], delta_bias=ins[6],
                               delta_softplus=True, backend="triton")
            return cross_merge(y.view(b, 4, d, L), h, w)
        res = {}
        warm = 2 if dev == "cuda" else 0
        for name, fn in (("fused", fused), ("composed", composed)):
            ts = []
            for i in range(reps + warm):
                sync(); t = time.perf_counter()
                y = fn(); y.sum().backward()
                sync(); ts.append(time.perf_counter() - t)
            ts = sorted(ts[warm:])
            res[name] = ts[len(ts) // 2] * 1e3
        print(f"  {d}x{h}x{w}: fused {res['fused']:.2f} ms, composed {res['composed']:.2f} ms, "
              f"ratio {res['composed'] / res['fused']:.2f}x", flush=True)
""")
# (composed uses delta/B/C as given: the timing compares the data movement, not the values)

BF16_RUN = textwrap.dedent("""
    import sys, math, torch
    sys.path.insert(0, sys.argv[1])
    from mambaseg.data import build_dataset
    from mambaseg.losses import BceDiceLoss
    from mambaseg.models import create_model
    from mambaseg.ops import set_default_backend
    dev, steps, size, batch, backend = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    set_default_backend(backend)
    ds = build_dataset("synthetic-skin", split="train", size=size)
    loss_fn = BceDiceLoss()
    curves = {}
    for dt in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = create_model("vmunet", in_channels=3, num_classes=1).to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
        losses, bad = [], 0
        for s in range(steps):
            idx = [(s * batch + i) % len(ds) for i in range(batch)]
            x = torch.stack([ds[i]["image"] for i in idx]).to(dev)
            y = torch.stack([ds[i]["mask"] for i in idx]).to(dev).float()
            with torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=dt == "bf16"):
                out = model(x)
            loss = loss_fn(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            bad += int(not math.isfinite(loss.item()))
            opt.step()
            losses.append(loss.item())
        k = max(1, steps // 10)
        curves[dt] = (sum(losses[:k]) / k, sum(losses[-k:]) / k, bad)
        print(f"{dt}: loss first {k} steps {curves[dt][0]:.4f}, last {k} steps {curves[dt][1]:.4f}, "
              f"non-finite steps {bad}", flush=True)
    ok = curves["bf16"][2] == 0 and curves["bf16"][1] < curves["bf16"][0] and \\
        abs(curves["bf16"][1] - curves["fp32"][1]) < 0.1 + 0.2 * curves["fp32"][1]
    print("BF16_RUN", "OK" if ok else "FAILED")
""")


# benchmarks/volumetric_inference.py: one BraTS-sized case at patch 128³ on the GPU; a small case on
# the CPU for the rehearsal
SLIDING_GPU = ["--device", "cuda", "--shape", "240", "240", "155", "--patch", "128", "--net", "brats128"]
SLIDING_REHEARSE = ["--device", "cpu", "--shape", "40", "40", "24", "--patch", "32", "--net", "small"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sdist", default=None, help="mamba_ssm-2.3.2.post1.tar.gz (carried; never committed)")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    p.add_argument("--rehearse", action="store_true", help="CPU, toy sizes, Triton interpreter")
    p.add_argument("--arch", default="90")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    log_path = os.path.join(a.out, "gpu_check.log")
    log = open(log_path, "w")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TRITON_DEFAULT_FP_FUSION="1")
    dev = "cpu" if a.rehearse else "cuda"
    if a.rehearse:
        env["TRITON_INTERPRET"] = "1"
    py = sys.executable
    summary = []
    t_all = time.perf_counter()

    def step(name, cmd, limit, background=False):
        log.write(f"\n===== {name}: {' '.join(cmd)[:500]}\n")
        log.flush()
        if background:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT), time.perf_counter()
        t = time.perf_counter()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=limit)
            out, rc = r.stdout + r.stderr, r.returncode
        except subprocess.TimeoutExpired as e:
            out, rc = (e.stdout or b"").decode(errors="replace") + f"\nTIMEOUT after {limit} s", 124
        log.write(out)
        log.flush()
        summary.append((name, rc, time.perf_counter() - t, out))
        return out

    step("environment", [py, "-c", "import torch, triton, sys; print(sys.version); print('torch', torch.__version__, "
                         "'triton', triton.__version__, 'cuda', torch.cuda.is_available() and "
                         "torch.cuda.get_device_name(0))"], 60)
    if not a.rehearse:
        step("nvidia-smi", ["nvidia-smi"], 30)
    build = None
    ext_dir = os.path.join("/tmp", "mamba_ssm_ext_build")
    if a.sdist:
        mode = ["--check-patch"] if a.rehearse else ["--arch", a.arch]
        build = step("mamba-ssm build", [py, os.path.join(HERE, "mamba_ssm_ext.py"), "--sdist", os.path.abspath(a.sdist),
                                         "--build", ext_dir, *mode], 330, background=True)
    if a.rehearse:
        step("triton parity (interpreter)", [py, "-m", "pytest", "-q", "-x", "tests/ops/test_scan_triton.py", "-k",
                                             "interpreter"], 900)
    else:
        step("triton parity (compiled, pytest -m gpu)", [py, "-m", "pytest", "-q", "-m", "gpu", "-p",
                                                        "no:cacheprovider", "tests/ops/test_scan_triton.py"], 150)
    cross_shapes = "[(2, 2, 3)]" if a.rehearse else "[(192, 64, 64), (384, 32, 32), (768, 16, 16), (1536, 8, 8)]"
    step("fused cross scan timing", [py, "-c", CROSS_TIMING, SRC, dev, "1" if a.rehearse else "32", cross_shapes,
                                     "1" if a.rehearse else "10"], 600 if a.rehearse else 60)
    ext_ok = False
    if build is not None:
        proc, t0 = build
        try:
            rc = proc.wait(timeout=max(1, 330 - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = 124
        summary.append(("mamba-ssm build", rc, time.perf_counter() - t0, ""))
        ext_ok = rc == 0 and not a.rehearse
    ext = ["--mamba-ssm-ext", ext_dir] if ext_ok else []
    if a.rehearse:
        step("scan benchmark", [py, os.path.join(HERE, "scan.py"), "--quick", "--repeats", "1", "--shapes", "d",
                                "--ref-bwd", "", "--backends", "torch"], 600)
        step("train step", [py, os.path.join(HERE, "train_step.py"), "--device", "cpu", "--batch", "1", "--size",
                            "64", "--models", "vmunet", "--warmup", "1", "--repeats", "1", "--dtypes", "fp32"], 600)
        step("bf16 training run", [py, "-c", BF16_RUN, SRC, "cpu", "2", "32", "1", "native"], 600)
        for name in ("segmamba", "umamba_bot_3d"):
            # 64³: the brats128 plan's six stages need at least 2 voxels per axis at the bottom
            step(f"3D train step {name}", [py, os.path.join(HERE, "train_step.py"), "--device", "cpu", "--models",
                                           name, "--patch", "64", "--batch3d", "1", "--warmup", "0", "--repeats", "1",
                                           "--dtypes", "bf16"], 600)
        step("3D sliding window", [py, os.path.join(HERE, "volumetric_inference.py"), *SLIDING_REHEARSE], 600)
    else:
        step("scan benchmark", [py, os.path.join(HERE, "scan.py"), "--device", "cuda", "--batch", "32", "--repeats",
                                "10", "--backends", "triton,torch" + (",mamba_ssm_ext" if ext_ok else ""),
                                "--ref-bwd", "", *ext], 120)
        for backend in ["triton"] + (["mamba_ssm_ext"] if ext_ok else []):
            step(f"train step ({backend})", [py, os.path.join(HERE, "train_step.py"), "--device", "cuda",
                                             "--backend", backend, "--warmup", "2", "--repeats", "5", *ext], 120)
        step("bf16 training run", [py, "-c", BF16_RUN, SRC, "cuda", "200", "256", "8", "triton"], 100)
        for name in ("segmamba", "umamba_bot_3d", "nnunet_3d"):
            for backend in ["triton"] + (["mamba_ssm_ext"] if ext_ok and name != "nnunet_3d" else []):
                step(f"3D train step {name} ({backend})", [py, os.path.join(HERE, "train_step.py"), "--device",
                                                          "cuda", "--models", name, "--patch", "128", "--batch3d",
                                                          "2", "--backend", backend, "--warmup", "2", "--repeats",
                                                          "5", "--dtypes", "bf16", *ext], 90)
        step("3D sliding window", [py, os.path.join(HERE, "volumetric_inference.py"), *SLIDING_GPU], 120)

    lines = [f"# GPU check ({'CPU rehearsal' if a.rehearse else 'GPU'}), {time.perf_counter() - t_all:.0f} s in all",
             "", "| step | exit | s |", "|---|---|---|"]
    lines += [f"| {n} | {rc} | {s:.0f} |" for n, rc, s, _ in summary]
    for n, rc, s, out in summary:
        keep = [x for x in out.splitlines() if any(k in x for k in ("passed", "failed", "ratio", "img/s", "x ref",
                                                                    "bandwidth", "loss first", "BF16_RUN", "GB/s",
                                                                    " | ", "torch ", "built"))]
        if keep and n != "environment":
            lines += ["", f"## {n}", "```", *keep[-24:], "```"]
        elif n == "environment":
            lines += ["", "```", *out.strip().splitlines()[-2:], "```"]
    text = "\n".join(lines)
    with open(os.path.join(a.out, "gpu_check.md"), "w") as f:
        f.write(text + "\n")
    log.close()
    print(text)
    print(f"\nfull log: {log_path}")
    return 0 if all(rc == 0 for _, rc, _, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
