"""One process per run directory: an advisory lock that dies with its process.

``fit`` (on ``--run_dir``) and ``compare`` (on ``--out``) take ``acquire(folder)`` before they write anything. The
lock is ``fcntl.flock`` on ``FOLDER/.mambaseg.lock``: the kernel drops it when the process ends, however it ends
(``kill -9`` included), so a crashed run never leaves a stale lock behind. The file holds the owner's pid and
command line, which a second process names in its one-line refusal (``RunDirLockedError``, exit 2) before it
writes anything.

On release the lock file is removed, and the folder too when the lock made it and it is still empty (a fit
refused for bad input leaves no empty run directory behind).
"""

from __future__ import annotations

import os
import sys
import time
from typing import List, Optional

from .errors import MambasegUserError

__all__ = ["LOCK_NAME", "RunDirLockedError", "RunLock", "acquire", "acquire_free_dir", "lock_owner"]

LOCK_NAME = ".mambaseg.lock"

try:  # POSIX; elsewhere (Windows) there is no lock and acquire() is a no-op
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


class RunDirLockedError(MambasegUserError):
    """Another live process holds the folder's lock."""


def lock_owner(folder: str) -> str:
    """What the lock file of ``folder`` says about its holder (``pid 123: mambaseg fit ...``), or ``""``."""
    try:
        with open(os.path.join(folder, LOCK_NAME)) as f:
            return " ".join(f.read().split())[:300]
    except OSError:
        return ""


class RunLock:
    """A held lock (see the module doc); ``release()`` is idempotent."""

    def __init__(self, folder: str, fd: int, made: List[str]):
        self.folder, self.fd, self.made = folder, fd, list(made)  # made: the folders acquire() made, innermost first

    def release(self) -> None:
        if self.fd is None:
            return
        path = os.path.join(self.folder, LOCK_NAME)
        try:
            os.unlink(path)  # while still held: no other process can be between open and flock on this inode
        except OSError:
            pass
        try:
            os.close(self.fd)
        except OSError:  # pragma: no cover
            pass
        self.fd = None
        for d in self.made:
            try:
                os.rmdir(d)  # only while empty: a refused fit leaves no empty run directory (nor its parents)
            except OSError:
                break

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(folder: str, what: str = "run directory", flag: str = "--run_dir",
            command: Optional[str] = None) -> Optional[RunLock]:
    """Lock ``folder`` (made if missing) for this process, or raise ``RunDirLockedError`` naming the holder.

    A second ``acquire`` of the same folder in the same process is refused too (``flock`` locks belong to an
    open file, not to a process). Returns None where there is no ``fcntl`` (no lock taken).
    """
    if fcntl is None:  # pragma: no cover
        return None
    folder = os.fspath(folder)
    made, p = [], os.path.abspath(folder)
    while not os.path.isdir(p) and os.path.dirname(p) != p:
        made.append(p)
        p = os.path.dirname(p)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            owner = lock_owner(folder) or "another process"
            raise RunDirLockedError(
                f"{what} {folder!r} is in use by another mambaseg process ({owner}); wait for it to end or choose "
                f"another {flag}; nothing was written") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and flock: take the new one
    else:  # pragma: no cover
        raise RunDirLockedError(f"{what} {folder!r}: could not take its lock file {path!r}")
    cmd = command or " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
    cmd = cmd if len(cmd) <= 200 else cmd[:197] + "..."
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}: {cmd}\n".encode())
    lock = RunLock(folder, fd, made)
    return lock


def acquire_free_dir(base: str, next_free, what: str, flag: str, command: Optional[str] = None):
    """``(folder, lock)``: the first free folder ``next_free(base)`` gives (``base``, ``base-2``, ...) that this
    process could lock. Two processes that found the same folder free at once do not share it: the one that
    loses the lock takes the next free one."""
    for _ in range(100):
        folder = next_free(base)
        try:
            return folder, acquire(folder, what, flag, command)
        except RunDirLockedError:
            continue
    raise RunDirLockedError(f"{what}: no free folder next to {base!r} could be locked; choose another {flag}")
