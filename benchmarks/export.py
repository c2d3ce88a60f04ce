"""ONNX export: graph size, export time, parity and onnxruntime CPU latency beside our PyTorch CPU latency.

    python benchmarks/export.py                                  # vmunet, vmunet_v2, mamba_unet, hmt_unet, unet
    python benchmarks/export.py --models vmunet --size 256 --batch 1 --repeats 5 --chunk 16,32
    python benchmarks/export.py --scan-only --chunk 1,4,16,64     # one scan, VM-UNet stage-1 shape

``--scan-only`` times a single selective scan of VM-UNet's stage-1 shape (d = 4 x 192, l = 4096, n = 16, grouped
B/C) exported alone, against our default PyTorch backend, for each chunk size (chunk 1 = a plain per-step ONNX
Scan).

Each network is built at its paper configuration (random weights), exported with ``mambaseg.export.to_onnx`` at
its paper input size (or --size), and both runtimes get the same input in the same process with the same thread
count (``--threads``, default torch's). Columns: ONNX nodes (Scan bodies included), file MB, export seconds,
max abs probability difference ORT vs PyTorch, median forward seconds of each, and the ratio ORT / PyTorch.
Target (issue 17): ORT within 2x of PyTorch for the Mamba networks. On a shared machine trust the ratio only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vmunet,vmunet_v2,mamba_unet,hmt_unet,unet")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--chunk", default="16", help="comma-separated scan chunk sizes to compare")
    p.add_argument("--scan-only", action="store_true", help="one stage-1 scan instead of whole networks")
    args = p.parse_args(argv)
    if args.scan_only:
        return scan_only(args)

    import torch

    from mambaseg.export import onnx_session, run_onnx, to_onnx
    from mambaseg.models import create_model, model_info
    from mambaseg.ops import resolve_backend

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(f"threads={threads}, PyTorch scan backend={resolve_backend(None, 'cpu')}, torch {torch.__version__}, "
          f"batch {args.batch}, median of {args.repeats} after 1 warm-up")
    print(f"{'model':>11} {'size':>4} {'chunk':>5} {'nodes':>6} {'MB':>6} {'export s':>8} {'max|dp|':>8} "
          f"{'torch s':>8} {'ORT s':>8} {'ORT/torch':>9}")

    def med(fn):
        fn()
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    tmp = tempfile.mkdtemp(prefix="mambaseg_export_bench_")
    for name in args.models.split(","):
        size = args.size or model_info(name).default_size
        torch.manual_seed(0)
        kw = {"img_size": size} if name == "swin_unet" else {}
        model = create_model(name, in_channels=3, num_classes=1, **kw).eval()
        x = torch.randn(args.batch, 3, size, size)
        with torch.no_grad():
            t_torch = med(lambda: model(x))
            ref = torch.sigmoid(model(x))
        for chunk in [int(c) for c in args.chunk.split(",")]:
            path = os.path.join(tmp, f"{name}_{chunk}.onnx")
            info = to_onnx(model, path, size=size, chunk=chunk, overwrite=True)
            sess = onnx_session(path, threads=threads)
            got = torch.sigmoid(torch.from_numpy(run_onnx(sess, x)))
            t_ort = med(lambda: run_onnx(sess, x))
            print(f"{name:>11} {size:>4} {chunk:>5} {info['nodes']:>6} {info['bytes'] / 1e6:>6.1f} "
                  f"{info['export_seconds']:>8.1f} {(got - ref).abs().max().item():>8.1e} {t_torch:>8.3f} "
                  f"{t_ort:>8.3f} {t_ort / t_torch:>9.2f}", flush=True)
            os.unlink(path)
    return 0


def scan_only(args) -> int:
    import statistics as st

    import torch
    import torch.nn as nn

    from mambaseg.export import onnx_session, run_onnx, to_onnx
    from mambaseg.ops import resolve_backend, selective_scan
    if args.threads:
        torch.set_num_threads(args.threads)
    d, l, n, g = 768, 4096, 16, 4

    class One(nn.Module):
        def __init__(self):
            super().__init__()
            gen = torch.Generator().manual_seed(0)
            self.A = nn.Parameter(-torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1))
            self.B = nn.Parameter(torch.randn(1, g, n, l, generator=gen))
            self.C = nn.Parameter(torch.randn(1, g, n, l, generator=gen))
            self.D = nn.Parameter(torch.randn(d, generator=gen))
            self.bias = nn.Parameter(torch.randn(d, generator=gen) - 4)
            self.in_channels = 2

        def forward(self, x):
            b = x.shape[0]
            return selective_scan(x[:, 0], x[:, 1], self.A, self.B.expand(b, -1, -1, -1),
                                  self.C.expand(b, -1, -1, -1), self.D, delta_bias=self.bias,
                                  delta_softplus=True).unsqueeze(1)

    m = One().eval()
    x = torch.randn(args.batch, 2, d, l)

    def med(fn):
        fn()
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return st.median(ts)

    with torch.no_grad():
        t_torch = med(lambda: m(x))
        ref = m(x)
    print(f"one scan b={args.batch} d={d} l={l} n={n} g={g}; PyTorch backend {resolve_backend(None, 'cpu')}: "
          f"{t_torch:.3f} s; threads={torch.get_num_threads()}")
    print(f"{'chunk':>5} {'nodes':>6} {'export s':>8} {'max|dy|':>8} {'ORT s':>8} {'ORT/torch':>9}")
    tmp = tempfile.mkdtemp(prefix="mambaseg_scan_bench_")
    for chunk in [int(c) for c in args.chunk.split(",")]:
        path = os.path.join(tmp, f"scan_{chunk}.onnx")
        info = to_onnx(m, path, size=(d, l), chunk=chunk, overwrite=True)
        sess = onnx_session(path, threads=torch.get_num_threads())
        got = torch.from_numpy(run_onnx(sess, x))
        t_ort = med(lambda: run_onnx(sess, x))
        print(f"{chunk:>5} {info['nodes']:>6} {info['export_seconds']:>8.1f} {(got - ref).abs().max().item():>8.1e} "
              f"{t_ort:>8.3f} {t_ort / t_torch:>9.2f}", flush=True)
        os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
