"""Helpers for the ``--compare REV`` mode of the benchmarks: time another git revision in the same invocation.

``export_src(rev)`` extracts ``src/`` of ``rev`` (``git archive``) into a temporary folder and returns the path
to put on ``PYTHONPATH``; ``this_src()`` is the checkout's own ``src/``. Workers then run in subprocesses with
one or the other on ``PYTHONPATH`` (the benchmark script itself is always this checkout's), alternating old and
new call by call so that machine noise hits both alike; tables report medians over the rounds and new/old ratios.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def this_src() -> str:
    return str(ROOT / "src")


def export_src(rev: str) -> str:
    """``src/`` of git revision ``rev`` in a fresh temporary folder (removed at exit); returns its path."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                         capture_output=True, text=True)
    if sha.returncode != 0:
        raise SystemExit(f"--compare: {rev!r} is not a git revision of {ROOT}; give a commit, branch or tag")
    data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", sha.stdout.strip(), "src"],
                          capture_output=True, check=True).stdout
    tmp = tempfile.mkdtemp(prefix=f"mambaseg-{rev[:12].replace('/', '_')}-")
    atexit.register(shutil.rmtree, tmp, True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.extractall(tmp, filter="data")
    return os.path.join(tmp, "src")


def env_for(src: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    return env


def ratio(old, new) -> str:
    """``old / new`` as a speed-up factor string ("2.31x"), "-" when either is missing."""
    if not old or not new:
        return "-"
    return f"{old / new:.2f}x"
