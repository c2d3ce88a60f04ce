"""Safe checkpoint reads and durable checkpoint writes: the only way the engine reads a checkpoint.

The durable writers themselves (temp file, fsync, rename, the disk-full / read-only line) live in
:mod:`mambaseg.utils.fileio`, the lowest layer, so that every writer (data, metrics, export) can use them; they
are re-exported here for the engine's callers:

* ``atomic_write_bytes`` / ``atomic_write_text`` / ``atomic_open`` / ``atomic_path`` / ``check_writable``,
  ``DiskFullError``, ``UnwritableError``: see :mod:`mambaseg.utils.fileio`;
* ``save_checkpoint(obj, path)``: ``torch.save`` through the above, after turning the few non-plain values a
  Lightning checkpoint can hold into plain ones (so that it reads back with ``weights_only=True``);
* ``load_checkpoint(path)``: ``torch.load(weights_only=True)`` with one clear line for an empty file, a text
  file, a truncated file or a pickle that asks for code (refused: a checkpoint is data);
* ``AtomicCheckpointIO``: the Lightning ``CheckpointIO`` plugin doing both for every checkpoint of a run.

A checkpoint refused for needing code can be converted, if and only if you trust where it came from::

    python -m mambaseg.engine.io --convert-trusted IN.ckpt OUT.ckpt
"""

from __future__ import annotations

import io
import os
import re
import sys
import zipfile
from typing import Any

import numpy as np
import torch

from mambaseg.models import list_models
from mambaseg.utils.fileio import (DiskFullError, UnwritableError, atomic_open, atomic_path, atomic_write_bytes,
                                   atomic_write_text, check_writable, human_size)

from .errors import MambasegUserError

__all__ = ["DiskFullError", "UnwritableError", "CheckpointReadError", "UnsafeCheckpointError",
           "atomic_write_bytes", "atomic_write_text", "atomic_open", "atomic_path", "save_checkpoint",
           "load_checkpoint", "to_plain", "check_writable", "AtomicCheckpointIO", "convert_trusted_checkpoint",
           "CONVERT_HINT"]


class CheckpointReadError(MambasegUserError):
    """A checkpoint file that does not read: empty, text, truncated, not a mambaseg checkpoint."""


class UnsafeCheckpointError(CheckpointReadError):
    """A checkpoint whose pickle asks for code (or types outside the allow-list); refused, never executed."""


# ----------------------------------------------------------------------------------------------------------------
# checkpoints
def to_plain(obj: Any) -> Any:
    """``obj`` with every value ``torch.load(weights_only=True)`` cannot read turned into a plain one: mappings
    (Lightning's ``AttributeDict``, jsonargparse ``Namespace``) -> dict, paths -> str, numpy scalars / arrays ->
    Python numbers / tensors, sets -> lists. Tensors, numbers, strings, lists, tuples, dicts stay."""
    if isinstance(obj, np.generic):  # before the number check: np.float64 is a float subclass
        return obj.item()
    if isinstance(obj, torch.Tensor) or obj is None or type(obj) in (bool, int, float, str, bytes, complex):
        return obj
    if type(obj) in (dict, list, tuple):
        if isinstance(obj, dict):
            return {to_plain(k): to_plain(v) for k, v in obj.items()}
        return type(obj)(to_plain(v) for v in obj)
    if type(obj).__name__ == "Namespace":  # jsonargparse (as_dict: nested) / argparse Namespace
        return to_plain(obj.as_dict() if callable(getattr(obj, "as_dict", None)) else dict(vars(obj)))
    if isinstance(obj, dict) or (hasattr(obj, "items") and callable(obj.items)):
        return {to_plain(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, (set, frozenset)):
        return [to_plain(v) for v in sorted(obj, key=repr)]
    if isinstance(obj, (list, tuple)):  # namedtuple and other subclasses
        return [to_plain(v) for v in obj]
    if isinstance(obj, torch.dtype) or isinstance(obj, torch.device):
        return obj
    return obj  # left as is: torch.save keeps it, and load_checkpoint names it if it is not allow-listed


def save_checkpoint(obj: Any, path: str) -> str:
    """``torch.save(to_plain(obj))``, written atomically."""
    buf = io.BytesIO()
    torch.save(to_plain(obj), buf)
    return atomic_write_bytes(path, buf.getvalue())


CONVERT_HINT = "python -m mambaseg.engine.io --convert-trusted {src} {dst}"


def _converted_name(path: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}.plain{ext or '.ckpt'}"


def load_checkpoint(path: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` or one ``CheckpointReadError`` line saying what the file is.

    Never unpickles code: a pickle that names a function or class outside PyTorch's weights-only allow-list
    raises ``UnsafeCheckpointError`` with the command that converts a *trusted* file. Nothing is added to that
    allow-list: our checkpoints hold plain values only (``to_plain`` at save time). Lightning's
    ``AttributeDict`` cannot be allow-listed (the weights-only unpickler fills only plain dicts), so it too is
    stored as a dict."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist; pass the path of a .ckpt file "
                                "(e.g. RUN/checkpoints/best.ckpt)")
    if os.path.isdir(path):
        raise CheckpointReadError(f"checkpoint {path!r} is a folder; pass a .ckpt file inside it "
                                  "(e.g. RUN/checkpoints/best.ckpt)")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointReadError(f"checkpoint {path!r} is an empty file (an interrupted copy or write?); use "
                                  "another checkpoint, e.g. RUN/checkpoints/best.ckpt")
    with open(path, "rb") as f:
        head = f.read(512)
    is_zip = head.startswith(b"PK")
    if not is_zip and not head[:1] == b"\x80":
        try:
            head.decode("utf-8")
            what = "a text file"
        except UnicodeDecodeError:
            what = "not a PyTorch checkpoint"
        raise CheckpointReadError(f"checkpoint {path!r} is {what}, not a PyTorch checkpoint; pass a .ckpt "
                                  "written by `mambaseg fit` (RUN/checkpoints/best.ckpt)")
    if is_zip:
        try:
            with zipfile.ZipFile(path) as z:
                z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError):
            raise CheckpointReadError(f"checkpoint {path!r} is truncated or corrupt ({human_size(size)}; a write "
                                      "interrupted by a crash or a full disk?); use another checkpoint, e.g. "
                                      "RUN/checkpoints/best.ckpt") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes one line
        msg = str(e)
        if "Weights only load failed" in msg or "weights_only" in msg or "Unsupported global" in msg:
            found = re.findall(r"GLOBAL ([\w.]+)", msg) or re.findall(r"global ([\w.]+)", msg)
            names = ", ".join(sorted(set(found))) or "a non-tensor object"
            raise UnsafeCheckpointError(
                f"refused checkpoint {path!r}: it asks to run or build Python code ({names}) and a checkpoint is "
                f"read as data only (weights_only=True). If, and only if, you trust where it came from, convert "
                f"it: {CONVERT_HINT.format(src=path, dst=_converted_name(path))}") from None
        raise CheckpointReadError(f"checkpoint {path!r} does not read ({type(e).__name__}: "
                                  f"{msg.splitlines()[0][:200] if msg else ''}); it may be truncated or corrupt. "
                                  "Use another checkpoint, e.g. RUN/checkpoints/best.ckpt") from None


def check_mambaseg_checkpoint(data: Any, path: str) -> None:
    """``CheckpointReadError`` unless ``data`` looks like a checkpoint written by ``mambaseg fit``."""
    if not isinstance(data, dict) or "state_dict" not in data:
        raise CheckpointReadError(f"{path!r} is not a mambaseg training checkpoint (no state_dict); use a .ckpt "
                                  "written by `mambaseg fit`, or `create_model(..., pretrained=PATH)` for plain "
                                  "weight files")
    hp = data.get("hyper_parameters")
    if not isinstance(hp, dict) or hp.get("model") not in set(list_models()) or \
            not any(str(k).startswith("net.") for k in (data.get("state_dict") or {})):
        raise CheckpointReadError(f"{path!r} is a checkpoint of another program (no mambaseg model in its "
                                  "hyper_parameters); use a .ckpt written by `mambaseg fit`, or load plain "
                                  "weights with `create_model(..., pretrained=PATH)`")


try:
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO as _TorchCheckpointIO
except ImportError:  # pragma: no cover
    _TorchCheckpointIO = object


class AtomicCheckpointIO(_TorchCheckpointIO):
    """Lightning ``CheckpointIO``: every checkpoint is written atomically as plain data and read back with
    ``weights_only=True`` whatever the caller asks for (``trainer.fit(ckpt_path=..., weights_only=False)``
    included)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        save_checkpoint(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return load_checkpoint(os.fspath(path), map_location=map_location or "cpu")


# ----------------------------------------------------------------------------------------------------------------
def convert_trusted_checkpoint(src: str, dst: str) -> str:
    """Re-save a checkpoint YOU TRUST as plain data (reads it with ``weights_only=False``: this runs whatever
    its pickle asks for). Values that cannot be made plain raise ``TypeError``."""
    data = torch.load(src, map_location="cpu", weights_only=False)  # trusted by the caller, by definition
    plain = to_plain(data)
    buf = io.BytesIO()
    torch.save(plain, buf)
    buf.seek(0)
    try:
        torch.load(buf, weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise TypeError(f"{src} holds values that have no plain form ({str(e).splitlines()[0][:200]}); extract "
                        "the state_dict and hyper_parameters by hand") from None
    atomic_write_bytes(dst, buf.getvalue())
    return dst


def _main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m mambaseg.engine.io",
                                description="Convert a checkpoint you trust into plain data (weights_only=True).")
    p.add_argument("--convert-trusted", nargs=2, metavar=("IN", "OUT"), required=True,
                   help="read IN with weights_only=False (runs its pickle: only for files you trust), write OUT")
    args = p.parse_args(argv)
    src, dst = args.convert_trusted
    if os.path.exists(dst):
        print(f"error: {dst} exists; choose another output name", file=sys.stderr)
        return 2
    try:
        convert_trusted_checkpoint(src, dst)
    except (OSError, TypeError, MambasegUserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {dst} (plain data; reads with weights_only=True)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
