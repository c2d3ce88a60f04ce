"""Benchmark: the data check ``fit`` runs before training (``mambaseg.data.check``), header vs full mode, against
reading every sample once as the data loader does (one epoch of decoding, no transform, no model).

Writes ``--n`` ISIC-like pairs (``--size`` JPEG images, 0/255 PNG masks) into a temporary folder and prints the
best-of-``--repeats`` wall time of each and its ratio to the one-epoch read. The check uses up to 8 threads
(``min(8, cpu_count)``); the epoch read is single-threaded, as with ``num_workers=0``.

Run: ``python benchmarks/data_check.py [--n 64] [--size 1024x768] [--repeats 3]``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mambaseg.data.check import check_dataset
from mambaseg.data.folders import FolderDataset


def _write(root: Path, n: int, w: int, h: int) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    yy, xx = np.mgrid[:h, :w]
    for k in range(n):
        img = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).resize((w, h), Image.BILINEAR).save(root / "images" / f"ISIC_{k:07d}.jpg", quality=90)
        cy, cx, r = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4), rng.integers(h // 8, h // 3)
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).astype(np.uint8) * 255
        Image.fromarray(mask).save(root / "masks" / f"ISIC_{k:07d}_segmentation.png")


def _best(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", default="1024x768", help="W x H of the images")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        _write(root, a.n, w, h)
        ds = FolderDataset(root, split="all")
        epoch = _best(lambda: [ds.load(i) for i in range(len(ds))], a.repeats)
        header = _best(lambda: check_dataset(ds, "header"), a.repeats)
        full = _best(lambda: check_dataset(ds, "full"), a.repeats)
    print(f"{a.n} pairs, {w}x{h} JPEG + PNG mask, cpu_count {os.cpu_count()}")
    print(f"{'what':<34}{'seconds':>9}{'per pair (ms)':>15}{'vs one epoch read':>19}")
    for name, t in (("one epoch read (loader, 1 thread)", epoch), ("check header (default)", header),
                    ("check full (--data.check full)", full)):
        print(f"{name:<34}{t:>9.3f}{1000 * t / a.n:>15.1f}{t / epoch:>18.2f}x")


if __name__ == "__main__":
    main()
