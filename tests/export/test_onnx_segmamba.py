"""ONNX export of the SegMamba / nnMamba / MONAI 3-D networks at a small (D, H, W) size, run in onnxruntime against
PyTorch (the tolerance rule of test_onnx.py: 1e-4 on probabilities, or as close to the float64 network as PyTorch's
own float32 run is). The exported scans (ToM's three branches, nnMamba's four orderings) are the ONNX Scan loop."""

import pytest
import torch

from mambaseg.models import list_models

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mambaseg.export import ExportError, onnx_session, to_onnx  # noqa: E402

from _onnx_parity import assert_onnx_matches  # noqa: E402
from small_models import size_for, small_model  # noqa: E402

# segmamba (the requirement), nnmamba_ds and unetr in the fast run; the others take 8-15 s each on 2 cores
SLOW = ("segmamba_v2", "nnmamba", "swin_unetr")
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
         for n in ("segmamba", "segmamba_v2", "nnmamba", "nnmamba_ds", "swin_unetr", "unetr") if n in list_models()]
SCANS = {"segmamba": 3 * 4, "segmamba_v2": 3 * 2, "nnmamba": 4 * 2 * 3, "nnmamba_ds": 2 * 3}


@pytest.mark.parametrize("name", NAMES)
def test_onnxruntime_matches_pytorch_3d(name, tmp_path):
    torch.manual_seed(0)
    size = size_for(name)
    model = small_model(name, num_classes=3).eval()
    info = to_onnx(model, tmp_path / "m.onnx", size=size)
    assert info["input_shape"] == [3, *size]
    assert info["scan_nodes"] == SCANS.get(name, 0)                   # one Scan per selective-scan call
    sess = onnx_session(info["path"], threads=1)
    assert_onnx_matches(model, sess, 3, size, 3)


def test_segmamba_export_at_a_size_it_refuses_is_one_clear_error(tmp_path):
    model = small_model("segmamba", num_slices="upstream").eval()
    with pytest.raises(ExportError, match="input depth of 128"):
        to_onnx(model, tmp_path / "a.onnx", size=(16, 32, 48))
