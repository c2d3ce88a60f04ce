"""Benchmark: the cost of durability. Atomic checkpoint writes (``mambaseg.engine.io.AtomicCheckpointIO``: plain
data, temp file, fsync, rename, folder fsync) vs Lightning's ``TorchCheckpointIO``, and the per-batch reseeding of
``RandomStateCallback`` vs one VM-UNet training step, each pair measured in the same run.

Run: ``python benchmarks/checkpoint_io.py [--mb 330] [--repeats 3] [--dir DIR]`` (330 MB = paper VM-UNet + AdamW).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from mambaseg.engine.io import AtomicCheckpointIO
from mambaseg.engine.runs import seed_generators


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=330.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="folder to write into (default: a temp folder)")
    args = ap.parse_args()
    n = int(args.mb * 2 ** 20 / 4)
    ckpt = {"state_dict": {f"w{i}": torch.randn(n // 8) for i in range(8)}, "epoch": 1, "global_step": 10,
            "hyper_parameters": {"model": "vmunet"}}
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        p = os.path.join(d, "last.ckpt")
        plain = _best(lambda: TorchCheckpointIO().save_checkpoint(ckpt, p), args.repeats)
        atomic = _best(lambda: AtomicCheckpointIO().save_checkpoint(ckpt, p), args.repeats)
        load_plain = _best(lambda: torch.load(p, weights_only=False), args.repeats)
        load_safe = _best(lambda: AtomicCheckpointIO().load_checkpoint(p), args.repeats)
    print(f"checkpoint {args.mb:.0f} MB  save: Lightning {plain:.3f} s, atomic {atomic:.3f} s "
          f"(x{atomic / plain:.2f});  load: weights_only=False {load_plain:.3f} s, ours {load_safe:.3f} s "
          f"(x{load_safe / load_plain:.2f})")

    def reseed():
        seed_generators(1)

    k = 1000
    seed_s = _best(lambda: [reseed() for _ in range(k)], args.repeats) / k
    from mambaseg.models import create_model
    net = create_model("vmunet", in_channels=3, num_classes=1)
    x = torch.randn(1, 3, 256, 256)
    opt = torch.optim.AdamW(net.parameters())

    def step():
        opt.zero_grad()
        net(x).mean().backward()
        opt.step()

    step()
    step_s = _best(step, args.repeats)
    print(f"per-batch reseed {seed_s * 1e6:.1f} us vs VM-UNet 256x256 batch-1 training step {step_s:.3f} s "
          f"({100 * seed_s / step_s:.4f} %)")


if __name__ == "__main__":
    main()
