"""ONNX export of the 3-D networks at a small (D, H, W) size, run in onnxruntime against PyTorch (the same
tolerance rule as the 2-D networks in test_onnx.py)."""

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mambaseg.export import ExportError, onnx_session, to_onnx  # noqa: E402

from _onnx_parity import assert_onnx_matches  # noqa: E402
from small_models import SIZE_3D, small_model  # noqa: E402


@pytest.mark.parametrize("name", ["umamba_bot_3d", "nnunet_3d"])
def test_onnxruntime_matches_pytorch_3d(name, tmp_path):
    torch.manual_seed(0)
    model = small_model(name, num_classes=3).eval()
    info = to_onnx(model, tmp_path / "m.onnx")                    # size: the model's default_input_size (its plan)
    assert info["input_shape"] == [3, *SIZE_3D]
    if name == "umamba_bot_3d":
        assert info["scan_nodes"] >= 1
    sess = onnx_session(info["path"], threads=1)
    assert_onnx_matches(model, sess, 3, SIZE_3D, 3)


def test_3d_export_size_errors(tmp_path):
    model = small_model("umamba_bot_3d").eval()
    with pytest.raises(ExportError, match=r"\(D, H, W\)"):
        to_onnx(model, tmp_path / "a.onnx", size=(16, 32))
    with pytest.raises(ExportError, match="cannot export at input 3x8x16x30"):
        to_onnx(model, tmp_path / "b.onnx", size=(8, 16, 30))
