"""The lowest layer: helpers every other layer may use and that import nothing else of mambaseg.

* :mod:`~mambaseg.utils.fileio`: durable (atomic, fsync'ed) file writing and the one-line disk-full / read-only
  errors;
* :mod:`~mambaseg.utils.errors`: ``MambasegUserError`` and the "did you mean" suffix (``near_matches``);
* :mod:`~mambaseg.utils.convert`: JSON-able values (``to_jsonable``) and per-axis sizes (``as_size``); imports
  numpy and torch, so it is not re-exported here (``mambaseg.utils.errors`` stays light for the CLI's start).
"""

from .errors import MambasegUserError, close_matches, near_matches
from .fileio import (DiskFullError, UnwritableError, atomic_open, atomic_path, atomic_write_bytes, atomic_write_text,
                     check_writable)

__all__ = ["MambasegUserError", "close_matches", "near_matches", "DiskFullError",
           "UnwritableError", "atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text",
           "check_writable"]
