"""A module a shared config could name: importing it, or calling ``hook``, leaves a marker file (where the env var
MAMBASEG_TEST_MARKER points), standing in for ``os.system``."""

import os


def _mark(what: str) -> None:
    path = os.environ.get("MAMBASEG_TEST_MARKER")
    if path:
        with open(path, "a") as f:
            f.write(what + "\n")


_mark("imported")


def hook(*args, **kwargs):
    _mark("called")
