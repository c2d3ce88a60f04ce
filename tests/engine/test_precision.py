"""--precision bf16 (issue 18): the autocast wrapper and the CLI plumbing of predict / test / profile."""

import argparse

import pytest
import torch
import torch.nn as nn

from mambaseg.cli import predict_cmd, profile_cmd
from mambaseg.cli.main import _rewrite_config_args, main
from mambaseg.engine.precision import AutocastForward, with_precision


def test_bf16_wrapper_runs_linears_in_bf16_and_returns_fp32():
    torch.manual_seed(0)
    seen = []
    lin = nn.Linear(8, 4)
    lin.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    net = with_precision(lin, "bf16")
    assert isinstance(net, AutocastForward) and with_precision(lin, "fp32") is lin
    x = torch.randn(3, 8)
    y = net(x)
    assert seen == [torch.bfloat16] and y.dtype == torch.float32
    torch.testing.assert_close(y, lin(x), rtol=2e-2, atol=2e-2)   # bf16 has 8 mantissa bits
    with pytest.raises(ValueError, match="precision must be one of"):
        with_precision(lin, "fp16")


def test_lightning_commands_get_trainer_precision():
    assert _rewrite_config_args(["--precision", "bf16", "--x", "1"]) == ["--trainer.precision=bf16-mixed", "--x", "1"]
    assert _rewrite_config_args(["--precision=fp32"]) == ["--trainer.precision=32-true"]
    with pytest.raises(ValueError, match="--precision must be fp32 or bf16"):
        _rewrite_config_args(["--precision", "fp16"])


def test_test_command_rejects_a_bad_precision_with_exit_2(capsys):
    assert main(["test", "--precision", "half"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--precision must be fp32 or bf16, got 'half'" in err[0]   # the CLI's one error line (+ debug hint)


def test_predict_and_profile_parsers_accept_precision():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    predict_cmd.add_parser(sub)
    profile_cmd.add_parser(sub)
    a = p.parse_args(["predict", "--ckpt", "c", "-i", "x", "-o", "o", "--precision", "bf16"])
    assert a.precision == "bf16"
    a = p.parse_args(["profile", "vmunet", "--precision", "bf16"])
    assert a.precision == "bf16"
