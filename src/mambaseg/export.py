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

import contextlib
import errno
import functools
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from mambaseg.data.labels import dataset_class_names
from mambaseg.engine.io import check_mambaseg_checkpoint, load_checkpoint
from mambaseg.models import create_model, save_pretrained
from mambaseg.models.contract import SegmentationNetwork
from mambaseg.models.limits import check_input_size
from mambaseg.ops import intercept_scans
from mambaseg.ops.scan_onnx import expand_scan_nodes, selective_scan_onnx
from mambaseg.utils.convert import as_size
from mambaseg.utils.fileio import atomic_path

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
    try:
        return as_size(size, spatial_dims)
    except (TypeError, ValueError):
        raise ExportError(f"size must be an int or {'(D, H, W)' if spatial_dims == 3 else '(H, W)'}, "
                          f"got {size!r}") from None


def check_chunk(chunk, flag: str = "--chunk") -> Optional[int]:
    """``chunk`` (scan steps per ONNX Scan iteration) as a positive int, None for the default (16)."""
    if chunk is None:
        return None
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ExportError(f"{flag} must be a positive number of scan steps per ONNX Scan iteration, got {chunk!r} "
                          f"(leave it out for the default, 16)")
    return chunk


_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
_NO_WRITE = (errno.EROFS, errno.EACCES, errno.EPERM)


@contextlib.contextmanager
def _leave_nothing(folder: Path, files: Sequence[Path], what: str):
    """Make ``folder`` (with its missing parents) for writing ``files``; when the block fails, remove the files it
    made and the folders made here, so a failed export leaves nothing behind. A full disk or a read-only place is
    one line (``ExportError``)."""
    made, p = [], Path(folder)
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    existed = {f for f in files if f.exists()}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        yield
    except BaseException as e:
        for f in files:
            if f not in existed:
                with contextlib.suppress(OSError):
                    f.unlink()
        for d in made:  # innermost first; only while empty
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(e, OSError) and e.errno in _NO_SPACE or "No space left on device" in str(e):
            # (safetensors reports ENOSPC as its own error type)
            raise ExportError(f"disk full while writing {what} into {str(folder)!r} (No space left on device); "
                              "free space or choose another --out; nothing was left behind") from None
        if isinstance(e, OSError) and e.errno in _NO_WRITE:
            raise ExportError(f"cannot write {what} into {str(folder)!r} ({e.strerror}); choose another --out; "
                              "nothing was left behind") from None
        raise


def to_onnx(model: nn.Module, path: Union[str, os.PathLike], size=None, in_channels: Optional[int] = None,
            output: str = "logits", opset: int = 17, chunk: Optional[int] = None, dynamic_batch: bool = True,
            overwrite: bool = False, check: bool = True) -> Dict[str, Any]:
    """Export ``model`` to ONNX at ``path``. ``size``: H (or (H, W)) of the input; default the model's
    fixed size, else its default size (the model contract). ``in_channels``: default ``model.in_channels``. ``chunk``:
    scan steps per ONNX ``Scan`` iteration (default 16). Returns ``{"path", "nodes", "scan_nodes", "bytes",
    "export_seconds", "input_shape"}``."""
    _require_onnx()
    import onnx

    if output not in ("logits", "probabilities"):
        raise ExportError(f"output must be 'logits' or 'probabilities', got {output!r}")
    chunk = check_chunk(chunk, "chunk")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another --out or remove it (nothing is overwritten)")
    network = isinstance(model, SegmentationNetwork)  # the model contract: size rule, default size, channels
    if size is None:
        if not network:
            raise ExportError(f"{type(model).__name__} is not a mambaseg network; pass size=(H, W)")
        size = model.input_size  # its fixed size, else its default size
    spatial = _size2(size, model.spatial_dims if network else len(size) if isinstance(size, (tuple, list)) else 2)
    # a mambaseg network states its channels (the contract); a foreign module may say them itself
    c = int(in_channels or (model.in_channels if network else getattr(model, "in_channels", 3)))
    spatial = check_input_size(spatial, "size", in_channels=c,
                               num_classes=int(model.num_classes if network else getattr(model, "num_classes", 1)))
    x = torch.zeros(1, c, *spatial)
    was_training = model.training
    net = model.eval()
    wrapped = _Probabilities(net) if output == "probabilities" else net
    try:
        with torch.no_grad():
            wrapped(x)                                              # fail here with the model's own message
    except ValueError as e:
        raise ExportError(f"cannot export at input {c}x{'x'.join(map(str, spatial))}: {e}") from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.trace.onnx")  # torch's own export, read back below
    t0 = time.perf_counter()
    try:
        with _leave_nothing(path.parent, [path, tmp], "the ONNX model"):
            scan = functools.partial(selective_scan_onnx, chunk=chunk)
            with torch.no_grad(), intercept_scans(lambda fn: scan), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapped, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["image"],
                                  output_names=[output], do_constant_folding=True,
                                  dynamic_axes=({"image": {0: "batch"}, output: {0: "batch"}} if dynamic_batch
                                                else None),
                                  custom_opsets={"mambaseg": 1})
            proto = onnx.load(str(tmp))
            n_scan = expand_scan_nodes(proto, chunk)
            proto.producer_name = "mambaseg"
            name = getattr(model, "model_name", type(model).__name__)
            onnx.helper.set_model_props(proto, {"architecture": str(name), "output": output,
                                                "input_size": "x".join(map(str, spatial)), "in_channels": str(c)})
            if check:
                onnx.checker.check_model(proto)
            with atomic_path(str(path)) as final:
                onnx.save(proto, final)
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
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    name = session.get_inputs()[0].name
    return session.run(None, {name: arr.astype(np.float32, copy=False)})[0]


# ---------------------------------------------------------------------------------------------------------------
# training checkpoint -> network / pretrained folder
def read_training_checkpoint(ckpt: Union[str, os.PathLike]) -> Dict[str, Any]:
    """A ``mambaseg fit`` checkpoint as plain data (``torch.load(weights_only=True)``: nothing is unpickled)."""
    p = Path(ckpt)
    if p.is_dir():
        from mambaseg.models.hub import not_a_model_folder
        raise ExportError(not_a_model_folder(str(p)))
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist (expected RUN/checkpoints/best.ckpt)")
    data = load_checkpoint(str(p))          # weights_only=True; one clear line for a foreign / broken file
    check_mambaseg_checkpoint(data, str(p))
    if "hyper_parameters" not in data:
        raise ExportError(f"{str(p)!r} is not a mambaseg training checkpoint (no hyper_parameters)")
    return data


def network_from_checkpoint(data: Dict[str, Any]) -> nn.Module:
    """The network (``create_model``) of a training checkpoint with its weights, eval mode."""
    hp = dict(data["hyper_parameters"])
    from mambaseg.engine.volumetric import output_layout  # one output per region (BraTS WT/TC/ET), as in training
    out_ch = output_layout(int(hp.get("num_classes", 2)), hp.get("regions"))[0]
    from mambaseg.models.limits import check_model_memory
    check_model_memory(hp.get("model", "unet"), int(hp.get("in_channels", 3)), out_ch, hp.get("model_kwargs"),
                       where="the checkpoint's model")
    net = create_model(hp.get("model", "unet"), in_channels=int(hp.get("in_channels", 3)), num_classes=out_ch,
                       **dict(hp.get("model_kwargs") or {}))
    sd = {k[len("net."):]: v for k, v in data["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(sd, strict=True)
    return net.eval()


def _checkpoint_size(hp: Dict[str, Any], net: nn.Module) -> Optional[Tuple[int, ...]]:
    """The training input size of a checkpoint, one int per spatial axis of its network (an int ``image_size`` is a
    square, or a cube for a 3-D network); None when the checkpoint names none."""
    s = hp.get("image_size")
    if s is None:
        return None
    return _size2(s, int(getattr(net, "spatial_dims", 2)))


def _output_rule(hp: Dict[str, Any]) -> Optional[str]:
    """How a region-based network's logits become labels (None: the default sigmoid / softmax rule)."""
    regs = hp.get("regions")
    if not regs:
        return None
    names = list(hp.get("region_names") or [f"region_{k}" for k in range(len(regs))])
    parts = ", ".join(f"{n} = classes {list(r)}" for n, r in zip(names, regs))
    return (f"logits, one sigmoid per region ({parts}); labels as nnU-Net: for each region in order (outer to "
            f"inner, inner ones overwrite), voxels with sigmoid > {hp.get('threshold', 0.5)} get its label "
            f"(mambaseg.engine.sliding_window.logits_to_segmentation)")


def _class_names(hp: Dict[str, Any], dm: Dict[str, Any]) -> Optional[Sequence[str]]:
    names = hp.get("class_names") or (dm or {}).get("class_names")
    if names:
        return list(names)
    return dataset_class_names((dm or {}).get("dataset"), int(hp.get("num_classes", 2)))


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def model_card(name: str, hp: Dict[str, Any], dm: Dict[str, Any], run_dir: Optional[Path], ckpt: str,
               class_names: Sequence[str], volumetric: Optional[Dict[str, Any]] = None) -> str:
    """``README.md`` of an exported folder: data set, recipe, test metrics (with aggregation and HD95 mode),
    and the commands that reproduce them."""
    dm = dm or {}
    vol = volumetric or {}
    three_d = bool(vol) or (isinstance(hp.get("image_size"), (list, tuple)) and len(hp["image_size"]) == 3)
    axes, inputs = ("(B, C, I, J, K) in the NIfTI's voxel order", "volumes/") if three_d else ("(B, C, H, W)",
                                                                                              "images/")
    lines = [f"# {name} (mambaseg)", "",
             f"Segmentation network `{name}` trained with mambaseg; exported from `{ckpt}`.", "",
             "## Use", "", "```python", "from mambaseg.models import from_pretrained",
             f"model = from_pretrained('THIS_FOLDER')   # logits {axes}", "```", "",
             "```bash", f"mambaseg predict --ckpt THIS_FOLDER --input {inputs} --out preds/", "```", "",
             "## Data", "",
             f"- data set: `{dm.get('dataset', 'unknown')}`" + (f" (root `{dm['root']}`)" if dm.get("root") else "")]
    if hp.get("regions"):
        rn = list(hp.get("region_names") or class_names)
        lines.append("- outputs: one sigmoid per region: " + ", ".join(f"{n} = classes {list(r)}"
                                                                     for n, r in zip(rn, hp["regions"])))
    else:
        lines.append(f"- classes: {', '.join(class_names)}")
    if three_d:
        plan = vol.get("plan") or {}
        lines.append(f"- input: {hp.get('in_channels', 3)} channel(s)"
                     + (f" ({', '.join(map(str, vol['channel_names']))})" if vol.get("channel_names") else "")
                     + f", patch {hp.get('image_size')} voxels"
                     + (f" at {plan['target_spacing']} mm" if plan.get("target_spacing") else "")
                     + (f", normalisation {plan['normalization']}" if plan.get("normalization") else "")
                     + "; sliding window over whole volumes, predictions written as NIfTI with the input's affine")
    else:
        lines.append(f"- input: {hp.get('in_channels', 3)} channel(s), {hp.get('image_size')} px, "
                     f"preprocessing `{hp.get('preprocess') or dm.get('transforms') or 'none'}`")
    lines += ["", "## Recipe", ""]
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
    if hp.get("regions"):  # region outputs (sigmoid each): the folder's outputs are named by the regions
        regs = hp["regions"]
        rn = list(hp.get("region_names") or [])
        names = rn if len(rn) == len(regs) else [f"region_{k}" for k in range(len(regs))]
    run_dir = Path(ckpt).resolve().parent.parent
    run_dir = run_dir if (run_dir / "checkpoints").is_dir() else None
    preprocessing = {"preset": hp.get("preprocess"), "image_size": hp.get("image_size")}
    training = {"checkpoint": str(ckpt), "dataset": dm.get("dataset"), "epoch": data.get("epoch"),
                "global_step": data.get("global_step"),
                "hyper_parameters": {k: v for k, v in hp.items() if isinstance(v, (str, int, float, bool, list,
                                                                                   dict, type(None)))}}
    if data.get("volumetric"):  # 3-D: the preprocessing plan and label values predict needs (as the checkpoint)
        training["volumetric"] = data["volumetric"]
    card = model_card(hp.get("model", "model"), hp, dm, run_dir, str(ckpt), names, data.get("volumetric"))
    from mambaseg.models.hub import CONFIG_NAME, WEIGHTS_NAME
    with _leave_nothing(out, [out / CONFIG_NAME, out / WEIGHTS_NAME, out / "README.md"], "the pretrained folder"):
        return save_pretrained(net, out, input_size=_checkpoint_size(hp, net), preprocessing=preprocessing,
                               class_names=names, threshold=hp.get("threshold", 0.5), training=training,
                               model_card=card, overwrite=overwrite, output=_output_rule(hp))
