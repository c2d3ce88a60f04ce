"""The lowest layer: helpers every other layer may use and that import nothing else of mambaseg.

* :mod:`~mambaseg.utils.fileio`: durable (atomic, fsync'ed) file writing and the one-line disk-full / read-only
  errors;
* :mod:`~mambaseg.utils.errors`: ``MambasegUserError`` and the "did you mean" suffix (``near_matches``);
* :mod:`~mambaseg.utils.convert`: JSON-able values (``to_jsonable``) and per-axis sizes (``as_size``).
"""

from .convert import as_size, to_jsonable
from .errors import MambasegUserError, close_matches, near_matches
from .fileio import (DiskFullError, UnwritableError, atomic_open, atomic_path, atomic_write_bytes, atomic_write_text,
                     check_writable)

__all__ = ["as_size", "to_jsonable", "MambasegUserError", "close_matches", "near_matches", "DiskFullError",
           "UnwritableError", "atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text",
           "check_writable"]
