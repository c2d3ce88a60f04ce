"""Durable writes and safe checkpoint reads: the only way the engine puts files on disk or reads a checkpoint.

Writes are atomic: the bytes go to a temporary file in the destination's folder, which is flushed, fsync'ed and
renamed over the destination (then the folder is fsync'ed). A crash, a kill or a full disk therefore leaves
either the previous file or the new one, never half of one. A full disk (``ENOSPC`` / ``EDQUOT``) becomes one
``DiskFullError`` line naming the folder, the space needed and the space free.

* ``atomic_write_bytes(path, data)`` / ``atomic_write_text(path, text)``: the whole content at once;
* ``atomic_open(path, "w"|"wb")``: a context manager giving an in-memory file, written atomically on exit;
* ``atomic_path(path)``: a temporary path (same folder, same suffix) for writers that want a file name
  (nibabel, ...); renamed over ``path`` on exit;
* ``save_checkpoint(obj, path)``: ``torch.save`` through the above, after turning the few non-plain values a
  Lightning checkpoint can hold into plain ones (so that it reads back with ``weights_only=True``);
* ``load_checkpoint(path)``: ``torch.load(weights_only=True)`` with one clear line for an empty file, a text
  file, a truncated file or a pickle that asks for code (refused: a checkpoint is data);
* ``AtomicCheckpointIO``: the Lightning ``CheckpointIO`` plugin doing both for every checkpoint of a run;
* ``check_writable(path, what)``: the "read-only folder" pre-check, run before any work starts.

A checkpoint refused for needing code can be converted, if and only if you trust where it came from::

    python -m mambaseg.engine.io --convert-trusted IN.ckpt OUT.ckpt
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import sys
import uuid
import zipfile
from typing import Any, Iterator, Optional

import torch

from .errors import MambasegUserError

__all__ = ["DiskFullError", "UnwritableError", "CheckpointReadError", "UnsafeCheckpointError",
           "atomic_write_bytes", "atomic_write_text", "atomic_open", "atomic_path", "save_checkpoint",
           "load_checkpoint", "to_plain", "check_writable", "AtomicCheckpointIO", "convert_trusted_checkpoint",
           "CONVERT_HINT"]

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_NO_WRITE = (errno.EROFS, errno.EACCES, errno.EPERM)


class DiskFullError(MambasegUserError):
    """No space left where a file had to be written; the previous file of that name is unchanged."""


class UnwritableError(MambasegUserError):
    """A folder that must be written is read-only (or not writable by this user)."""


class CheckpointReadError(MambasegUserError):
    """A checkpoint file that does not read: empty, text, truncated, not a mambaseg checkpoint."""


class UnsafeCheckpointError(CheckpointReadError):
    """A checkpoint whose pickle asks for code (or types outside the allow-list); refused, never executed."""


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TB"  # pragma: no cover


def _free_bytes(folder: str) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _disk_full(path: str, need: int) -> DiskFullError:
    folder = os.path.dirname(os.path.abspath(path)) or "."
    free = _free_bytes(folder)
    free_s = f", {_human(free)} free" if free is not None else ""
    return DiskFullError(f"disk full: writing {os.path.basename(path)} into {folder} needs {_human(need)}{free_s}; "
                         f"free some space there (or use another --run_dir / --out) and run again. The previous "
                         f"{os.path.basename(path)} is unchanged")


def _unwritable(path: str, e: OSError) -> UnwritableError:
    folder = os.path.dirname(os.path.abspath(path)) or "."
    return UnwritableError(f"cannot write into {folder} ({e.strerror or e}); make it writable or choose another "
                           "folder (--run_dir / --out)")


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (the one place bytes reach the disk; tests inject faults here)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems do not support it
        pass
    finally:
        os.close(fd)


def _tmp_name(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    root, ext = name, ""
    for suf in (".nii.gz", ".tar.gz"):
        if name.lower().endswith(suf):
            root, ext = name[: -len(suf)], name[-len(suf):]
            break
    else:
        root, ext = os.path.splitext(name)
    return os.path.join(folder, f".{root}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{ext}")


def _commit(tmp: str, path: str) -> None:
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)) or ".")


def _os_error_line(e: BaseException, path: str, need: int) -> Optional[BaseException]:
    """The one-line error for a disk-full or unwritable ``OSError`` while writing ``path``, else None."""
    if isinstance(e, OSError) and e.errno in _FULL:
        return _disk_full(path, need)
    if isinstance(e, OSError) and e.errno in _NO_WRITE:
        return _unwritable(path, e)
    return None


def atomic_write_bytes(path: str, data: bytes, mode: int = 0o666) -> str:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, flush, fsync, rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path)) or "."
    free = _free_bytes(folder)
    if free is not None and free < len(data):  # do not even start: the previous file stays as it is
        raise _disk_full(path, len(data))
    tmp = _tmp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    except OSError as e:
        line = _os_error_line(e, path, len(data))
        if line is not None:
            raise line from None
        raise
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        _commit(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        line = _os_error_line(e, path, len(data))
        if line is not None:
            raise line from None
        raise
    return path


def atomic_write_text(path: str, text: str, encoding: str = "utf-8") -> str:
    return atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str = "utf-8", newline: Optional[str] = None) -> Iterator[Any]:
    """``with atomic_open(p, "w") as f: ...``: ``f`` is in memory; on a clean exit its content replaces ``p``
    atomically, on an exception nothing is written."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports 'w' and 'wb', not {mode!r}")
    buf = io.BytesIO() if mode == "wb" else io.StringIO(newline=newline)
    yield buf
    data = buf.getvalue()
    atomic_write_bytes(path, data if mode == "wb" else data.encode(encoding))


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path next to ``path`` (same suffix) for a writer that needs a file name; on a clean exit the
    file is fsync'ed and renamed over ``path``; on an exception it is removed."""
    path = os.fspath(path)
    tmp = _tmp_name(path)
    need = 0
    try:
        yield tmp
        need = os.path.getsize(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _commit(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        line = _os_error_line(e, path, need)
        if line is not None:
            raise line from None
        raise


# ----------------------------------------------------------------------------------------------------------------
# checkpoints
def to_plain(obj: Any) -> Any:
    """``obj`` with every value ``torch.load(weights_only=True)`` cannot read turned into a plain one: mappings
    (Lightning's ``AttributeDict``, jsonargparse ``Namespace``) -> dict, paths -> str, numpy scalars / arrays ->
    Python numbers / tensors, sets -> lists. Tensors, numbers, strings, lists, tuples, dicts stay."""
    import numpy as np
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
            raise CheckpointReadError(f"checkpoint {path!r} is truncated or corrupt ({_human(size)}; a write "
                                      "interrupted by a crash or a full disk?); use another checkpoint, e.g. "
                                      "RUN/checkpoints/best.ckpt") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes one line
        msg = str(e)
        if "Weights only load failed" in msg or "weights_only" in msg or "Unsupported global" in msg:
            import re
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
    from mambaseg.models import list_models
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
# read-only pre-check
def _nearest_existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def _read_only_fs(folder: str) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 1))
    except (OSError, AttributeError):  # pragma: no cover - no statvfs (Windows)
        return False


def check_writable(path: str, what: str = "folder", flag: str = "") -> None:
    """``UnwritableError`` (one line) unless ``path`` (made if missing) and the existing folders it would be made
    in can be written. Checks the file-system read-only flag too, since ``os.access`` ignores permissions for
    root but not a read-only mount. Writes nothing."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UnwritableError(f"{what} {path!r} exists and is not a folder; choose another {flag or 'folder'}")
    folder = _nearest_existing(path)
    fix = f"choose another {flag}" if flag else "choose another folder"
    if _read_only_fs(folder):
        raise UnwritableError(f"{what} {path!r} is on a read-only file system ({folder}); {fix} or remount it "
                              "read-write; nothing was written")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UnwritableError(f"{what} {path!r} is not writable ({folder} is read-only for this user); {fix} or "
                              "make it writable; nothing was written")


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
