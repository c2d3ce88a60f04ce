"""The layer order is enforced: `lint-imports` (import-linter, contracts in pyproject.toml) passes on the package,
and fails when a wrong-way import is planted into a copy of it (an engine module importing the CLI, a network
importing another network, a cycle)."""

import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("importlinter")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.dirname(os.path.abspath(__import__("mambaseg").__file__))


def lint_imports(cwd, src):
    """Run the venv's lint-imports on the ``mambaseg`` found in ``src`` with ``cwd``'s pyproject.toml."""
    env = dict(os.environ, PYTHONPATH=src)
    cmd = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                                 "sys.exit(lint_imports_command())", "--no-cache"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_package_keeps_every_import_contract():
    res = lint_imports(ROOT, os.path.dirname(PACKAGE))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "Contracts: 5 kept, 0 broken." in res.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """A copy of the package's Python files and pyproject.toml, to plant imports into."""
    root = tmp_path_factory.mktemp("arch")
    shutil.copytree(PACKAGE, root / "src" / "mambaseg",
                    ignore=shutil.ignore_patterns("__pycache__", "csrc", "configs", "*.so"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), root / "pyproject.toml")
    return root


PLANTS = [
    ("engine/_planted.py", "from mambaseg.cli.main import main\n",
     "mambaseg.engine is not allowed to import mambaseg.cli"),
    ("data/_planted.py", "from mambaseg.models import create_model\n",
     "mambaseg.data is not allowed to import mambaseg.models"),
    ("metrics/_planted.py", "from mambaseg.losses import build_loss\n",
     "mambaseg.metrics is not allowed to import mambaseg.losses"),
    ("models/networks/_planted.py", "from mambaseg.models.networks.unet import UNet\n"
                                    "from mambaseg.models.networks.vmunet import VMUNet\n",
     "is not allowed to import mambaseg.models.networks"),
    ("models/blocks/_planted.py", "from mambaseg.models.registry import register_model\n",
     "mambaseg.models.blocks is not allowed to import mambaseg.models.registry"),
    ("utils/_planted.py", "import mambaseg.ops\n", "mambaseg.utils is not allowed to import mambaseg.ops"),
]


@pytest.mark.parametrize("path,code,message", PLANTS, ids=[p[0] for p in PLANTS])
def test_planted_wrong_way_import_is_caught(copy, path, code, message):
    planted = copy / "src" / "mambaseg" / path
    planted.write_text(code)
    try:
        res = lint_imports(copy, copy / "src")
    finally:
        planted.unlink()
    assert res.returncode != 0, res.stdout[-3000:]
    assert message in " ".join(res.stdout.split()), res.stdout[-3000:]
