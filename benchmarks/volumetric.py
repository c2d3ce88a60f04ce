"""Benchmark of the volumetric (3D) data pipeline, first version: the data side only.

Measured in one run, on the built-in ``synthetic-brats`` cases (no download):

* case preparation seconds per case at ``--case-size`` (field of view in voxels at 1 mm): generating the case,
  z-scoring it inside the brain (the preprocessing a BraTS-like case needs once it is cropped and resampled), and
  nnU-Net's foreground-location sampling (:func:`mambaseg.data.patches.class_locations`);
* training patches per second of :class:`mambaseg.data.patches.PatchDataset` at patch 64³ and 128³, with nnU-Net's
  augmentation (``"nnunet"``) and with plain crops (``augmentation=None``), one process (a DataLoader with ``W``
  workers multiplies it by up to ``W`` where cores are free);
* the ratios: augmented / plain crop at each size, and 128³ / 64³.

* with ``--sliding-window``: sliding-window seconds and peak memory for one ``--sw-shape`` case (240 x 240 x 155)
  at patch ``--sw-patch`` (128), ours against MONAI's ``sliding_window_inference`` on the same ``nnunet_3d`` in the
  same run, and the ratio ours / MONAI (``benchmarks/volumetric_inference.py``, each method in its own process).

The training steps per second of the 3D U-Net are added by the network work (``nets3d_*``).

Run: ``python benchmarks/volumetric.py [--case-size 160] [--cases 2] [--n64 40] [--n128 12] [--threads 1]
[--sliding-window | --sw-only] [--sw-patch 128] [--sw-shape 240 240 155] [--sw-net small|brats128]``.
The case must be at least the patch size for 128³ patches without padding (160 by default).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _rate(ds, n, offset=0):
    """Patches per second over ``n`` indices (after one warm-up patch)."""
    ds[offset]
    t = time.perf_counter()
    for i in range(1, n + 1):
        ds[offset + i]
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case-size", type=int, default=160)
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--n64", type=int, default=40, help="patches timed at 64^3")
    ap.add_argument("--n128", type=int, default=12, help="patches timed at 128^3")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--sliding-window", action="store_true", help="also time the sliding window, ours vs MONAI")
    ap.add_argument("--sw-patch", type=int, default=128)
    ap.add_argument("--sw-shape", type=int, nargs=3, default=[240, 240, 155])
    ap.add_argument("--sw-net", choices=["small", "brats128"], default="small")
    ap.add_argument("--sw-only", action="store_true", help="only the sliding-window part")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.sliding_window or a.sw_only:
        import os
        import sys
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from volumetric_inference import run_sliding_window
        run_sliding_window(a.sw_patch, a.sw_net, a.sw_shape, 1, a.threads, "cpu")
        if a.sw_only:
            return

    from mambaseg.data.patches import PatchDataset, class_locations
    from mambaseg.data.synthetic3d import SyntheticBraTS

    ds = SyntheticBraTS("train", num_samples=a.cases, size=a.case_size, channels=a.channels, seed=0)
    gen, loc = [], []
    for k in range(a.cases):
        t = time.perf_counter()
        s = ds[k]
        gen.append(time.perf_counter() - t)
        t = time.perf_counter()
        class_locations(s["mask"].numpy(), [[1], [2], [3]])
        loc.append(time.perf_counter() - t)
    shape = tuple(ds[0]["mask"].shape)
    print(f"torch {torch.__version__}, {a.threads} thread(s); {a.cases} synthetic-brats cases of {shape}, "
          f"{a.channels} channels")
    print(f"case preparation: generate + z-score {np.mean(gen):.2f} s/case, foreground locations "
          f"{np.mean(loc):.2f} s/case")

    rates = {}
    for p, n in ((64, a.n64), (128, a.n128)):
        for aug in ("nnunet", None):
            pd = PatchDataset(ds, (p, p, p), batch_size=2, samples_per_epoch=10 ** 6, augmentation=aug, seed=0)
            for k in range(a.cases):
                pd.locations(k)  # precomputed, as nnU-Net's preprocessing does
            rates[(p, aug)] = _rate(pd, n)
        print(f"patch {p}^3: {rates[(p, 'nnunet')]:.2f} patches/s with nnU-Net augmentation, "
              f"{rates[(p, None)]:.2f} patches/s plain crops (ratio augmented/plain "
              f"{rates[(p, 'nnunet')] / rates[(p, None)]:.3f})")
    print(f"ratio 128^3 / 64^3 (augmented): {rates[(128, 'nnunet')] / rates[(64, 'nnunet')]:.3f} "
          f"(voxels per patch: 1/8 = 0.125)")


if __name__ == "__main__":
    main()
