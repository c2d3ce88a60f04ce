"""bf16 autocast against fp32 on the synthetic skin test set: speed (interleaved, medians) and output difference.

    python benchmarks/bf16.py                         # VM-UNet, random init (seed 0), 256^2, 8 test images
    python benchmarks/bf16.py --ckpt runs/demo/checkpoints/best.ckpt   # a trained checkpoint instead

Reports the forward seconds per image in fp32 and under bfloat16 autocast (``mambaseg.engine.precision``: GEMMs
and convs in bf16, the scan and the norms in fp32), timed alternately in one process, the largest absolute
difference of the sigmoid probabilities, and the mean Dice of the bf16 mask against the fp32 mask (threshold
0.5). With random weights the logits sit near 0, so threshold flips are more frequent than with a trained net.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vmunet")
    p.add_argument("--ckpt", default=None)
    p.add_argument("--num", type=int, default=8, help="test images")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import torch

    from mambaseg.data.synthetic import SyntheticSkin
    from mambaseg.engine.precision import with_precision
    from mambaseg.models import create_model

    torch.manual_seed(0)
    if args.ckpt:
        from mambaseg.engine.predict import load_module
        net = load_module(args.ckpt).net.eval()
    else:
        net = create_model(args.model, in_channels=3, num_classes=1).eval()
    ds = SyntheticSkin(split="test", num_samples=args.num, size=args.size)
    xs = [ds[i]["image"].float()[None] for i in range(len(ds))]
    nets = {"fp32": net, "bf16": with_precision(net, "bf16")}
    times = {"fp32": [], "bf16": []}
    probs = {}
    with torch.inference_mode():
        for k in nets:
            nets[k](xs[0])  # warm-up
        for r in range(args.repeats):
            for k in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                t = time.perf_counter()
                out = [torch.sigmoid(nets[k](x).float()) for x in xs]
                times[k].append((time.perf_counter() - t) / len(xs))
                probs[k] = torch.cat(out)
    a, b = probs["fp32"], probs["bf16"]
    ma, mb = a > 0.5, b > 0.5
    dices = []
    for i in range(a.shape[0]):
        inter, tot = (ma[i] & mb[i]).sum().item(), ma[i].sum().item() + mb[i].sum().item()
        dices.append(1.0 if tot == 0 else 2 * inter / tot)
    tf, tb = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    print(f"{args.model} {'(ckpt)' if args.ckpt else '(random init)'} {args.size}^2, {len(xs)} synthetic test images, "
          f"threads={torch.get_num_threads()}, median of {args.repeats} alternating passes")
    print(f"forward s/img: fp32 {tf:.3f}  bf16 {tb:.3f}  fp32/bf16 {tf / tb:.2f}x")
    print(f"max |p_bf16 - p_fp32| = {(a - b).abs().max().item():.4f}; mean Dice(bf16 mask, fp32 mask) = "
          f"{statistics.mean(dices):.4f} (min {min(dices):.4f}); mask pixels that differ: "
          f"{(ma != mb).float().mean().item() * 100:.3f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
