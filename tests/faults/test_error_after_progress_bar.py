"""Fault: ``mambaseg: error:`` lines were appended to the last progress-bar line (``Epoch 0:  50%|#####| 1/2
[...]mambaseg: error: ...``). Now ``main`` ends the line of any progress bar still open before it prints the
error. (Today's own bars are mostly closed by the time the error is printed: Lightning's and predict's close on
the way out; the condition the issue saw, a bar still open on the line, is set up here directly.)"""

import sys

from tqdm import tqdm

import mambaseg.engine.run  # noqa: F401  (Lightning's log handlers bind to the session's stderr, not capsys')
from mambaseg.cli.main import main


def test_error_line_starts_on_a_new_line_after_an_open_progress_bar(tmp_path, capsys):
    bar = tqdm(total=4, desc="Epoch 0", file=sys.stderr, mininterval=0)
    bar.update(2)  # drawn: "Epoch 0:  50%|#####     | 2/4 [...]" and the cursor stays on that line
    try:
        rc = main(["export", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "m.onnx")])
    finally:
        bar.close()
    err = capsys.readouterr().err
    assert rc == 2
    i = err.index("mambaseg: error:")
    assert "Epoch 0" in err[:i] and err[i - 1] == "\n", repr(err[max(0, i - 120):i + 40])
