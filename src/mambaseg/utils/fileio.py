"""Durable file writing: the one way mambaseg puts a file on disk (the lowest layer; imports nothing of ours
but :mod:`mambaseg.utils.errors`).

Writes are atomic: the bytes go to a temporary file in the destination's folder, which is flushed, fsync'ed and
renamed over the destination (then the folder is fsync'ed). A crash, a kill or a full disk therefore leaves
either the previous file or the new one, never half of one. A full disk (``ENOSPC`` / ``EDQUOT``) becomes one
``DiskFullError`` line naming the folder, the space needed and the space free; a read-only or unwritable folder
one ``UnwritableError`` line.

* ``atomic_write_bytes(path, data)`` / ``atomic_write_text(path, text)``: the whole content at once;
* ``atomic_open(path, "w"|"wb")``: a context manager giving an in-memory file, written atomically on exit;
* ``atomic_path(path)``: a temporary path (same folder, same suffix) for writers that want a file name
  (nibabel, matplotlib's ``savefig``, ...); renamed over ``path`` on exit;
* ``check_writable(path, what)``: the "read-only folder" pre-check, run before any work starts.

Checkpoint reading and its safety checks stay in :mod:`mambaseg.engine.io`, which re-exports these.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import uuid
from typing import Any, Iterator, Optional

from .errors import MambasegUserError

__all__ = ["DiskFullError", "UnwritableError", "atomic_write_bytes", "atomic_write_text", "atomic_open",
           "atomic_path", "check_writable", "human_size"]

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_NO_WRITE = (errno.EROFS, errno.EACCES, errno.EPERM)


class DiskFullError(MambasegUserError):
    """No space left where a file had to be written; the previous file of that name is unchanged."""


class UnwritableError(MambasegUserError):
    """A folder that must be written is read-only (or not writable by this user)."""


def human_size(n: float) -> str:
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
    free_s = f", {human_size(free)} free" if free is not None else ""
    return DiskFullError(f"disk full: writing {os.path.basename(path)} into {folder} needs {human_size(need)}"
                         f"{free_s}; "
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
