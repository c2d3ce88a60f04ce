"""ONNX export: onnxruntime (CPU) against PyTorch for every registered network, and the exported selective scan
against the reference recurrence (including step sizes that overflow an exp-of-cumsum scan)."""

import pytest
import torch
import torch.nn as nn

from mambaseg.models import list_models
from mambaseg.ops import selective_scan

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mambaseg.export import onnx_session, run_onnx, to_onnx  # noqa: E402
from mambaseg.ops.scan_onnx import selective_scan_onnx  # noqa: E402

from _onnx_parity import assert_onnx_matches  # noqa: E402
from small_models import is_3d, small_model  # noqa: E402

SMALL_SIZE = SIZE = 32
SIZES = {"umamba_bot": 64, "umamba_enc": 64, "lkm_unet": 64}  # the nnU-Net 64x64 plan (divisor 64)


# hmt_unet_small / _base are hmt_unet with other default widths: at the small test config they export the same
# graph, so they run among the slow tests only.
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in ("hmt_unet_small", "hmt_unet_base") else n
         for n in list_models() if not is_3d(n)]  # to_onnx exports 2-D networks


@pytest.mark.parametrize("name", NAMES)
def test_onnxruntime_matches_pytorch(name, tmp_path):
    SIZE = SIZES.get(name, SMALL_SIZE)
    torch.manual_seed(0)
    kwargs = {"img_size": SIZE} if name == "swin_unet" else {}
    model = small_model(name, num_classes=3, **kwargs).eval()
    info = to_onnx(model, tmp_path / "m.onnx", size=SIZE)
    assert info["input_shape"] == [3, SIZE, SIZE]
    sess = onnx_session(info["path"], threads=1)
    assert_onnx_matches(model, sess, 3, (SIZE, SIZE), 3, batches=(1, 3))   # the batch axis is dynamic


class _ScanNet(nn.Module):
    """x (b, 2, d, l): u = x[:, 0], delta = scale * x[:, 1]; grouped B, C fixed."""

    def __init__(self, d, l, n, g, scale):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.A = nn.Parameter(-torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1))      # VMamba init
        self.B = nn.Parameter(torch.randn(1, g, n, l, generator=gen))
        self.C = nn.Parameter(torch.randn(1, g, n, l, generator=gen))
        self.D = nn.Parameter(torch.randn(d, generator=gen))
        self.bias = nn.Parameter(torch.randn(d, generator=gen))
        self.scale = scale
        self.in_channels = 2

    def forward(self, x):
        b = x.shape[0]
        return selective_scan(x[:, 0], self.scale * x[:, 1], self.A, self.B.expand(b, -1, -1, -1),
                              self.C.expand(b, -1, -1, -1), self.D, delta_bias=self.bias,
                              delta_softplus=True).unsqueeze(1)


@pytest.mark.parametrize("scale,chunk,l", [(1.0, 16, 37), (30.0, 16, 64), (30.0, 5, 64)])
def test_exported_scan_equals_the_reference_even_for_large_dt(scale, chunk, l, tmp_path):
    # scale 30: softplus(delta) up to ~100, |A| up to 16: A * (sum of dt over a chunk) reaches thousands, where
    # an exp-of-cumsum chunked scan overflows fp32 (scan_notes.md); the sequential recurrence cannot.
    d, n, g = 8, 16, 4
    net = _ScanNet(d, l, n, g, scale).eval()
    info = to_onnx(net, tmp_path / "s.onnx", size=(d, l), chunk=chunk)
    assert info["scan_nodes"] == 1
    x = torch.randn(2, 2, d, l, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = selective_scan(x[:, 0].double(), net.scale * x[:, 1].double(), net.A.double(),
                             net.B.expand(2, -1, -1, -1).double(), net.C.expand(2, -1, -1, -1).double(),
                             net.D.double(), delta_bias=net.bias.double(), delta_softplus=True,
                             backend="reference").unsqueeze(1)
        eager = selective_scan_onnx(x[:, 0], net.scale * x[:, 1], net.A, net.B.expand(2, -1, -1, -1),
                                    net.C.expand(2, -1, -1, -1), net.D, delta_bias=net.bias,
                                    delta_softplus=True, chunk=chunk).unsqueeze(1)
    got = torch.from_numpy(run_onnx(onnx_session(info["path"]), x)).double()
    assert torch.isfinite(got).all()
    tol = 1e-4 * max(1.0, ref.abs().max().item())
    assert (got - ref).abs().max().item() <= tol
    assert (eager.double() - ref).abs().max().item() <= tol
