"""``mambaseg demo --3d --fast``: the 3-D demo (nnunet_3d on synthetic-brats) runs fit -> sliding-window test ->
report through the CLI; ``mambaseg check --config demo_3d`` accepts the 3-D patch."""
import subprocess
import sys

import pytest

from mambaseg.cli.main import main


@pytest.mark.slow
def test_demo_3d_fast_smoke(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mambaseg", "demo", "--3d", "--fast", "--quiet", "--out",
                        str(tmp_path / "d")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "nnunet_3d" in r.stdout and "aggregation=per_volume" in r.stdout and "synthetic-brats" in r.stdout
    assert "| nnunet_3d |" in (tmp_path / "d" / "report.md").read_text()
    assert (tmp_path / "d" / "nnunet_3d" / "test" / "per_case.csv").is_file()


def test_check_accepts_a_3d_patch_and_names_the_nearest_valid_one(capsys):
    assert main(["check", "--config", "demo_3d"]) == 0
    assert main(["check", "--config", "demo_3d", "--data.image_size", "[30, 32, 16]"]) == 2
    assert "nearest valid: --data.image_size '[32, 32, 16]'" in capsys.readouterr().err
