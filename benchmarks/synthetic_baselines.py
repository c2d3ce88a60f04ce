"""Benchmark: how hard the synthetic data sets are (``mambaseg.data.synthetic``), and how fast they generate.

Baselines on the test split (Otsu, the best per-pixel colour rule, a tiny CNN, optionally a small U-Net), fitted on
the training split; the table they produce is in ``mambaseg/data/synthetic.py``'s docstring.

Run: ``python benchmarks/synthetic_baselines.py --baseline [--no-cnn] [--unet] [--size 64]`` (about a minute on
one core without ``--unet``) or ``--speed`` (generation time of 256 images of 256 px).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.data.synthetic import SyntheticCardiac, SyntheticPolyp, SyntheticSkin


def _dice(pred, gt):
    s = pred.sum() + gt.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(pred, gt).sum() / s


def _otsu(gray):
    hist, edges = np.histogram(gray, 256, (float(gray.min()), float(gray.max()) + 1e-6))
    p = hist / hist.sum()
    w = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = (mu[-1] * w - mu) ** 2 / (w * (1 - w) + 1e-12)
    return edges[int(np.argmax(between)) + 1]


def _arrays(ds):
    xs, ys = zip(*[ds.load(i)[:2] for i in range(len(ds))])
    return np.stack(xs), np.stack(ys)


def _bins(x, gray_levels=64):
    if x.shape[-1] == 3:
        q = np.clip((x / 16).astype(int), 0, 15)
        return q[..., 0] * 256 + q[..., 1] * 16 + q[..., 2], 4096
    q = np.clip((x[..., 0] * gray_levels).astype(int), 0, gray_levels - 1)
    return q, gray_levels


def _bayes(xtr, ytr, xte, nc):
    """Histogram classifier of the pixel value. Binary: foreground where P(fg | colour) exceeds the threshold
    that maximises the pooled training Dice; multi-class: maximum likelihood (class-balanced)."""
    btr, nb = _bins(xtr)
    bte, _ = _bins(xte)
    counts = np.stack([np.bincount(btr[ytr == c], minlength=nb) for c in range(nc)]).astype(np.float64)
    if nc == 2:
        post = counts[1] / np.maximum(counts.sum(0), 1)
        best, best_t = -1.0, 0.5
        for t in np.linspace(0.02, 0.98, 49):
            fg = post > t
            tp = counts[1][fg].sum()
            dice = 2 * tp / (counts[1].sum() + counts[:, fg].sum() + 1e-9)
            if dice > best:
                best, best_t = dice, t
        return (post > best_t).astype(np.int64)[bte]
    like = (counts + 1e-3) / counts.sum(1, keepdims=True)
    return np.argmax(like, 0)[bte]


def _tiny_cnn(xtr, ytr, xte, nc, steps=300, seed=0):
    """Three 3x3 conv layers (16 ch, receptive field 7 px), class-weighted cross-entropy, Adam 3e-3."""

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scale = 255.0 if xtr.max() > 2 else 1.0
        xt = torch.from_numpy(xtr.transpose(0, 3, 1, 2) / scale).float()
        yt = torch.from_numpy(ytr).long()
        freq = torch.bincount(yt.reshape(-1), minlength=nc).float() / yt.numel()
        weight = (1 / freq.clamp_min(1e-4)).sqrt()
        net = nn.Sequential(nn.Conv2d(xt.shape[1], 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                            nn.ReLU(), nn.Conv2d(16, nc, 3, padding=1))
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            idx = torch.randint(0, len(xt), (16,), generator=g)
            loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx], weight=weight / weight.mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return net(torch.from_numpy(xte.transpose(0, 3, 1, 2) / scale).float()).argmax(1).numpy()
    finally:
        torch.set_num_threads(threads)


def _small_unet(xtr, ytr, xte, nc, steps=800, seed=0):
    """3-level U-Net (16-32-64-64 channels, BatchNorm), CE + Dice, Adam 3e-3 cosine, random flips, batch 16."""

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                             nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.e1, self.e2, self.e3, self.b = block(c, 16), block(16, 32), block(32, 64), block(64, 64)
            self.d3, self.d2, self.d1 = block(128, 32), block(64, 16), block(32, 16)
            self.head = nn.Conv2d(16, nc, 1)

        def forward(self, x):
            e1 = self.e1(x)
            e2 = self.e2(F.max_pool2d(e1, 2))
            e3 = self.e3(F.max_pool2d(e2, 2))
            b = self.b(F.max_pool2d(e3, 2))
            d3 = self.d3(torch.cat([F.interpolate(b, scale_factor=2), e3], 1))
            d2 = self.d2(torch.cat([F.interpolate(d3, scale_factor=2), e2], 1))
            return self.head(self.d1(torch.cat([F.interpolate(d2, scale_factor=2), e1], 1)))

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scale = 255.0 if xtr.max() > 2 else 1.0
        x_all = torch.from_numpy(xtr.transpose(0, 3, 1, 2) / scale).float()
        y_all = torch.from_numpy(ytr).long()
        net = UNet(x_all.shape[1])
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            idx = torch.randint(0, len(x_all), (16,))
            x, y = x_all[idx], y_all[idx]
            if torch.rand(1) < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            if torch.rand(1) < 0.5:
                x, y = x.flip(-2), y.flip(-2)
            out = net(x)
            p = out.softmax(1)
            oh = F.one_hot(y, nc).permute(0, 3, 1, 2).float()
            dice = 1 - ((2 * (p * oh).sum((0, 2, 3)) + 1) / ((p + oh).sum((0, 2, 3)) + 1))[1:].mean()
            loss = F.cross_entropy(out, y) + dice
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        xt = torch.from_numpy(xte.transpose(0, 3, 1, 2) / scale).float()
        with torch.no_grad():
            return torch.cat([net(xt[i:i + 16]).argmax(1) for i in range(0, len(xt), 16)]).numpy()
    finally:
        torch.set_num_threads(threads)


def _score(pred, gt, nc):
    if nc == 2:
        return float(np.mean([_dice(p == 1, g == 1) for p, g in zip(pred, gt)]))
    per = []
    for c in range(1, nc):
        per.append(np.mean([_dice(p == c, g == c) for p, g in zip(pred, gt) if (g == c).any()]))
    return float(np.mean(per))


def baselines(size: int = 64, n_train: int = 256, n_test: int = 64, seed: int = 0, cnn: bool = True,
              unet: bool = False, names=None) -> dict:
    """Dice of the Otsu, pixel-colour Bayes and tiny-CNN baselines on each synthetic set (see module docstring)."""

    out = {}
    for name, cls in (("synthetic-skin", SyntheticSkin), ("synthetic-polyp", SyntheticPolyp),
                      ("synthetic-cardiac", SyntheticCardiac)):
        if names is not None and name not in names:
            continue
        if cls is SyntheticCardiac:
            tr, te = cls("train", n_train // 8, size, seed), cls("test", n_test // 8, size, seed)
            nc = 4
        else:
            tr, te = cls("train", n_train, size, seed), cls("test", n_test, size, seed)
            nc = 2
        t0 = time.perf_counter()
        xtr, ytr = _arrays(tr)
        xte, yte = _arrays(te)
        res = {"generate_s": round(time.perf_counter() - t0, 2)}
        if nc == 2:  # Otsu per image; foreground = the darker or brighter side, whichever is better on train
            def otsu_pred(x, dark):
                gray = x.mean(-1)
                return np.stack([(g < _otsu(g)) if dark else (g > _otsu(g)) for g in gray]).astype(int)

            dark = _score(otsu_pred(xtr, True), ytr, nc) >= _score(otsu_pred(xtr, False), ytr, nc)
            res["otsu"] = _score(otsu_pred(xte, dark), yte, nc)
        res["pixel_bayes"] = _score(_bayes(xtr, ytr, xte, nc), yte, nc)
        if cnn:
            t0 = time.perf_counter()
            res["tiny_cnn"] = _score(_tiny_cnn(xtr, ytr, xte, nc), yte, nc)
            res["cnn_s"] = round(time.perf_counter() - t0, 2)
        if unet:
            t0 = time.perf_counter()
            res["small_unet"] = _score(_small_unet(xtr, ytr, xte, nc), yte, nc)
            res["unet_s"] = round(time.perf_counter() - t0, 2)
        out[name] = res
    return out


def _main(argv=None):

    ap = argparse.ArgumentParser(prog="python benchmarks/synthetic_baselines.py",
                                 description="synthetic data sets: baselines and generation speed")
    ap.add_argument("--baseline", action="store_true", help="measure the Otsu / pixel-colour / tiny-CNN Dice")
    ap.add_argument("--speed", action="store_true", help="time the generation of 256 images of 256 px")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--no-cnn", action="store_true")
    ap.add_argument("--unet", action="store_true", help="also train the small U-Net (~3 min per data set)")
    ap.add_argument("--only", nargs="*", help="data set names to measure (default: all three)")
    args = ap.parse_args(argv)
    if args.speed:
        for cls in (SyntheticSkin, SyntheticPolyp):
            t = time.perf_counter()
            ds = cls("train", 256, 256, 0)
            for i in range(len(ds)):
                ds.load(i)
            print(f"{cls.__name__}: 256 x 256px in {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        ds = SyntheticCardiac("train", 32, 256, 0)
        for i in range(len(ds)):
            ds.load(i)
        print(f"SyntheticCardiac: 32 volumes x 8 slices x 256px in {time.perf_counter() - t:.2f} s")
    if args.baseline:
        t = time.perf_counter()
        print(json.dumps(baselines(args.size, cnn=not args.no_cnn, unet=args.unet, names=args.only), indent=2))
        print(f"({time.perf_counter() - t:.1f} s)")


if __name__ == "__main__":
    _main()
