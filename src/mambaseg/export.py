"""Export trained networks: ONNX graphs that onnxruntime runs, and pretrained folders.

``to_onnx(model, path, size=...)`` writes an ONNX model (opset 17, standard operators only) with input ``image``
(batch, C, H, W) and output ``logits`` (batch, num_classes, H, W), or ``probabilities`` (sigmoid for one output
channel, softmax otherwise) with ``output="probabilities"``; the batch axis is dynamic, H and W are fixed at
``size``. Every selective scan is exported through :func:`mambaseg.ops.scan_onnx.selective_scan_onnx`: one
standard ONNX ``Scan`` over chunks of ``chunk`` time steps, numerically the same recurrence as the reference
(no exp of a cumulative sum, so no fp32 overflow for any dt).

Needs the optional extra: ``pip install 'mambaseg[export]'`` (onnx, onnxruntime).
"""

from __future__ import annotations

import functools
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

__all__ = ["to_onnx", "onnx_session", "run_onnx", "ExportError", "checkpoint_to_folder", "read_training_checkpoint",
           "model_card"]


class ExportError(ValueError):
    """Bad export request (the message names the problem and the fix)."""


def _require_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'mambaseg[export]' "
                          "(onnx, onnxruntime)") from None


class _Probabilities(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        y = self.net(x)
        return torch.sigmoid(y) if y.shape[1] == 1 else torch.softmax(y, dim=1)


def _size2(size, spatial_dims: int = 2) -> Tuple[int, ...]:
    """The spatial input size: (H, W), or (D, H, W) for a 3-D network (``spatial_dims=3``)."""
    if isinstance(size, int):
        return (size,) * spatial_dims
    if isinstance(size, (tuple, list)) and len(size) == spatial_dims:
        return tuple(int(s) for s in size)
    raise ExportError(f"size must be an int or {'(D, H, W)' if spatial_dims == 3 else '(H, W)'}, got {size!r}")


def to_onnx(model: nn.Module, path: Union[str, os.PathLike], size=None, in_channels: Optional[int] = None,
            output: str = "logits", opset: int = 17, chunk: Optional[int] = None, dynamic_batch: bool = True,
            overwrite: bool = False, check: bool = True) -> Dict[str, Any]:
    """Export ``model`` to ONNX at ``path``. ``size``: H (or (H, W)) of the input; default the model's
    ``img_size`` or its registry ``default_size``. ``in_channels``: default ``model.in_channels``. ``chunk``:
    scan steps per ONNX ``Scan`` iteration (default 16). Returns ``{"path", "nodes", "scan_nodes", "bytes",
    "export_seconds", "input_shape"}``."""
    _require_onnx()
    import onnx

    from mambaseg.ops import intercept_scans
    from mambaseg.ops.scan_onnx import expand_scan_nodes, selective_scan_onnx
    if output not in ("logits", "probabilities"):
        raise ExportError(f"output must be 'logits' or 'probabilities', got {output!r}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another --out or remove it (nothing is overwritten)")
    spatial_dims = int(getattr(model, "spatial_dims", 2) or 2)
    if size is None:
        size = getattr(model, "img_size", None)
        if size is None and spatial_dims == 3:
            size = tuple(model.default_input_size)
        if size is None:
            from mambaseg.models import model_info
            name = getattr(model, "model_name", None)
            size = model_info(name).default_size if name else 256
    spatial = _size2(size, spatial_dims)
    c = int(in_channels or getattr(model, "in_channels", 3))
    x = torch.zeros(1, c, *spatial)
    was_training = model.training
    net = model.eval()
    wrapped = _Probabilities(net) if output == "probabilities" else net
    try:
        with torch.no_grad():
            wrapped(x)                                              # fail here with the model's own message
    except ValueError as e:
        raise ExportError(f"cannot export at input {c}x{'x'.join(map(str, spatial))}: {e}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    t0 = time.perf_counter()
    try:
        scan = functools.partial(selective_scan_onnx, chunk=chunk)
        with torch.no_grad(), intercept_scans(lambda fn: scan), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["image"],
                              output_names=[output], do_constant_folding=True,
                              dynamic_axes={"image": {0: "batch"}, output: {0: "batch"}} if dynamic_batch else None,
                              custom_opsets={"mambaseg": 1})
        proto = onnx.load(str(tmp))
        n_scan = expand_scan_nodes(proto, chunk)
        proto.producer_name = "mambaseg"
        name = getattr(model, "model_name", type(model).__name__)
        onnx.helper.set_model_props(proto, {"architecture": str(name), "output": output,
                                            "input_size": "x".join(map(str, spatial)), "in_channels": str(c)})
        if check:
            onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        model.train(was_training)
    secs = time.perf_counter() - t0
    return {"path": str(path), "nodes": _count_nodes(proto.graph), "scan_nodes": n_scan,
            "bytes": path.stat().st_size, "export_seconds": secs, "input_shape": [c, *spatial]}


def _count_nodes(graph) -> int:
    n = 0
    for node in graph.node:
        n += 1
        for a in node.attribute:
            if a.type == a.GRAPH:
                n += _count_nodes(a.g)
    return n


def onnx_session(path: Union[str, os.PathLike], threads: Optional[int] = None):
    """An onnxruntime CPU ``InferenceSession`` (``threads``: intra-op threads, default onnxruntime's)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("running ONNX models needs onnxruntime: pip install 'mambaseg[export]'") from None
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_onnx(session, x) -> "numpy.ndarray":  # noqa: F821
    """Run a session on one batch (torch tensor or numpy array, float32); returns the first output."""
    import numpy as np
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    name = session.get_inputs()[0].name
    return session.run(None, {name: arr.astype(np.float32, copy=False)})[0]


# ---------------------------------------------------------------------------------------------------------------
# training checkpoint -> network / pretrained folder
def read_training_checkpoint(ckpt: Union[str, os.PathLike]) -> Dict[str, Any]:
    """A ``mambaseg fit`` checkpoint as plain data (``torch.load(weights_only=True)``: nothing is unpickled)."""
    p = Path(ckpt)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist (expected RUN/checkpoints/best.ckpt)")
    from mambaseg.engine.io import check_mambaseg_checkpoint, load_checkpoint
    data = load_checkpoint(str(p))          # weights_only=True; one clear line for a foreign / broken file
    check_mambaseg_checkpoint(data, str(p))
    if "hyper_parameters" not in data:
        raise ExportError(f"{str(p)!r} is not a mambaseg training checkpoint (no hyper_parameters)")
    return data


def network_from_checkpoint(data: Dict[str, Any]) -> nn.Module:
    """The network (``create_model``) of a training checkpoint with its weights, eval mode."""
    from mambaseg.models import create_model
    hp = dict(data["hyper_parameters"])
    out_ch = 1 if int(hp.get("num_classes", 2)) == 2 else int(hp["num_classes"])
    net = create_model(hp.get("model", "unet"), in_channels=int(hp.get("in_channels", 3)), num_classes=out_ch,
                       **dict(hp.get("model_kwargs") or {}))
    sd = {k[len("net."):]: v for k, v in data["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(sd, strict=True)
    return net.eval()


def _class_names(hp: Dict[str, Any], dm: Dict[str, Any]) -> Optional[Sequence[str]]:
    names = hp.get("class_names") or (dm or {}).get("class_names")
    if names:
        return list(names)
    return dataset_class_names((dm or {}).get("dataset"), int(hp.get("num_classes", 2)))


def dataset_class_names(dataset: Optional[str], num_classes: int) -> Optional[list]:
    """Label names (background first) of the shipped data readers, or None when unknown."""
    from mambaseg.data.acdc import ACDC_CLASSES
    from mambaseg.data.synapse import SYNAPSE_CLASSES
    table = {"acdc": ACDC_CLASSES, "synthetic-cardiac": ACDC_CLASSES, "synapse": SYNAPSE_CLASSES,
             "isic": ["background", "lesion"], "synthetic-skin": ["background", "lesion"],
             "polyp": ["background", "polyp"], "synthetic-polyp": ["background", "polyp"]}
    names = table.get(str(dataset or "").lower())
    return list(names) if names and len(names) == num_classes else None


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def model_card(name: str, hp: Dict[str, Any], dm: Dict[str, Any], run_dir: Optional[Path], ckpt: str,
               class_names: Sequence[str]) -> str:
    """``README.md`` of an exported folder: data set, recipe, test metrics (with aggregation and HD95 mode),
    and the commands that reproduce them."""
    import json
    dm = dm or {}
    lines = [f"# {name} (mambaseg)", "",
             f"Segmentation network `{name}` trained with mambaseg; exported from `{ckpt}`.", "",
             "## Use", "", "```python", "from mambaseg.models import from_pretrained",
             "model = from_pretrained('THIS_FOLDER')   # logits (B, C, H, W)", "```", "",
             "```bash", "mambaseg predict --ckpt THIS_FOLDER --input images/ --out preds/", "```", "",
             "## Data", "",
             f"- data set: `{dm.get('dataset', 'unknown')}`" + (f" (root `{dm['root']}`)" if dm.get("root") else ""),
             f"- classes: {', '.join(class_names)}",
             f"- input: {hp.get('in_channels', 3)} channel(s), {hp.get('image_size')} px, "
             f"preprocessing `{hp.get('preprocess') or dm.get('transforms') or 'none'}`", "",
             "## Recipe", ""]
    for k in ("model_kwargs", "loss", "optimizer", "lr", "weight_decay", "scheduler", "t_max", "max_iters",
              "threshold", "select_on", "pretrained"):
        if k in hp:
            lines.append(f"- {k}: `{hp[k]}`")
    for k in ("batch_size", "seed", "val_split"):
        if k in dm:
            lines.append(f"- {k}: `{dm[k]}`")
    summary = run_dir / "test" / "summary.json" if run_dir else None
    lines += ["", "## Test metrics", ""]
    if summary and summary.is_file():
        s = json.loads(summary.read_text())
        st = s.get("settings", {})
        lines.append(f"Aggregation `{st.get('aggregation', hp.get('aggregation'))}`, HD95 mode "
                     f"`{st.get('hd95_mode', hp.get('hd95_mode'))}`, background "
                     f"{'included' if st.get('include_background') else 'excluded'}, empty-mask policy "
                     f"`{(st.get('empty_policy') or {}).get('name', hp.get('empty_policy'))}` "
                     f"(from `{summary}`).")
        lines += ["", "| metric | value |", "|---|---|"]
        for k, v in (s.get("metrics") or {}).items():
            if isinstance(v, (int, float)):
                base, _, cls = k.partition("/class_")
                if cls.isdigit() and int(cls) < len(class_names):
                    k = f"{base}/{class_names[int(cls)]}"
                lines.append(f"| {k} | {_fmt(v)} |")
    else:
        lines.append(f"No test summary found beside the checkpoint (aggregation `{hp.get('aggregation')}`, "
                     f"HD95 mode `{hp.get('hd95_mode')}` were configured); run `mambaseg test` to produce it.")
    cfg = run_dir / "config.yaml" if run_dir else None
    lines += ["", "## Reproduce", "", "```bash"]
    if cfg and cfg.is_file():
        lines.append(f"mambaseg fit --config {cfg} --run_dir NEW_RUN")
        lines.append(f"mambaseg test --config {cfg} --ckpt_path NEW_RUN/checkpoints/best.ckpt")
    else:
        lines.append(f"mambaseg fit --model.model {name} --data.dataset {dm.get('dataset', 'DATASET')} ...")
    lines += ["```", ""]
    return "\n".join(lines)


def checkpoint_to_folder(ckpt: Union[str, os.PathLike], out: Union[str, os.PathLike], overwrite: bool = False) -> Path:
    """Turn a training checkpoint into a pretrained folder (config.json, model.safetensors, README.md)."""
    from mambaseg.models import save_pretrained
    data = read_training_checkpoint(ckpt)
    hp = dict(data["hyper_parameters"])
    dm = dict(data.get("datamodule_hyper_parameters") or {})
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {str(out)!r} is a file; --format folder writes a folder")
    net = network_from_checkpoint(data)
    names = _class_names(hp, dm)
    n_labels = int(hp.get("num_classes", 2))
    if not names or len(names) != n_labels:
        names = ["background"] + [f"class_{k}" for k in range(1, n_labels)]
    run_dir = Path(ckpt).resolve().parent.parent
    run_dir = run_dir if (run_dir / "checkpoints").is_dir() else None
    preprocessing = {"preset": hp.get("preprocess"), "image_size": hp.get("image_size")}
    training = {"checkpoint": str(ckpt), "dataset": dm.get("dataset"), "epoch": data.get("epoch"),
                "global_step": data.get("global_step"),
                "hyper_parameters": {k: v for k, v in hp.items() if isinstance(v, (str, int, float, bool, list,
                                                                                   dict, type(None)))}}
    card = model_card(hp.get("model", "model"), hp, dm, run_dir, str(ckpt), names)
    return save_pretrained(net, out, input_size=hp.get("image_size"), preprocessing=preprocessing,
                           class_names=names, threshold=hp.get("threshold", 0.5), training=training,
                           model_card=card, overwrite=overwrite)
