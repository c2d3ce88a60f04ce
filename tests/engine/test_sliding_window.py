"""Sliding-window inference: ``mode="monai"`` equals MONAI's ``sliding_window_inference`` (oracle);
``mode="nnunet"`` equals a slow reference written from nnU-Net's rules (scipy's filtered delta for the Gaussian,
the step formula); mirroring TTA, padding, batching, and region/label decoding, in 2-D and 3-D."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from mambaseg.engine.sliding_window import (
    importance_map,
    logits_to_segmentation,
    regions_class_order,
    sliding_window_logits,
    window_starts,
)


def _net(nd: int, cin: int = 2, cout: int = 3) -> torch.nn.Module:
    conv = torch.nn.Conv3d if nd == 3 else torch.nn.Conv2d
    torch.manual_seed(0)
    return torch.nn.Sequential(conv(cin, 4, 3, padding=1), torch.nn.Tanh(), conv(4, cout, 3, padding=1)).eval()


def test_window_starts_examples_from_the_spec():
    assert window_starts(110, 64, 0.5, "nnunet") == [0, 23, 46]
    assert window_starts(110, 64, 0.5, "monai") == [0, 32, 46]
    assert window_starts(155, 128, 0.5, "nnunet") == [0, 27] == window_starts(155, 128, 0.5, "monai")
    assert window_starts(64, 64, 0.5, "nnunet") == [0] == window_starts(64, 64, 0.5, "monai")


@pytest.mark.parametrize("shape,patch,overlap", [
    ((21, 17, 11), (8, 8, 6), 0.5),
    ((13, 9, 4), (6, 10, 6), 0.25),  # smaller than the patch on two axes: padded and cropped back
    ((30, 23), (12, 10), 0.5),  # 2-D
])
def test_monai_mode_equals_monai_sliding_window_inference(shape, patch, overlap):
    from monai.inferers import sliding_window_inference

    net = _net(len(shape))
    x = torch.randn((1, 2) + shape, generator=torch.Generator().manual_seed(1))
    ref = sliding_window_inference(x, patch, 3, net, overlap=overlap, mode="gaussian", sigma_scale=0.125)
    ours = sliding_window_logits(net, x[0], patch, overlap=overlap, mode="monai", batch_size=3)
    assert ours.shape == ref.shape[1:]
    torch.testing.assert_close(ours, ref[0].float(), rtol=1e-5, atol=1e-6)
    # and with constant blending
    ref_c = sliding_window_inference(x, patch, 2, net, overlap=overlap, mode="constant")
    ours_c = sliding_window_logits(net, x[0], patch, overlap=overlap, mode="monai", gaussian=False, batch_size=2)
    torch.testing.assert_close(ours_c, ref_c[0].float(), rtol=1e-5, atol=1e-6)


def _slow_nnunet(net, x: np.ndarray, patch, step_size=0.5):
    """nnU-Net's predictor written from the spec, in float64 numpy, one window at a time."""
    c, *spatial = x.shape
    pads = [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(spatial, patch)]
    xp = np.pad(x, [(0, 0)] + pads)
    size = xp.shape[1:]
    steps = []
    for s, p in zip(size, patch):
        n = int(np.ceil((s - p) / (p * step_size))) + 1
        actual = (s - p) / (n - 1) if n > 1 else 99999999999
        steps.append([int(np.round(actual * i)) for i in range(n)])
    delta = np.zeros(patch)
    delta[tuple(p // 2 for p in patch)] = 1
    g = ndimage.gaussian_filter(delta, [p / 8 for p in patch], 0, mode="constant", cval=0)
    g = g / g.max() * 10
    g[g == 0] = g[g != 0].min()
    acc, cnt = None, np.zeros(size)
    for st in itertools.product(*steps):
        sl = tuple(slice(a, a + p) for a, p in zip(st, patch))
        with torch.no_grad():
            out = net(torch.as_tensor(xp[(slice(None),) + sl][None], dtype=torch.float32))[0].double().numpy()
        if acc is None:
            acc = np.zeros((out.shape[0],) + size)
        acc[(slice(None),) + sl] += out * g
        cnt[sl] += g
    res = acc / cnt
    return res[(slice(None),) + tuple(slice(a, a + s) for (a, _), s in zip(pads, spatial))]


@pytest.mark.parametrize("shape,patch", [((19, 14, 9), (8, 6, 6)), ((5, 14, 9), (8, 6, 4)), ((25, 18), (10, 8))])
def test_nnunet_mode_equals_slow_reference(shape, patch):
    net = _net(len(shape))
    x = torch.randn((2,) + shape, generator=torch.Generator().manual_seed(2))
    ours = sliding_window_logits(net, x, patch, overlap=0.5, mode="nnunet", batch_size=4)
    ref = _slow_nnunet(net, x.numpy().astype(np.float64), patch)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_nnunet_gaussian_matches_scipy_filtered_delta():
    for patch in [(16, 12, 7), (128, 128, 128)]:
        delta = np.zeros(patch)
        delta[tuple(p // 2 for p in patch)] = 1
        g = ndimage.gaussian_filter(delta, [p / 8 for p in patch], 0, mode="constant", cval=0)
        g = g / g.max() * 10
        g[g == 0] = g[g != 0].min()
        np.testing.assert_allclose(importance_map(patch, "nnunet").numpy(), g, rtol=1e-4, atol=1e-30)


def test_mirroring_averages_all_flip_combinations():
    net = _net(3)
    x = torch.randn(2, 6, 6, 4, generator=torch.Generator().manual_seed(3))
    ours = sliding_window_logits(net, x, (6, 6, 4), mirror_axes=(0, 1, 2))  # one window: weights cancel
    with torch.no_grad():
        outs = [net(x[None])[0]]
        for k in (1, 2, 3):
            for axes in itertools.combinations((1, 2, 3), k):
                outs.append(torch.flip(net(torch.flip(x, axes)[None])[0], axes))
    torch.testing.assert_close(ours, torch.stack(outs).mean(0), rtol=1e-5, atol=1e-6)
    plain = sliding_window_logits(net, x, (6, 6, 4))
    assert not torch.allclose(ours, plain)  # the conv net is not flip-invariant: TTA changes the logits


def test_batch_size_and_accumulator_dtype_and_errors():
    net = _net(3)
    x = torch.randn(2, 11, 9, 7, generator=torch.Generator().manual_seed(4))
    a = sliding_window_logits(net, x, (6, 6, 4), batch_size=1)
    b = sliding_window_logits(net, x, (6, 6, 4), batch_size=5)
    torch.testing.assert_close(a, b)
    assert a.dtype == torch.float32 and a.device.type == "cpu"
    with pytest.raises(ValueError, match="spatial axes"):
        sliding_window_logits(net, x, (6, 6))
    with pytest.raises(ValueError, match="mirror_axes"):
        sliding_window_logits(net, x, (6, 6, 4), mirror_axes=(3,))


def test_regions_decoding_brats():
    regions = [[1, 2, 3], [1, 3], [3]]  # WT, TC, ET of labels 1 NCR, 2 ED, 3 ET
    assert regions_class_order(regions) == [2, 1, 3]
    big = 20.0
    # voxel 0: nothing; 1: WT only -> ED (2); 2: WT+TC -> NCR (1); 3: all -> ET (3)
    logits = torch.tensor([[-big, big, big, big], [-big, -big, big, big], [-big, -big, -big, big]])
    assert logits_to_segmentation(logits, regions).tolist() == [0, 2, 1, 3]
    assert logits_to_segmentation(torch.tensor([[1.0, 0.0], [0.0, 2.0]])).tolist() == [0, 1]
    with pytest.raises(ValueError, match="outer -> inner"):
        regions_class_order([[3], [1, 3]])
