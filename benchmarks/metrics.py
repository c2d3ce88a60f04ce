"""Benchmark: HD95 + ASD of mambaseg.metrics vs medpy (if installed) and vs a full-array scipy reference.

Cases: a 512x512 pair of lesion-like blobs (ISIC-sized image) and a 256x256x20 volume with an organ-like blob and
anisotropic spacing (Synapse/ACDC-like). For each case it times

* ``ours``: ``mambaseg.metrics.hd95`` + ``average_surface_distance`` (two calls, as a user would write them), and
  ``ours (one pass)``: ``surface_distance_metrics`` (all of HD/HD95 both modes/ASD/ASSD from one set of distances);
* ``full-array``: medpy's algorithm written with scipy on the whole array (no bounding-box crop), always available;
* ``medpy``: ``medpy.metric.binary.hd95`` + ``asd`` when medpy is importable (GPL: dev-only, never a runtime dep);

and prints the best-of-N wall time and the largest absolute difference of the values.

Run: ``python benchmarks/metrics.py [--repeats 5]``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from mambaseg.metrics import average_surface_distance, hd95, surface_distance_metrics


def _blob(shape, center, radii, rng, noise=0.15):
    grids = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    r = sum(((g - c) / rad) ** 2 for g, c, rad in zip(grids, center, radii))
    # wobbly boundary: smooth random field added to the radius
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=[max(1.0, s / 16) for s in shape])
    field /= np.abs(field).max() + 1e-12
    return r < 1.0 + noise * field


def make_cases(seed=0):
    rng = np.random.default_rng(seed)
    ref2 = _blob((512, 512), (250, 260), (140, 170), rng)
    pred2 = _blob((512, 512), (262, 250), (135, 180), rng)
    ref3 = _blob((20, 256, 256), (10, 120, 140), (7, 50, 60), rng)
    pred3 = _blob((20, 256, 256), (10.5, 126, 134), (6.5, 52, 57), rng)
    return [
        ("2d 512x512", pred2, ref2, (1.0, 1.0)),
        ("3d 20x256x256", pred3, ref3, (3.0, 0.8, 0.8)),
    ]


def full_array_reference(a, b, spacing):
    """medpy's algorithm with scipy on the whole array (no cropping): hd95 (pooled) and asd."""
    fp = ndimage.generate_binary_structure(a.ndim, 1)
    sa = a ^ ndimage.binary_erosion(a, structure=fp, iterations=1)
    sb = b ^ ndimage.binary_erosion(b, structure=fp, iterations=1)
    ab = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    ba = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    return float(np.percentile(np.hstack((ab, ba)), 95)), float(ab.mean())


def medpy_pair(a, b, spacing):
    from medpy.metric import binary

    return float(binary.hd95(a, b, voxelspacing=spacing)), float(binary.asd(a, b, voxelspacing=spacing))


def ours_pair(a, b, spacing):
    return hd95(a, b, spacing=spacing, mode="medpy"), average_surface_distance(a, b, spacing=spacing)


def ours_one_pass(a, b, spacing):
    m = surface_distance_metrics(a, b, spacing=spacing)
    return m["hd95_medpy"], m["asd"]


def best_time(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    try:
        import medpy.metric.binary  # noqa: F401

        have_medpy = True
    except ImportError:
        have_medpy = False
    print(f"medpy installed: {have_medpy}; best of {args.repeats} runs; values are (hd95 medpy-mode, asd)")
    print(f"{'case':16s} {'method':18s} {'time [ms]':>10s} {'hd95':>10s} {'asd':>10s} {'max |diff|':>11s}")
    for name, a, b, sp in make_cases():
        methods = [("ours", ours_pair), ("ours (one pass)", ours_one_pass), ("full-array scipy", full_array_reference)]
        if have_medpy:
            methods.append(("medpy", medpy_pair))
        results = {}
        for label, fn in methods:
            t, vals = best_time(lambda fn=fn: fn(a, b, sp), args.repeats)
            results[label] = (t, vals)
        ref_vals = results["medpy" if have_medpy else "full-array scipy"][1]
        for label, (t, vals) in results.items():
            diff = max(abs(x - y) for x, y in zip(vals, ref_vals))
            print(f"{name:16s} {label:18s} {t * 1e3:10.1f} {vals[0]:10.4f} {vals[1]:10.4f} {diff:11.2e}")


if __name__ == "__main__":
    main()
