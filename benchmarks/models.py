"""CPU (or GPU) speed of every registered model: forward and forward+backward seconds per image.

    python benchmarks/models.py                       # every model, batch 1 and 4, paper input sizes
    python benchmarks/models.py --models vmunet,unet --batch 1 --repeats 5

Input size is each model's paper size (256; 224 for Mamba-UNet and Swin-UNet) unless --size is given; the scan
backend is the default one (``auto``), printed in the header. Times are the median of --repeats calls after
one warm-up, divided by the batch size. Target of the models issue: VM-UNet forward at 256, batch 1, <= 0.5 s on
a 2-core CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="comma-separated registry names (default: all)")
    p.add_argument("--batch", default="1,4")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-backward", action="store_true")
    args = p.parse_args(argv)

    import torch

    from mambaseg.models import create_model, list_models, model_info
    from mambaseg.ops import resolve_backend

    names = args.models.split(",") if args.models else list_models()
    batches = [int(b) for b in args.batch.split(",")]
    dev = torch.device(args.device)
    print(f"device={dev}, threads={torch.get_num_threads()}, scan backend={resolve_backend(None, dev)}, "
          f"torch {torch.__version__}, median of {args.repeats} after 1 warm-up, seconds per image")
    print(f"{'model':>18} {'size':>5} {'params':>10} {'batch':>5} | {'fwd s/img':>10} | {'fwd+bwd s/img':>13}")
    for name in names:
        info = model_info(name)
        size = args.size or info.default_size
        model = create_model(name, in_channels=3, num_classes=1).to(dev)
        params = sum(p.numel() for p in model.parameters())
        for b in batches:
            x = torch.randn(b, 3, size, size, device=dev)

            def timeit(fn):
                fn()
                ts = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    fn()
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    ts.append(time.perf_counter() - t)
                return statistics.median(ts) / b

            def fwd():
                model.eval()
                with torch.no_grad():
                    model(x)

            def fwd_bwd():
                model.train()
                out = model(x)
                out = out[0] if isinstance(out, (list, tuple)) else out
                out.float().mean().backward()
                model.zero_grad(set_to_none=True)

            tf = timeit(fwd)
            tb = float("nan") if args.no_backward else timeit(fwd_bwd)
            print(f"{name:>18} {size:>5} {params / 1e6:>9.2f}M {b:>5} | {tf:>10.3f} | {tb:>13.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
