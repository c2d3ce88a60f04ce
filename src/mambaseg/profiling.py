"""Model complexity you can trust: parameters, FLOPs (with the selective scan), latency.

The Mamba segmentation papers print Params/FLOPs measured with ``thop.profile``. thop (and ptflops) only see
registered ``nn.Module`` leaves (Linear, Conv, norms, ...): they silently leave out raw ``nn.Parameter`` weights
used through ``einsum`` (VMamba's ``x_proj_weight``/``dt_projs_weight``), the selective scan itself and
``F.scaled_dot_product_attention``. This module reports both worlds side by side, each labelled:

``paper`` convention -- thop-0.1.1-compatible, re-derived (thop is **not** a dependency; we count with forward
hooks). Per executed module, with ``x`` its input and ``y`` its output:

=====================================  ============================================================
module (isinstance, nearest in MRO)    counted "ops" (thop calls these FLOPs; they are MACs)
=====================================  ============================================================
``Conv{1,2,3}d``, ``ConvTranspose*``   ``y.numel() * (x.shape[1] // groups) * prod(kernel)`` (no bias)
``Linear``                             ``in_features * y.numel()`` (no bias)
``BatchNorm*``, ``LayerNorm``,         ``2 * x.numel()``, doubled when affine (``affine`` /
``InstanceNorm*``                      ``elementwise_affine``)
``AvgPool*``                           ``y.numel()``
``AdaptiveAvgPool*``                   ``(prod(in_spatial / out_spatial) + 1) * y.numel()``
``Upsample``, ``Upsampling*2d``        ``y.numel()`` x {nearest 1, linear 5, bilinear 11, bicubic 259,
                                       trilinear 31}
``Softmax``                            ``rows * (3 * n - 1)`` with n = size along ``dim``
``PReLU``                              ``x.numel()``
everything else (activations,          0 -- including every functional op (``einsum``, ``F.conv1d``,
dropout, pooling max, pixel shuffle)   ``F.interpolate``, attention) and the selective scan
=====================================  ============================================================

"paper params" are the parameters of the *executed* counted modules (each once), which is what thop prints:
raw ``nn.Parameter``s (``A_logs``, ``x_proj_weight``, ...) and modules that never run are missed. With these
rules the registered models reproduce the published tables (VM-UNet 4.11 G / 22.04 M at 256, class-default
VM-UNet 7.56 G / 34.62 M, VM-UNetV2 4.40 G / 17.91 M, Mamba-UNet 3.54 G at 224, HMT-UNet 25.06 G at 256 and
8.40 G at 224; see ``PUBLISHED``). Deviation from thop: modules are matched with ``isinstance`` (the nearest
registered class in the MRO) instead of thop's exact ``type(m)`` lookup, so subclasses of ``nn.Linear`` etc.
are counted.

``full`` convention -- every multiply-accumulate the forward really does:

* ``gemm``: every matmul / conv / einsum, measured by ``torch.utils.flop_counter.FlopCounterMode``
  (MACs = its FLOPs / 2; conv-transpose counted at its true cost);
* ``scan``: the selective scan counted analytically from the calls ``mambaseg.ops.record_scans()`` observes,
  ``9·B·L·D·N`` FLOPs per call (+ ``B·D·L`` for the D skip and for the z gate; VMamba/fvcore convention from
  mamba issue #110; ``MAC-equivalents = FLOPs / 2``). The FlopCounterMode count taken *while a scan backend
  runs* is subtracted so no backend's internal einsums/bmms are counted twice (the backend functions are
  wrapped for the duration of the counting pass, see ``_isolate_scan``; by default the counting pass does not
  even compute the scan: a stand-in returns zeros of the right shape);
* ``attention``: ``F.scaled_dot_product_attention`` counted analytically, ``B·heads·Lq·Lk·(E + Ev)`` MACs
  (= 4·B·heads·Lq·Lk·head_dim FLOPs), whatever FlopCounterMode attributes to it (nothing on CPU) subtracted;
* ``other``: normalisation / pooling / upsample / softmax with the thop rules above, so that ``full`` covers
  everything ``paper`` counts.

``full`` MACs = gemm + attention + scan/2 + other; ``full`` FLOPs = 2·gemm + 2·attention + scan + other.
Invariant: ``full.macs >= paper.macs - paper.parts["convtranspose_excess_macs"]``. thop counts a
``ConvTranspose`` as ``y.numel()·C_in·k²``, stride² times what it computes (``x.numel()·C_out/groups·k²``);
VM-UNetV2's published 4.40 G needs that formula, so ``paper`` keeps it and reports the excess. For the Mamba
models ``full >= paper`` outright; a conv U-Net whose decoder is mostly ``ConvTranspose2d(k=2, s=2)`` (the
``unet``/``att_unet`` baselines) has ``paper > full``: the paper convention over-counts it.

Latency (``measure_latency``) runs ``warmup`` untimed forwards, then ``repeats`` timed ones (synchronising
CUDA), and reports the median, quartiles, min and max with device, dtype, batch, input size, scan backend and
thread count beside them.

Example::

    >>> from mambaseg.profiling import profile_model
    >>> p = profile_model("vmunet", size=256, latency=False)
    >>> print(p.format())
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import create_model, list_models, model_info
from .models.contract import SegmentationNetwork
from .ops import intercept_scans, record_scans, resolve_backend

__all__ = ["ParamCount", "FlopCount", "Latency", "Profile", "CONVENTIONS", "PUBLISHED", "count_params",
           "count_flops", "measure_latency", "profile_model", "profile_table", "parse_dtype"]

CONVENTIONS = ("paper", "full")

# Numbers printed by the papers / repos (thop), 1x3xSxS input. Keys: registered model name -> list of
# (size, model kwargs, {"params_M": .., "gmacs": ..}, source). Used by the CLI to print "published" beside ours
# and by the tests as the oracle. Precision = what was printed.
PUBLISHED: Dict[str, List[dict]] = {
    "vmunet": [
        dict(size=256, kwargs={}, params_M=22.04, gmacs=4.11,
             source="VM-UNet paper config [2,2,2,2]/[2,2,2,1], thop via the repo's cal_params_flops"),
        dict(size=256, kwargs=dict(depths=(2, 2, 9, 2), depths_decoder=(2, 9, 2, 2)), params_M=34.62,
             gmacs=7.56, source="VM-UNet class defaults [2,2,9,2]/[2,9,2,2] (VM-UNetV2 Table 3)"),
    ],
    "vmunet_v2": [
        dict(size=256, kwargs={}, params_M=17.91, gmacs=4.40, source="VM-UNetV2 Table 3 (thop)"),
    ],
    "mamba_unet": [
        dict(size=224, kwargs=dict(num_classes=4), params_M=15.48, gmacs=3.54,
             source="Mamba-UNet, ACDC config (4 classes), thop at 224"),
    ],
    "hmt_unet": [
        dict(size=256, kwargs={}, params_M=None, gmacs=25.06, source="HMT-UNet (MambaVision-T), thop at 256"),
        dict(size=224, kwargs={}, params_M=None, gmacs=8.40, source="HMT-UNet (MambaVision-T), thop at 224"),
    ],
}


# --------------------------------------------------------------------------------------------------------------
# result containers
# --------------------------------------------------------------------------------------------------------------

@dataclass
class ParamCount:
    """Parameter counts. ``used``: parameters that receive a gradient from a training-mode forward/backward
    (``None`` when not measured); ``unused``: names of the others."""
    total: int
    trainable: int
    used: Optional[int] = None
    unused: List[str] = field(default_factory=list)


@dataclass
class FlopCount:
    """One convention's count. ``macs`` and ``flops`` are plain numbers of operations; ``parts`` breaks them
    down (keys ending in ``_macs`` / ``_flops`` / ``_ops``); ``params`` is the convention's own parameter
    count where it has one (thop's, for ``paper``)."""
    convention: str
    macs: int
    flops: int
    parts: Dict[str, int] = field(default_factory=dict)
    params: Optional[int] = None
    label: str = ""
    notes: List[str] = field(default_factory=list)


@dataclass
class Latency:
    """Timed forwards: seconds per forward of the whole batch."""
    device: str
    dtype: str
    batch: int
    input_shape: Tuple[int, ...]
    scan_backend: str
    threads: int
    warmup: int
    repeats: int
    times_s: List[float]
    median_s: float
    q25_s: float
    q75_s: float
    min_s: float
    max_s: float

    @property
    def fps(self) -> float:
        """Images per second at the median latency."""
        return self.batch / self.median_s if self.median_s > 0 else float("inf")

    def describe(self) -> str:
        ms = 1e3
        return (f"{self.median_s * ms:.2f} ms median (IQR {self.q25_s * ms:.2f}-{self.q75_s * ms:.2f}, "
                f"min {self.min_s * ms:.2f}, max {self.max_s * ms:.2f}; {self.repeats} runs after {self.warmup} "
                f"warm-up) = {self.fps:.2f} img/s | device={self.device} dtype={self.dtype} batch={self.batch} "
                f"input={'x'.join(map(str, self.input_shape[1:]))} scan={self.scan_backend} "
                f"threads={self.threads}")


@dataclass
class Profile:
    model: str
    input_shape: Tuple[int, ...]
    params: ParamCount
    flops: Dict[str, FlopCount]
    latency: Optional[Latency] = None
    scan_calls: int = 0
    published: List[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.latency is not None:
            d["latency"]["fps"] = self.latency.fps
        return d

    def format(self) -> str:
        """Human-readable multi-line report."""
        p = self.params
        lines = [f"model: {self.model}   input: {'x'.join(map(str, self.input_shape))}"]
        used = f"{p.used:,} used by the forward" if p.used is not None else "used: not measured"
        lines.append(f"params: {p.total:,} total, {p.trainable:,} trainable, {used}")
        if p.used is not None and p.unused:
            shown = ", ".join(p.unused[:6]) + (f", ... ({len(p.unused)} tensors)" if len(p.unused) > 6 else "")
            lines.append(f"  never get a gradient: {shown}")
        for conv, fc in self.flops.items():
            if conv == "paper":
                lines.append(f"paper (thop-compatible, MACs printed as 'FLOPs' in the papers): "
                             f"{fc.macs / 1e9:.3f} G, thop params {fc.params / 1e6:.2f} M")
            else:
                pr = fc.parts
                lines.append(f"full: {fc.macs / 1e9:.3f} GMAC = {fc.flops / 1e9:.3f} GFLOP "
                             f"[gemm/conv/einsum {pr.get('gemm_macs', 0) / 1e9:.3f} GMAC, "
                             f"scan {pr.get('scan_flops', 0) / 1e9:.3f} GFLOP ({self.scan_calls} calls), "
                             f"attention {pr.get('attention_macs', 0) / 1e9:.3f} GMAC, "
                             f"norm/pool/other {pr.get('other_ops', 0) / 1e9:.3f} G ops]")
            for n in fc.notes:
                lines.append(f"  note: {n}")
        for pub in self.published:
            pm = f"{pub['params_M']:.2f} M" if pub.get("params_M") is not None else "-"
            if pub.get("same_config", True):
                tag = "compare with paper above"
            else:
                kw = ", ".join(f"{k}={v}" for k, v in pub["kwargs"].items())
                tag = f"other configuration: batch 1, 3x{pub['size']}x{pub['size']}" + (f", {kw}" if kw else "")
            lines.append(f"published: {pub['gmacs']:.2f} G, {pm} at {pub['size']} ({pub['source']}) [{tag}]")
        if self.latency is not None:
            lines.append(f"latency: {self.latency.describe()}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float64": torch.float64, "fp64": torch.float64, "double": torch.float64}


def parse_dtype(dtype: Union[str, torch.dtype, None]) -> torch.dtype:
    """``"float32"``/``"bf16"``/... or a ``torch.dtype`` -> ``torch.dtype``."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16, float64")
    return _DTYPES[key]


def _input_shape(input_shape) -> Tuple[int, ...]:
    if isinstance(input_shape, torch.Tensor):
        return tuple(input_shape.shape)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be a tuple of positive ints like (1, 3, 256, 256), got {input_shape!r}")
    return shape


def _make_input(model: nn.Module, input_shape, device=None, dtype=None) -> torch.Tensor:
    if isinstance(input_shape, torch.Tensor):
        return input_shape
    ref = next(iter(model.parameters()), None)
    device = device if device is not None else (ref.device if ref is not None else "cpu")
    dtype = dtype if dtype is not None else (ref.dtype if ref is not None and ref.is_floating_point()
                                             else torch.float32)
    g = torch.Generator().manual_seed(0)
    return torch.randn(_input_shape(input_shape), generator=g).to(device=device, dtype=dtype)


def _tensors(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def _forward(model: nn.Module, x: torch.Tensor, what: str):
    try:
        return model(x)
    except (ValueError, RuntimeError) as e:
        name = getattr(model, "model_name", type(model).__name__)
        raise ValueError(f"cannot {what} {name} with an input of shape {tuple(x.shape)}: {e}") from e


# --------------------------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------------------------

def count_params(model: nn.Module, input_shape=None, used: bool = True) -> ParamCount:
    """Total and trainable parameters; with ``input_shape`` (e.g. ``(2, 3, 64, 64)``) also those the forward
    uses: a training-mode forward, ``sum`` of every output tensor, ``torch.autograd.grad(...,
    allow_unused=True)``; a parameter is *used* when its gradient is not ``None`` (a zero gradient, e.g. from a
    dropped path, still counts). Gradients already stored in ``.grad``, ``requires_grad`` flags, buffers
    (BatchNorm statistics) and the train/eval mode are left as they were."""
    params = list(model.named_parameters())
    total = sum(p.numel() for _, p in params)
    trainable = sum(p.numel() for _, p in params if p.requires_grad)
    if input_shape is None or not used:
        return ParamCount(total, trainable)
    x = _make_input(model, input_shape)
    flags = [p.requires_grad for _, p in params]
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    was_training = model.training
    fork = torch.random.fork_rng(devices=[]) if x.device.type == "cpu" else contextlib.nullcontext()
    try:
        with fork:
            torch.manual_seed(0)
            for _, p in params:
                p.requires_grad_(True)
            model.train()
            with torch.enable_grad():
                outs = [t for t in _tensors(_forward(model, x, "run a forward/backward of"))
                        if t.is_floating_point() and t.requires_grad]
                if not outs:
                    return ParamCount(total, trainable, 0, [n for n, _ in params])
                loss = sum(t.float().sum() for t in outs)
                grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    finally:
        for (_, p), f in zip(params, flags):
            p.requires_grad_(f)
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in buffers:
                    b.copy_(buffers[n])
        model.train(was_training)
    used_n = sum(p.numel() for (_, p), g in zip(params, grads) if g is not None)
    unused = [n for (n, _), g in zip(params, grads) if g is None]
    return ParamCount(total, trainable, used_n, unused)


# --------------------------------------------------------------------------------------------------------------
# paper convention: thop-0.1.1-compatible forward hooks
# --------------------------------------------------------------------------------------------------------------

def _conv_ops(m, x, y):
    return y.numel() * (x.shape[1] // m.groups) * math.prod(m.weight.shape[2:])


def _linear_ops(m, x, y):
    return m.in_features * y.numel()


def _norm_ops(m, x, y):
    ops = 2 * x.numel()
    if getattr(m, "affine", False) or getattr(m, "elementwise_affine", False):
        ops *= 2
    return ops


def _avgpool_ops(m, x, y):
    return y.numel()


def _adaptive_avgpool_ops(m, x, y):
    kernel = math.prod(i / o for i, o in zip(x.shape[2:], y.shape[2:]))
    return int((kernel + 1) * y.numel())


_UPSAMPLE_FACTOR = {"nearest": 1, "linear": 5, "bilinear": 11, "bicubic": 224 + 35, "trilinear": 13 * 2 + 5}


def _upsample_ops(m, x, y):
    return _UPSAMPLE_FACTOR.get(getattr(m, "mode", "nearest"), 0) * y.numel()


def _softmax_ops(m, x, y):
    dim = m.dim if m.dim is not None else -1
    n = x.shape[dim] if x.dim() else 1
    return (x.numel() // max(n, 1)) * (3 * n - 1)


def _prelu_ops(m, x, y):
    return x.numel()


def _zero_ops(m, x, y):
    return 0


# (class, rule, is_gemm). Order does not matter: the nearest class in a module's MRO decides.
_PAPER_RULES = [
    (nn.modules.conv._ConvNd, _conv_ops, True),
    (nn.Linear, _linear_ops, True),
    (nn.modules.batchnorm._BatchNorm, _norm_ops, False),
    (nn.modules.instancenorm._InstanceNorm, _norm_ops, False),
    (nn.LayerNorm, _norm_ops, False),
    (nn.modules.pooling._AvgPoolNd, _avgpool_ops, False),
    (nn.modules.pooling._AdaptiveAvgPoolNd, _adaptive_avgpool_ops, False),
    (nn.Upsample, _upsample_ops, False),
    (nn.Softmax, _softmax_ops, False),
    (nn.PReLU, _prelu_ops, False),
    # zero-op modules thop registers (they have no parameters, so listing them changes nothing but clarity)
    (nn.ReLU, _zero_ops, False), (nn.ReLU6, _zero_ops, False), (nn.LeakyReLU, _zero_ops, False),
    (nn.modules.pooling._MaxPoolNd, _zero_ops, False), (nn.modules.pooling._AdaptiveMaxPoolNd, _zero_ops, False),
    (nn.modules.dropout._DropoutNd, _zero_ops, False), (nn.ZeroPad2d, _zero_ops, False),
    (nn.PixelShuffle, _zero_ops, False),
]
_RULE_BY_CLASS = {c: (r, g) for c, r, g in _PAPER_RULES}


def _paper_rule(m: nn.Module):
    for cls in type(m).__mro__:
        if cls in _RULE_BY_CLASS:
            return _RULE_BY_CLASS[cls]
    return None


class _PaperCounter:
    """Forward hooks on every module with a thop rule; accumulates per-module ops (a module run twice counts
    twice) and remembers which modules ran (their parameters are thop's parameter count)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.gemm_ops = 0
        self.other_ops = 0
        self.convt_excess = 0
        self.ran: Dict[int, nn.Module] = {}
        self.handles = []

    def __enter__(self):
        for m in self.model.modules():
            rule = _paper_rule(m)
            if rule is not None:
                self.handles.append(m.register_forward_hook(self._hook(m, *rule)))
        return self

    def _hook(self, m, rule, is_gemm):
        def hook(mod, inputs, output):
            x = inputs[0] if inputs else None
            y = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                return
            ops = int(rule(mod, x, y))
            if isinstance(mod, nn.modules.conv._ConvTransposeNd):
                # thop's y.numel * C_in * k formula vs the real x.numel * (C_out / groups) * k
                self.convt_excess += ops - x.numel() * mod.weight.shape[1] * math.prod(mod.weight.shape[2:])
            if is_gemm:
                self.gemm_ops += ops
            else:
                self.other_ops += ops
            self.ran[id(mod)] = mod
        return hook

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()

    @property
    def params(self) -> int:
        return sum(p.numel() for m in self.ran.values() for p in m.parameters())


# --------------------------------------------------------------------------------------------------------------
# full convention: FlopCounterMode + analytic scan + analytic attention
# --------------------------------------------------------------------------------------------------------------

class _AttentionCounter(torch.overrides.TorchFunctionMode):
    """Counts ``F.scaled_dot_product_attention`` analytically and measures what FlopCounterMode attributes to it
    (so it can be subtracted). Every other torch function passes through untouched."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter
        self.macs = 0
        self.excluded_flops = 0
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q = args[0] if len(args) > 0 else kwargs["query"]
            k = args[1] if len(args) > 1 else kwargs["key"]
            v = args[2] if len(args) > 2 else kwargs["value"]
            bh = math.prod(q.shape[:-2])
            self.macs += bh * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
            self.calls += 1
            before = self.counter.get_total_flops()
            out = func(*args, **kwargs)
            self.excluded_flops += self.counter.get_total_flops() - before
            return out
        return func(*args, **kwargs)


def _scan_stand_in(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Zeros shaped like the scan's output: FLOPs do not depend on the scan's values, and the scan is counted
    analytically, so a counting pass need not spend seconds computing it."""
    out = torch.zeros_like(u)
    if return_last_state:
        ct = torch.float64 if u.dtype == torch.float64 else torch.float32
        return out, torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=ct, device=u.device)
    return out


@contextlib.contextmanager
def _isolate_scan(counter=None, run_scan: bool = False):
    """Not thread-safe: scans run by other threads meanwhile go through the same wrappers.

    While active, every selective-scan backend either runs for real with the FlopCounterMode FLOPs it
    causes accumulated in the yielded one-element list (``run_scan=True``; the caller subtracts them, the scan
    being counted analytically), or is replaced by a zero-cost stand-in returning zeros of the right shape
    (``run_scan=False``, the default of ``count_flops``: identical counts, no time spent in the scan).

    Implementation: ``mambaseg.ops.intercept_scans`` wraps the backend function of every scan call made
    inside the block (after the input checks and after ``record_scans`` has seen the call). This is exact for
    every backend (the reference and blocked torch scans use einsum/bmm internally; the C kernel none) and
    needs one forward only."""

    excluded = [0]

    def wrap(fn):
        if not run_scan:
            return _scan_stand_in

        def wrapped(*args, **kwargs):
            before = counter.get_total_flops() if counter is not None else 0
            try:
                return fn(*args, **kwargs)
            finally:
                if counter is not None:
                    excluded[0] += counter.get_total_flops() - before
        return wrapped

    with intercept_scans(wrap):
        yield excluded


def count_flops(model: nn.Module, input_shape, conventions: Sequence[str] = CONVENTIONS,
                device=None, dtype=None, run_scan: bool = False) -> Dict[str, FlopCount]:
    """Count operations of one eval-mode forward of ``model`` on a random input of ``input_shape``
    (e.g. ``(1, 3, 256, 256)``, or pass a tensor), in the named conventions (``"paper"``, ``"full"``; see the
    module docstring). Both conventions come from the same single forward pass under ``torch.no_grad()``.
    ``run_scan=False`` (default) replaces the selective scan by a stand-in returning zeros during that pass
    (counts do not depend on values, and the scan is counted analytically from its shapes); ``run_scan=True``
    runs the real backend and subtracts whatever FlopCounterMode attributes to it -- the counts are identical.

    Returns ``{convention: FlopCount}``. The model's train/eval mode is restored afterwards."""
    conventions = tuple(conventions)
    bad = [c for c in conventions if c not in CONVENTIONS]
    if bad:
        raise ValueError(f"unknown FLOP convention(s) {bad}; choose from {list(CONVENTIONS)}")
    from torch.utils.flop_counter import FlopCounterMode

    x = _make_input(model, input_shape, device, dtype)
    was_training = model.training
    model.eval()
    want_full = "full" in conventions
    try:
        with torch.no_grad(), _PaperCounter(model) as paper, record_scans() as scans:
            if want_full:
                fcm = FlopCounterMode(display=False)
                attn = _AttentionCounter(fcm)
                with fcm, _isolate_scan(fcm, run_scan) as scan_excl, attn:
                    _forward(model, x, "count the FLOPs of")
                total_fcm = fcm.get_total_flops()
            else:
                with _isolate_scan(None, run_scan):
                    _forward(model, x, "count the FLOPs of")
    finally:
        model.train(was_training)

    result: Dict[str, FlopCount] = {}
    if "paper" in conventions:
        macs = paper.gemm_ops + paper.other_ops
        result["paper"] = FlopCount(
            "paper", macs=macs, flops=2 * macs,
            parts={"linear_conv_macs": paper.gemm_ops, "norm_pool_other_ops": paper.other_ops,
                   "convtranspose_excess_macs": paper.convt_excess},
            params=paper.params,
            label="paper G (thop MACs, printed as 'FLOPs' in the papers); flops = 2 x that",
            notes=([f"leaves out the selective scan ({len(scans)} calls), einsum/functional ops and attention"]
                   if scans else []) +
                  ([f"counts ConvTranspose at y.numel*C_in*k (thop): {paper.convt_excess / 1e9:.3f} G more than "
                    f"they compute"] if paper.convt_excess else []))
    if want_full:
        notes = []
        excl = 0
        if scan_excl is None:
            notes.append("could not isolate the scan backends from FlopCounterMode: any matmul inside the scan "
                         "is counted in gemm as well as in scan")
        else:
            excl = scan_excl[0]
        gemm_flops = total_fcm - excl - attn.excluded_flops
        gemm_macs = gemm_flops // 2
        scan_flops = sum(c.flops for c in scans)
        attn_macs = attn.macs
        other = paper.other_ops
        macs = gemm_macs + attn_macs + scan_flops // 2 + other
        flops = 2 * gemm_macs + 2 * attn_macs + scan_flops + other
        if attn.calls:
            notes.append(f"{attn.calls} scaled_dot_product_attention calls counted analytically")
        result["full"] = FlopCount(
            "full", macs=macs, flops=flops,
            parts={"gemm_macs": gemm_macs, "scan_flops": scan_flops, "attention_macs": attn_macs,
                   "other_ops": other, "scan_calls": len(scans), "excluded_scan_counter_flops": excl},
            label="full GMAC / GFLOP (matmul/conv/einsum + selective scan 9BLDN + attention + norms)",
            notes=notes)
    return result


# --------------------------------------------------------------------------------------------------------------
# latency
# --------------------------------------------------------------------------------------------------------------

def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model: nn.Module, input_shape, device="cpu", dtype="float32", warmup: int = 3,
                    repeats: int = 10) -> Latency:
    """Median latency of an inference forward (``torch.inference_mode``, eval mode) on a random input.

    The model is moved to ``device`` (and cast to ``dtype`` for float32/float64) **in place**
    (``profile_model`` passes a copy); ``float16``/``bfloat16`` run under ``torch.autocast``. Reports median,
    quartiles, min, max and everything needed to read the number: device, dtype, batch, input shape, scan
    backend, CPU threads."""

    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r}: use 'cpu' or 'cuda' (or 'cuda:N')") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False; use --device cpu")
    dt = parse_dtype(dtype)
    shape = _input_shape(input_shape)
    # float32/float64: the model is cast. float16/bfloat16: autocast (weights stay float32, matmuls and convs
    # run in low precision, norms and the scan in float32) -- how these models are run in mixed precision;
    # casting every weight breaks the float32 islands they keep on purpose (LayerNorm after the fp32 scan).
    low = dt in (torch.float16, torch.bfloat16)
    model.to(device=device, dtype=torch.float32 if low else dt)
    model.eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device=device,
                                                                         dtype=torch.float32 if low else dt)
    amp = torch.autocast(device_type=device.type, dtype=dt) if low else contextlib.nullcontext()
    try:
        backend = resolve_backend(None, device)
    except Exception as e:  # report rather than fail: the forward below will raise its own error
        backend = f"unavailable ({e})"
    times = []
    with torch.inference_mode(), amp:
        for _ in range(warmup):
            _forward(model, x, "time")
        _sync(device)
        for _ in range(repeats):
            t0 = time.perf_counter()
            _forward(model, x, "time")
            _sync(device)
            times.append(time.perf_counter() - t0)
    s = sorted(times)
    if len(s) >= 2:
        q = statistics.quantiles(s, n=4, method="inclusive")
        q25, q75 = q[0], q[2]
    else:
        q25 = q75 = s[0]
    dname = str(dt).replace("torch.", "") + (" (autocast)" if low else "")
    return Latency(device=str(device), dtype=dname, batch=shape[0], input_shape=shape,
                   scan_backend=backend, threads=torch.get_num_threads(), warmup=warmup, repeats=repeats,
                   times_s=times, median_s=statistics.median(s), q25_s=q25, q75_s=q75, min_s=s[0], max_s=s[-1])


# --------------------------------------------------------------------------------------------------------------
# one call for everything
# --------------------------------------------------------------------------------------------------------------

def _build(name_or_model, in_channels, num_classes, model_kwargs):
    if isinstance(name_or_model, nn.Module):
        if model_kwargs:
            raise ValueError("model_kwargs only apply to a registered model name, not to a module")
        return (name_or_model, getattr(name_or_model, "model_name", type(name_or_model).__name__), None,
                _guess_in_channels(name_or_model, in_channels), num_classes)
    info = model_info(name_or_model)  # clear error for unknown names
    kw = dict(model_kwargs or {})
    in_channels = kw.pop("in_channels", in_channels)
    num_classes = kw.pop("num_classes", num_classes)
    model = create_model(name_or_model, in_channels=in_channels, num_classes=num_classes, **kw)
    return model, name_or_model, info, in_channels, num_classes


def profile_model(name_or_model: Union[str, nn.Module], size: Union[int, Sequence[int], None] = None, batch: int = 1,
                  device="cpu", dtype="float32", in_channels: int = 3, num_classes: int = 1,
                  conventions: Sequence[str] = CONVENTIONS, used_params: bool = True, used_size: int = 64,
                  latency: bool = True, warmup: int = 3, repeats: int = 10,
                  model_kwargs: Optional[dict] = None) -> Profile:
    """Parameters, FLOPs in each convention and (optionally) latency of a registered model or a module.

    Args:
        name_or_model: a registered name (``mambaseg models``) or an ``nn.Module``.
        size: input side (a square image, or a cube for models with ``spatial_dims == 3``), or one size per
            spatial axis ((H, W), or (D, H, W) for a 3-D model); default: the model's registered ``default_size``
            (256 if unknown).
        batch: batch size for FLOPs and latency (FLOPs scale linearly with it).
        device, dtype: where and in which precision latency is measured (on a copy of the model). Counting
            parameters and FLOPs does not depend on them; it runs in float32 on CPU (on a copy if the model
            lives elsewhere).
        in_channels, num_classes: passed to ``create_model`` (the papers profile 3-channel inputs).
        conventions: any of ``("paper", "full")``.
        used_params: also measure the parameters that get a gradient (one forward/backward at ``used_size``,
            batch 2; at most 32 for a 3-D network).
        latency: time ``repeats`` forwards after ``warmup`` ones.
        model_kwargs: extra constructor arguments (e.g. ``depths``).
    """
    model, name, info, in_ch, n_cls = _build(name_or_model, in_channels, num_classes, model_kwargs)
    if size is None:
        size = info.default_size if info is not None else 256
    nd = int(getattr(model, "spatial_dims", 2))           # 3-D networks get a (size, size, size) volume
    sizes = tuple(int(v) for v in size) if isinstance(size, (tuple, list)) else (int(size),)
    if len(sizes) == 1:
        sizes = sizes * nd
    elif len(sizes) != nd:
        raise ValueError(f"size {' '.join(map(str, sizes))}: {name} is a {nd}-D network; give one size (a "
                         f"{'cube' if nd == 3 else 'square'}) or {nd} sizes, one per axis")
    if batch < 1 or min(sizes) < 1:
        raise ValueError(f"batch and size must be positive, got batch={batch}, size={size}")
    shape = (batch, in_ch) + sizes
    size = sizes[0] if len(set(sizes)) == 1 else sizes   # a square / cube keeps its one number (published rows)
    ref = next(iter(model.parameters()), None)
    counting_model = model
    if ref is not None and (ref.device.type != "cpu" or ref.dtype != torch.float32):
        counting_model = copy.deepcopy(model).to("cpu", torch.float32)
    params = None
    if nd == 3:
        used_size = min(used_size, 32)                   # a 32^3 volume is enough, and cheap, for a 3-D network
    if used_params and used_size < min(sizes):
        try:  # a small input is enough to see which parameters the forward touches ...
            params = count_params(counting_model, (2, in_ch) + (used_size,) * nd)
        except ValueError:  # ... unless the model only takes its own size
            params = None
    if params is None:
        # a 3-D network that only takes its own size: no batch-2 backward at full size (volumes are large)
        used_params = used_params and nd == 2
        params = count_params(counting_model, (2, in_ch) + sizes if used_params else None, used=used_params)
    flops = count_flops(counting_model, shape, conventions) if conventions else {}
    full = flops.get("full")
    lat = None
    if latency:
        lat_model = copy.deepcopy(model)
        lat = measure_latency(lat_model, shape, device=device, dtype=dtype, warmup=warmup, repeats=repeats)
        del lat_model
    published = []
    if isinstance(name_or_model, str):
        kw = {k: v for k, v in (model_kwargs or {}).items() if k not in ("num_classes", "in_channels")}
        if n_cls != 1:
            kw["num_classes"] = n_cls
        for pub in PUBLISHED.get(name, []):
            same = pub["size"] == size and dict(pub["kwargs"]) == kw and batch == 1 and in_ch == 3
            published.append(dict(pub, same_config=same))
    return Profile(model=name, input_shape=shape, params=params, flops=flops, latency=lat,
                   scan_calls=full.parts.get("scan_calls", 0) if full else 0, published=published)


def _guess_in_channels(model: nn.Module, default: int) -> int:
    if isinstance(model, SegmentationNetwork):  # the model contract names it
        return model.in_channels
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return m.in_channels
    return default


def _fmt_m(n: Optional[float], scale: float, digits: int = 2) -> str:
    return "-" if n is None else f"{n / scale:.{digits}f}"


def profile_table(names: Optional[Iterable[str]] = None, size: Optional[int] = None, batch: int = 1,
                  device="cpu", dtype="float32", latency: bool = False, used_params: bool = True,
                  warmup: int = 2, repeats: int = 5, num_classes: int = 1, in_channels: int = 3) -> str:
    """One row per model (default: every registered model): params (total / used / thop), ``paper`` G (thop
    MACs), ``full`` GMAC and GFLOP with the scan's share, and optionally latency. ``size=None`` uses each model's
    registered default size. A model that fails to build or run gets a row saying why instead of aborting."""
    names = list(names) if names is not None else list_models()
    header = ["model", "size", "params M", "used M", "thop params M", "paper G (thop MACs)", "full GMAC",
              "full GFLOP", "scan GFLOP"]
    if latency:
        header += ["latency ms (median)", "img/s"]
    rows = []
    overcounted = []
    for n in names:
        try:
            p = profile_model(n, size=size, batch=batch, device=device, dtype=dtype, latency=latency,
                              used_params=used_params, warmup=warmup, repeats=repeats, num_classes=num_classes,
                              in_channels=in_channels)
        except Exception as e:  # one broken model must not hide the others
            rows.append([n, "-", f"error: {type(e).__name__}: {e}"[:120]] + [""] * (len(header) - 3))
            continue
        pa, fu = p.flops.get("paper"), p.flops.get("full")
        if pa is not None and pa.parts.get("convtranspose_excess_macs"):
            overcounted.append(n)
        row = [n, str(p.input_shape[-1]), _fmt_m(p.params.total, 1e6), _fmt_m(p.params.used, 1e6),
               _fmt_m(pa.params if pa else None, 1e6), _fmt_m(pa.macs if pa else None, 1e9, 3),
               _fmt_m(fu.macs if fu else None, 1e9, 3), _fmt_m(fu.flops if fu else None, 1e9, 3),
               _fmt_m(fu.parts["scan_flops"] if fu else None, 1e9, 3)]
        if latency:
            row += [f"{p.latency.median_s * 1e3:.1f}", f"{p.latency.fps:.2f}"]
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths)), "-+-".join("-" * w for w in widths)]
    for r in rows:
        out.append(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    foot = (f"batch {batch}, 3-channel input; paper = thop-compatible count (registered Linear/Conv/Norm "
            f"modules, MACs, what the papers print); full = every matmul/conv/einsum (FlopCounterMode) + "
            f"selective scan (9*B*L*D*N FLOPs) + attention + norms")
    if overcounted:
        foot += (f"; paper counts ConvTranspose at thop's y.numel*C_in*k (stride^2 x its real cost) in: "
                 f"{', '.join(overcounted)}")
    if latency:
        try:
            be = resolve_backend(None, device)
        except Exception as e:
            be = f"unavailable ({e})"
        foot += f"; latency on {device}, {dtype}, scan backend {be}, {torch.get_num_threads()} threads"
    out.append(foot)
    return "\n".join(out)
