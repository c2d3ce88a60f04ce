"""Benchmark of the volumetric (3D) data pipeline, first version: the data side only.

Measured in one run, on the built-in ``synthetic-brats`` cases (no download):

* case preparation seconds per case at ``--case-size`` (field of view in voxels at 1 mm): generating the case,
  z-scoring it inside the brain (the preprocessing a BraTS-like case needs once it is cropped and resampled), and
  nnU-Net's foreground-location sampling (:func:`mambaseg.data.patches.class_locations`);
* training patches per second of :class:`mambaseg.data.patches.PatchDataset` at patch 64³ and 128³, with nnU-Net's
  augmentation (``"nnunet"``) and with plain crops (``augmentation=None``), one process (a DataLoader with ``W``
  workers multiplies it by up to ``W`` where cores are free);
* the ratios: augmented / plain crop at each size, and 128³ / 64³.

The network's part (training steps per second of the 3D U-Net) and the sliding-window inference are added by the
engine/network work (``vol_engine``, ``nets3d_*``).

Run: ``python benchmarks/volumetric.py [--case-size 160] [--cases 2] [--n64 40] [--n128 12] [--threads 1]``.
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
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

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
