"""ONNX export of the 3-D networks at a small (D, H, W) size, run in onnxruntime against PyTorch (the same
tolerance rule as the 2-D networks in test_onnx.py)."""

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mambaseg.export import ExportError, onnx_session, run_onnx, to_onnx  # noqa: E402

from small_models import SIZE_3D, small_model  # noqa: E402


def _probs(y):
    y = torch.as_tensor(y)
    return torch.sigmoid(y) if y.shape[1] == 1 else torch.softmax(y, 1)


@pytest.mark.parametrize("name", ["umamba_bot_3d", "nnunet_3d"])
def test_onnxruntime_matches_pytorch_3d(name, tmp_path):
    torch.manual_seed(0)
    model = small_model(name, num_classes=3).eval()
    info = to_onnx(model, tmp_path / "m.onnx")                    # size: the model's default_input_size (its plan)
    assert info["input_shape"] == [3, *SIZE_3D]
    if name == "umamba_bot_3d":
        assert info["scan_nodes"] >= 1
    sess = onnx_session(info["path"], threads=1)
    for batch in (1, 2):
        x = torch.randn(batch, 3, *SIZE_3D)
        with torch.no_grad():
            ref = _probs(model(x))
        got = _probs(run_onnx(sess, x))
        assert got.shape == ref.shape == (batch, 3, *SIZE_3D)
        err = (got - ref).abs().max().item()
        if err > 1e-4:
            from mambaseg.ops import use_backend
            with torch.no_grad(), use_backend("reference"):
                exact = _probs(model.double()(x.double())).float()
            model.float()
            own = (ref - exact).abs().max().item()
            assert (got - exact).abs().max().item() <= 2 * own + 1e-5, (err, own)


def test_3d_export_size_errors(tmp_path):
    model = small_model("umamba_bot_3d").eval()
    with pytest.raises(ExportError, match=r"\(D, H, W\)"):
        to_onnx(model, tmp_path / "a.onnx", size=(16, 32))
    with pytest.raises(ExportError, match="cannot export at input 3x8x16x30"):
        to_onnx(model, tmp_path / "b.onnx", size=(8, 16, 30))
