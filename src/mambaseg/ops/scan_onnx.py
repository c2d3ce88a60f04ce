"""Selective scan for ONNX export: a chunked sequential recurrence that becomes one stock-ONNX ``Scan`` node.

The selective scan has no ONNX operator. This module gives a function with ``selective_scan``'s signature that
the ONNX exporter (``mambaseg.export.to_onnx``) routes every scan through (``intercept_scans``). It is written so
that the exported graph

* uses only standard ONNX operators (opset 17), so any ONNX runtime runs it (no custom-op library);
* never forms ``exp`` of a cumulative sum (the fp32 overflow trap of chunked "rescaled" scans): the only
  exponentials are ``exp(delta_t * A) <= 1`` (``delta >= 0`` after the softplus, ``A < 0``), multiplied step by
  step, exactly the recurrence of the reference ``x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t``;
* never materialises a (b, d, l, n) tensor: the time axis is cut into ``K = ceil(l / T)`` chunks of ``T`` steps
  (zero-padded: a padded step has ``delta = 0``, so ``exp(0) = 1`` and no input: the state passes unchanged).
  One ONNX ``Scan`` iterates over the chunks carrying the state (b, g, n, h); its body computes the chunk's
  ``exp(delta A)`` and ``delta B u`` (T, b, g, n, h) in vectorised ops, runs the T steps unrolled (one ``Mul``
  and one ``Add`` each), and contracts the T states with C.

Everything around the recurrence (bias, softplus, ``delta * u``, padding, the chunked time-major layout, the D
skip and the z gate) is ordinary PyTorch that the exporter traces. In PyTorch (outside export) the placeholder
runs the same chunked recurrence eagerly, so ``selective_scan_onnx`` is also testable against the reference
without onnxruntime.

Shapes as ``selective_scan``: u, delta (b, d, l); A (d, n); B, C (b, n, l) or grouped (b, g, n, l); D,
delta_bias (d,); z (b, d, l). ``return_last_state`` is not supported (no network uses it).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_onnx", "DEFAULT_CHUNK", "OP_DOMAIN", "OP_TYPE", "expand_scan_nodes"]

DEFAULT_CHUNK = 16
OP_DOMAIN = "mambaseg"
OP_TYPE = "ChunkedSelectiveScan"


def _eager_recurrence(dt, du, A3, Bm, Cm, x0):
    """Reference semantics of the placeholder: dt, du (K, T, b, g, 1, h); A3 (g, n, h); Bm, Cm (K, T, b, g, n, 1);
    x0 (1, b, g, n, h) -> y (K, T, b, g, h). The channel axis h is innermost so that every broadcast in the
    exported graph runs over contiguous spans of h."""
    x = x0
    ys = []
    for k in range(dt.shape[0]):
        dA = torch.exp(dt[k] * A3)
        dBu = du[k] * Bm[k]
        hs = []
        for t in range(dt.shape[1]):
            x = dA[t:t + 1] * x + dBu[t:t + 1]
            hs.append(x)
        ys.append((torch.cat(hs, 0) * Cm[k]).sum(-2))
    return torch.stack(ys, 0)


class _ChunkedScan(torch.autograd.Function):
    """Placeholder: eager = the chunked recurrence; ONNX = one ``mambaseg::ChunkedSelectiveScan`` node that
    :func:`expand_scan_nodes` replaces by a standard ``Scan``."""

    @staticmethod
    def forward(ctx, dt, du, A3, Bm, Cm, x0):
        if torch.jit.is_tracing():   # exporting: only the shape matters, the node is replaced by a Scan
            return dt.new_zeros(tuple(dt.shape[:4]) + (dt.shape[5],))
        return _eager_recurrence(dt, du, A3, Bm, Cm, x0)

    @staticmethod
    def symbolic(g, dt, du, A3, Bm, Cm, x0):
        out = g.op(f"{OP_DOMAIN}::{OP_TYPE}", dt, du, A3, Bm, Cm, x0)
        out.setType(dt.type().with_sizes(None) if hasattr(dt.type(), "with_sizes") else dt.type())
        return out


def selective_scan_onnx(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        return_last_state=False, chunk: Optional[int] = None):
    """``selective_scan`` written for ONNX export (see the module docstring). ``chunk``: steps per Scan
    iteration (default 16)."""
    if return_last_state:
        raise NotImplementedError("selective_scan_onnx: return_last_state is not supported in ONNX export")
    T = int(chunk or DEFAULT_CHUNK)
    out_dtype = u.dtype
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = u.to(ct), delta.to(ct), A.to(ct), B.to(ct), C.to(ct)
    # static ints (the exported graph is built for fixed H, W; only the batch axis is dynamic)
    d, l, n = int(u.shape[1]), int(u.shape[2]), int(A.shape[1])
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    g = int(B.shape[1])
    h = d // g
    K = -(-l // T)
    pad = K * T - l
    du = delta * u
    if pad:
        delta, du = F.pad(delta, (0, pad)), F.pad(du, (0, pad))
        B, C = F.pad(B, (0, pad)), F.pad(C, (0, pad))
    # time-major, chunked: (b, g, h, K, T) -> (K, T, b, g, 1, h); B, C: (b, g, n, K, T) -> (K, T, b, g, n, 1)
    dt = delta.reshape(-1, g, h, K, T).permute(3, 4, 0, 1, 2).unsqueeze(-2)
    du = du.reshape(-1, g, h, K, T).permute(3, 4, 0, 1, 2).unsqueeze(-2)
    Bm = B.reshape(-1, g, n, K, T).permute(3, 4, 0, 1, 2).unsqueeze(-1)
    Cm = C.reshape(-1, g, n, K, T).permute(3, 4, 0, 1, 2).unsqueeze(-1)
    A3 = A.reshape(g, h, n).transpose(1, 2)
    x0 = torch.zeros_like(dt[0, :1]) * Bm[0, :1]                      # (1, b, g, n, h) zeros, batch follows u
    y = _ChunkedScan.apply(dt, du, A3, Bm, Cm, x0)                    # (K, T, b, g, h)
    y = y.reshape(K * T, -1, d).permute(1, 2, 0)
    if pad:
        y = y[:, :, :l]
    if D is not None:
        y = y + u * D.to(ct)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(out_dtype)


def _scan_body(chunk: int, a_name: str, tag: str):
    """The ONNX ``Scan`` body graph for one chunk of ``chunk`` steps (A read from the outer scope). The chunk's
    small per-step inputs are split once; each step then does exp(dt_t A), the state update and its output
    y_t = sum_n C_t x_t on (b, g, n, h) tensors, so no (T, b, g, n, h) tensor is formed or copied."""
    from onnx import TensorProto, helper
    p = f"{tag}_"
    x_in, dt, du, bm, cm = (p + s for s in ("x_in", "dt", "du", "bm", "cm"))
    nodes = [helper.make_node("Split", [src, p + "ones"], [f"{p}{src[len(p):]}{t}" for t in range(chunk)], axis=0)
             for src in (dt, du, bm, cm)]
    ones = helper.make_tensor(p + "ones", TensorProto.INT64, [chunk], [1] * chunk)
    prev = x_in
    for t in range(chunk):
        q = f"{p}s{t}_"
        nodes += [
            helper.make_node("Mul", [f"{p}dt{t}", a_name], [q + "dtA"]),
            helper.make_node("Exp", [q + "dtA"], [q + "dA"]),
            helper.make_node("Mul", [q + "dA", prev], [q + "m"]),
            helper.make_node("Mul", [f"{p}du{t}", f"{p}bm{t}"], [q + "dBu"]),
            helper.make_node("Add", [q + "m", q + "dBu"], [q + "x"]),
            helper.make_node("Mul", [q + "x", f"{p}cm{t}"], [q + "xc"]),
            helper.make_node("ReduceSum", [q + "xc", p + "axis"], [q + "y"], keepdims=0),
        ]
        prev = q + "x"
    nodes += [
        helper.make_node("Identity", [prev], [p + "x_out"]),
        helper.make_node("Concat", [f"{p}s{t}_y" for t in range(chunk)], [p + "y"], axis=0),
    ]
    axis = helper.make_tensor(p + "axis", TensorProto.INT64, [1], [-2])
    f = TensorProto.FLOAT
    vi = lambda name: helper.make_tensor_value_info(name, f, None)  # noqa: E731
    return helper.make_graph(nodes, f"{tag}_body", [vi(x_in), vi(dt), vi(du), vi(bm), vi(cm)],
                             [vi(p + "x_out"), vi(p + "y")], initializer=[ones, axis])


def expand_scan_nodes(model_proto, chunk: Optional[int] = None) -> int:
    """Replace every ``mambaseg::ChunkedSelectiveScan`` placeholder in ``model_proto`` (in place) by a standard
    ONNX ``Scan`` over the chunks; drop the custom opset import. Returns the number of nodes replaced."""
    from onnx import helper
    T = int(chunk or DEFAULT_CHUNK)
    graph = model_proto.graph
    new_nodes, count = [], 0
    replaced_outputs = set()
    for node in graph.node:
        if node.domain == OP_DOMAIN and node.op_type == OP_TYPE:
            dt, du, a3, bm, cm, x0 = node.input
            tag = f"mss{count}"
            body = _scan_body(T, a3, tag)
            new_nodes.append(helper.make_node("Scan", [x0, dt, du, bm, cm], [f"{tag}_state", node.output[0]],
                                              name=f"selective_scan_{count}", num_scan_inputs=4, body=body))
            replaced_outputs.add(node.output[0])
            count += 1
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    keep = [v for v in graph.value_info if v.name not in replaced_outputs]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    keep_ops = [o for o in model_proto.opset_import if o.domain != OP_DOMAIN]
    del model_proto.opset_import[:]
    model_proto.opset_import.extend(keep_ops)
    return count
