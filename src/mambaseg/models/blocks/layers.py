"""Small layers shared by several networks (written here so no network needs timm)."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["DropPath", "trunc_normal_", "init_linear_and_norms", "Mlp", "check_input_size"]


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth per sample: zero the residual branch of a whole sample with probability ``drop_prob``."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    if keep <= 0.0:
        return x * 0.0
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def trunc_normal_(tensor: torch.Tensor, std: float = 1.0, mean: float = 0.0, a: float = -2.0, b: float = 2.0):
    """Normal(mean, std) truncated to [a, b] (absolute bounds, as timm's ``trunc_normal_``)."""
    return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


def _trunc_normal_002(w: torch.Tensor) -> None:
    trunc_normal_(w, std=0.02)


def init_linear_and_norms(m: nn.Module, weight_init=_trunc_normal_002) -> None:
    """The upstream (timm-style) ``_init_weights`` of VMamba, MambaVision and Swin, for ``module.apply``:
    ``nn.Linear`` weights from ``weight_init`` (default trunc-normal, std 0.02) and biases 0; ``nn.LayerNorm`` and
    ``nn.BatchNorm2d`` weight 1, bias 0 (BatchNorm's own default). Other modules keep their own init."""
    if isinstance(m, nn.Linear):
        weight_init(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (timm's ``Mlp`` parameter names: ``fc1``, ``fc2``)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer=nn.GELU, drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


def check_input_size(x: torch.Tensor, in_channels: int, multiple: int, model: str) -> None:
    """Raise a clear ValueError when ``x`` is not (B, in_channels, H, W) with H, W divisible by ``multiple``."""
    if x.dim() != 4:
        raise ValueError(f"{model}: expected a 4-D input (B, C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        ok_h = max(multiple, round(h / multiple) * multiple)
        ok_w = max(multiple, round(w / multiple) * multiple)
        raise ValueError(f"{model}: input size {h}x{w} is not divisible by {multiple}, which its patch embedding "
                         f"and downsampling need; resize or pad to e.g. {ok_h}x{ok_w} (224 and 256 both work)")
    if x.shape[1] != in_channels:
        raise ValueError(f"{model}: expected {in_channels} input channel(s), got {x.shape[1]} "
                         f"(input shape {tuple(x.shape)}); build the model with in_channels={x.shape[1]}")


def pixel_shuffle_channels_last(x: torch.Tensor, p: int) -> torch.Tensor:
    """``b h w (p1 p2 c) -> b (h p1) (w p2) c``: the channels-last pixel shuffle of VM-UNet, Swin-UNet and
    MambaVision's decoders (channels read as (p1, p2, c), not ``nn.PixelShuffle``'s (c, p1, p2))."""
    B, H, W, C = x.shape
    c = C // (p * p)
    return x.view(B, H, W, p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(B, H * p, W * p, c)
