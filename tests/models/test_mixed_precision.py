"""Mixed precision: training steps under bf16 and fp16 autocast stay finite for every Mamba network (the
scan computes in fp32 whatever autocast does), and the scan really receives / returns the right dtypes."""

import pytest
import torch

from mambaseg.losses import BceDiceLoss
from mambaseg.models import create_model
from mambaseg.ops import record_scans

SMALL = {
    "vmunet": dict(embed_dim=16, depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1]),
    "vmunet_v2": dict(embed_dim=16, depths=[1, 1, 1, 1]),
    "mamba_unet": dict(embed_dim=16, depths=[1, 1, 1, 1]),
    "hmt_unet": dict(dim=16, in_dim=8, depths=[1, 1, 2, 2], num_heads=[1, 2, 2, 4], window_size=[4, 4, 2, 1]),
}


def disc_batch(b=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks, imgs = [], []
    for _ in range(b):
        cy, cx = torch.randint(16, size - 16, (2,), generator=g)
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 < 100).float()
        imgs.append(m.expand(3, size, size) + 0.3 * torch.randn(3, size, size, generator=g))
        masks.append(m)
    return torch.stack(imgs), torch.stack(masks)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(SMALL))
def test_autocast_training_steps_stay_finite(name, dtype):
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, num_classes=1, **SMALL[name])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = BceDiceLoss()
    x, y = disc_batch()
    for _ in range(3):
        with torch.autocast("cpu", dtype=dtype), record_scans() as calls:
            logits = model(x)
            logits = logits[0] if isinstance(logits, (list, tuple)) else logits
        loss = loss_fn(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(loss), loss
        for n_, p in model.named_parameters():
            if p.grad is not None:
                assert torch.isfinite(p.grad).all(), n_
        opt.step()
    assert calls, "the network ran no selective scan"


def test_scan_inside_autocast_returns_the_input_dtype_computed_in_fp32():
    from mambaseg.ops import selective_scan, selective_scan_reference
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 4, 16, generator=g).bfloat16()
    B = torch.randn(1, 3, 16, generator=g).bfloat16()
    A = -torch.rand(4, 3, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = selective_scan(u, u, A, B, B, delta_softplus=True)
    exact = selective_scan_reference(u.double(), u.double(), A.double(), B.double(), B.double(), delta_softplus=True)
    assert out.dtype == torch.bfloat16
    assert ((out.double() - exact).abs() <= 2 ** -7 * exact.abs() + 1e-6).all()
