"""Benchmark: sliding-window inference on one BraTS-sized case (240 x 240 x 155, 4 channels), ours vs MONAI.

Measured in one run, each method in its own child process (so each peak memory is its own):

* ``ours (monai placement)``: :func:`mambaseg.engine.sliding_window.sliding_window_logits` with ``mode="monai"``
  (MONAI's window starts and Gaussian, the same windows as MONAI: the like-for-like comparison);
* ``ours (nnunet placement)``: the default ``mode="nnunet"`` (nnU-Net's evenly spread windows; may be another
  number of windows, so it is listed but not part of the ratio);
* ``MONAI``: ``monai.inferers.sliding_window_inference(mode="gaussian", sigma_scale=0.125)`` with the windows on
  the network's device and the output on the CPU (``sw_device``/``device``), as ours accumulates on the CPU.

All three: the same network (nnU-Net's plain 3-D U-Net, ``nnunet_3d``), patch ``--patch`` (128 by default),
overlap 0.5, ``--sw-batch`` windows per forward pass, fp32, no mirroring; one warm-up window first. Printed per
method: seconds for the case, windows, peak resident memory of the process (CPU) and the increase over the memory
before inference (model and input loaded), or peak CUDA memory on a GPU; then the time ratio ours / MONAI (issue 24:
<= 1.1).

``--net small`` (default on a CPU: widths 8..64, 4-5 stages) keeps the run to minutes on a laptop; ``--net brats128``
is nnU-Net's BraTS plan (31 M parameters; on a CPU a 128^3 window takes tens of seconds per core).

Run: ``python benchmarks/volumetric_inference.py [--patch 128] [--net small|brats128] [--threads 2]
[--device cpu|cuda] [--shape 240 240 155]``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2 ** 20


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return _rss_mb()


def _net(kind: str, patch: int, channels: int, classes: int):
    from mambaseg.models import create_model
    if kind == "brats128":
        kw = {"patch_size": [patch] * 3}
    else:
        n_st = {32: 4, 64: 5, 128: 5}.get(patch, 4)
        kw = {"patch_size": [patch] * 3, "features_per_stage": [8, 16, 32, 64, 64][:n_st]}
    return create_model("nnunet_3d", in_channels=channels, num_classes=classes, **kw).eval()


def child(a) -> None:
    import torch
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    net = _net(a.net, a.patch, 4, 4).to(dev)
    x = torch.randn(4, *a.shape)
    patch = (a.patch,) * 3
    with torch.no_grad():  # warm-up: one window
        net(x[None, :, :a.patch, :a.patch, :a.patch].to(dev))
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = _current_rss_mb()
    t = time.perf_counter()
    if a.child == "monai":
        from monai.inferers import sliding_window_inference
        with torch.no_grad():
            out = sliding_window_inference(x[None], patch, a.sw_batch, net, overlap=0.5, mode="gaussian",
                                           sigma_scale=0.125, sw_device=dev, device=torch.device("cpu"))[0]
        from mambaseg.engine.sliding_window import window_starts
        windows = 1
        for s in a.shape:
            windows *= len(window_starts(max(s, a.patch), a.patch, 0.5, "monai"))
    else:
        from mambaseg.engine.sliding_window import sliding_window_logits, window_starts
        mode = "monai" if a.child == "ours-monai" else "nnunet"
        out = sliding_window_logits(net, x, patch, overlap=0.5, mode=mode, batch_size=a.sw_batch, device=dev)
        windows = 1
        for s in a.shape:
            windows *= len(window_starts(max(s, a.patch), a.patch, 0.5, mode))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    res = {"seconds": dt, "windows": windows, "peak_rss_mb": _rss_mb(), "rss_before_mb": base,
           "out_shape": list(out.shape), "out_dtype": str(out.dtype), "out_device": str(out.device)}
    if dev.type == "cuda":
        res["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print("RESULT " + json.dumps(res))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--net", choices=["small", "brats128"], default=None)
    ap.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    ap.add_argument("--sw-batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.net is None:
        a.net = "small" if a.device == "cpu" else "brats128"
    if a.child:
        return child(a)
    return 0 if run_sliding_window(a.patch, a.net, a.shape, a.sw_batch, a.threads, a.device) else 1


def run_sliding_window(patch: int = 128, net: str = "small", shape=(240, 240, 155), sw_batch: int = 1,
                       threads: int = 2, device: str = "cpu"):
    """Run the three methods (each in a child process), print the table and the ratio; returns the results
    (``None`` if a child failed). Also called by ``benchmarks/volumetric.py --sliding-window``."""
    print(f"sliding window: case {list(shape)} x 4 channels, patch {patch}^3, overlap 0.5, net nnunet_3d ({net}), "
          f"sw batch {sw_batch}, device {device}, {threads} thread(s)")
    results = {}
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for name in ("ours-monai", "monai", "ours-nnunet"):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--patch", str(patch), "--net", net,
               "--shape", *map(str, shape), "--sw-batch", str(sw_batch), "--threads", str(threads),
               "--device", device]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not line:
            print(f"{name}: failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
            return None
        results[name] = r = json.loads(line[0][7:])
        mem = (f"peak CUDA {r['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in r else
               f"peak RSS {r['peak_rss_mb']:.0f} MB (+{r['peak_rss_mb'] - r['rss_before_mb']:.0f} MB over "
               f"{r['rss_before_mb']:.0f} MB before inference)")
        print(f"{name:12s} {r['seconds']:8.2f} s  {r['windows']:3d} windows  {mem}  -> {r['out_shape']} "
              f"{r['out_dtype']} on {r['out_device']}")
    ratio = results["ours-monai"]["seconds"] / results["monai"]["seconds"]
    print(f"ratio ours / MONAI (same windows) = {ratio:.3f}  (target <= 1.1: {'ok' if ratio <= 1.1 else 'NOT MET'})")
    results["ratio"] = ratio
    return results


if __name__ == "__main__":
    sys.exit(main())
