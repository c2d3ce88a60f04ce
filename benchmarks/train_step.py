"""Training-step throughput: images (2D) or patches (3D) per second for one optimiser step of each model, fp32 and
bf16 autocast, with peak memory.

    python benchmarks/train_step.py --device cuda                 # the GPU issue's table: batch 32, 256^2
    python benchmarks/train_step.py --device cpu --batch 2 --models vmunet,unet   # small CPU check
    python benchmarks/train_step.py --device cuda --models segmamba,umamba_bot_3d --batch3d 2 --patch 128 --dtypes bf16

Step = forward, loss (BCE+Dice on logits, 1 class), backward, AdamW step, as in the upstream recipes. Input
size is each model's paper size (256; 224 for Mamba-UNet and Swin-UNet) unless --size is given. A 3D network
(``spatial_dims == 3``) gets 4-channel patches of --patch voxels a side, batch --batch3d, 4 classes and a
cross-entropy + soft Dice loss (the 3D papers' recipe). Median of
--repeats steps after --warmup steps, timed with CUDA events on a GPU. Peak memory: CUDA max allocated (GPU
only; on the CPU the column shows "-", use benchmarks/models.py there). The upstream numbers to compare with (mamba-ssm's CUDA kernel, H100)
are in ../shared/spec/gpu_anchor.md; they are printed beside ours when --device cuda and batch 32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

ANCHOR_H100 = {  # upstream stack on an H100, batch 32 (24 for Mamba-UNet): img/s fp32, img/s bf16 autocast
    "vmunet": (132.8, 162.7), "vmunet_v2": (162.8, 195.2), "hmt_unet": (157.5, 282.9), "mamba_unet": (141.2, 170.5),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vmunet,vmunet_v2,mamba_unet,hmt_unet")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--patch", type=int, default=128, help="3D networks: patch side (voxels)")
    p.add_argument("--batch3d", type=int, default=2, help="3D networks: patches per step")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--backend", default=None, help="scan backend (default: auto)")
    p.add_argument("--mamba-ssm-ext", default=None, metavar="DIR",
                   help="register mamba-ssm's CUDA kernel built into DIR by benchmarks/mamba_ssm_ext.py as backend "
                        "'mamba_ssm_ext' (then --backend mamba_ssm_ext swaps it in)")
    args = p.parse_args(argv)

    import torch

    from mambaseg.losses import BceDiceLoss
    from mambaseg.models import create_model, model_info
    from mambaseg.ops import resolve_backend, set_default_backend

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; use --device cpu", file=sys.stderr)
        return 2
    if args.mamba_ssm_ext:
        import os
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import mamba_ssm_ext
        mamba_ssm_ext.register(mamba_ssm_ext.load_built(args.mamba_ssm_ext))
    if args.backend:
        set_default_backend(args.backend)
    print(f"device={torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}, batch={args.batch}, "
          f"scan backend={resolve_backend(args.backend, dev)}, torch {torch.__version__}, "
          f"median of {args.repeats} steps after {args.warmup}")
    print(f"{'model':>14} {'size':>5} {'dtype':>5} | {'img/s':>8} {'upstream img/s':>15} | {'peak GB':>8}")
    bce_dice = BceDiceLoss()

    def ce_dice(out, y):  # 3D: softmax cross-entropy + soft Dice over the foreground classes
        p = out.softmax(1)
        onehot = torch.nn.functional.one_hot(y, out.shape[1]).movedim(-1, 1).float()
        dims = tuple(range(2, out.dim()))
        dice = (2 * (p * onehot).sum(dims) + 1e-5) / (p.sum(dims) + onehot.sum(dims) + 1e-5)
        return torch.nn.functional.cross_entropy(out, y) + 1 - dice[:, 1:].mean()

    for name in args.models.split(","):
        for dt in args.dtypes.split(","):
            torch.manual_seed(0)
            model = create_model(name, in_channels=3, num_classes=1)
            if getattr(model, "spatial_dims", 2) == 3:
                model = create_model(name, in_channels=4, num_classes=4)
                size, batch, loss_fn = args.patch, args.batch3d, ce_dice
                x = torch.randn(batch, 4, size, size, size, device=dev)
                y = torch.randint(0, 4, (batch, size, size, size), device=dev)
            else:
                size, batch, loss_fn = args.size or model_info(name).default_size, args.batch, bce_dice
                x = torch.randn(batch, 3, size, size, device=dev)
                y = (torch.rand(batch, size, size, device=dev) > 0.5).float()
            model = model.to(dev).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
            amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=(dt == "bf16"))

            def step():
                with torch.autocast(**amp):
                    out = model(x)
                out = out[0] if isinstance(out, (list, tuple)) else out
                loss = loss_fn(out.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            for _ in range(args.warmup):
                step()
            times = []
            for _ in range(args.repeats):
                if dev.type == "cuda":
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record()
                    step()
                    e.record()
                    torch.cuda.synchronize(dev)
                    times.append(s.elapsed_time(e) / 1e3)
                else:
                    t = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - t)
            ips = batch / statistics.median(times)
            peak = f"{torch.cuda.max_memory_allocated(dev) / 2**30:.2f}" if dev.type == "cuda" else "-"
            anchor = ANCHOR_H100.get(name)
            ref = f"{anchor[0 if dt == 'fp32' else 1]:.1f}" if anchor and dev.type == "cuda" else "-"
            print(f"{name:>14} {size:>5} {dt:>5} | {ips:>8.3g} {ref:>15} | {peak:>8}", flush=True)
            del model, opt
    return 0


if __name__ == "__main__":
    sys.exit(main())
