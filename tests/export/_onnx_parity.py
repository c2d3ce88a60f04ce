"""The ONNX parity rule shared by the 2-D and 3-D export tests: onnxruntime's probabilities equal PyTorch's to 1e-4,
or, for a network whose float32 run is itself not that reproducible (He init, logits of +-16), ORT is as close to
the float64 network as PyTorch's own float32 run is."""

import torch

from mambaseg.export import run_onnx


def probs(y) -> torch.Tensor:
    y = torch.as_tensor(y)
    return torch.sigmoid(y) if y.shape[1] == 1 else torch.softmax(y, 1)


def assert_onnx_matches(model, sess, in_channels: int, size, out_channels: int, batches=(1, 2)) -> None:
    """Run ``model`` (eval) and the ONNX session ``sess`` on random batches of every size in ``batches`` (the batch
    axis is dynamic) at spatial ``size``; check the shapes and the parity rule above."""
    for batch in batches:
        x = torch.randn(batch, in_channels, *size)
        with torch.no_grad():
            ref = probs(model(x))
        got = probs(run_onnx(sess, x))
        assert got.shape == ref.shape == (batch, out_channels, *size)
        err = (got - ref).abs().max().item()
        if err > 1e-4:
            from mambaseg.ops import use_backend
            with torch.no_grad(), use_backend("reference"):
                exact = probs(model.double()(x.double())).float()
            model.float()
            own = (ref - exact).abs().max().item()
            assert (got - exact).abs().max().item() <= 2 * own + 1e-5, (err, own)
