"""Seconds of nnU-Net-style preprocessing (mambaseg.data.preprocess) for one BraTS-size case (4 x 240 x 240 x 155,
a 160 x 180 x 135 nonzero box), single-threaded: same spacing (crop + masked z-score), resampling 0.9 x 0.9 x 1.2 mm
-> 1 mm (order 3 images, one-hot order 1 labels), and the inverse of the label map; with the ratio of the last two
to the first, measured in this run.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/volumetric_preprocess.py
"""

import time

import numpy as np

from mambaseg.data import preprocess as pp


def main():
    rng = np.random.default_rng(0)
    img = np.zeros((4, 240, 240, 155), np.float32)
    img[:, 40:200, 30:210, 10:145] = rng.random((4, 160, 180, 135), dtype=np.float32) + 1
    lab = np.zeros((240, 240, 155), np.int64)
    lab[100:140, 100:150, 60:90] = 1
    lab[110:130, 110:130, 70:80] = 2
    plan = pp.PreprocessPlan((1.0, 1.0, 1.0), ["zscore"] * 4, [True] * 4, [None] * 4)
    pp.nonzero_mask(img[:, :8, :8, :8])  # import scipy.ndimage outside the timings
    t = time.perf_counter()
    pp.preprocess_case(img, lab, (1.0, 1.0, 1.0), plan)
    same = time.perf_counter() - t
    t = time.perf_counter()
    _, y, props = pp.preprocess_case(img, lab, (0.9, 0.9, 1.2), plan)
    res = time.perf_counter() - t
    t = time.perf_counter()
    pp.invert_label(y, props)
    inv = time.perf_counter() - t
    print(f"same spacing {same:.2f} s | resampled {res:.2f} s ({res / same:.1f}x) | inverse label {inv:.2f} s "
          f"({inv / same:.1f}x)")


if __name__ == "__main__":
    main()
