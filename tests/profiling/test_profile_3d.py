"""``profile`` on 3-D networks: a (size, size, size) volume, the scan counted from its shapes.

Oracle: the hand count of the selective-scan FLOPs (9*B*L*E*N + B*E*L for D + B*E*L for the z gate, per call: the
rule of ``test_vmunet_scan_size_matches_hand_count`` plus Mamba-1's gate) from the architecture: nnMamba runs its
stage's shared Mamba four times (the four orderings) in each of blocks 1 and 2; SegMamba runs three scans (forward,
backward, inter-slice) in each of its two ToM layers per stage."""

from mambaseg.cli.main import main
from mambaseg.models import create_model
from mambaseg.profiling import count_flops, profile_model


def _scan_flops(tokens_and_widths, calls_each, n=16, b=1):
    return sum(calls_each * (9 * b * L * e * n + 2 * b * e * L) for L, e in tokens_and_widths)


def test_nnmamba_profile_uses_a_volume_and_counts_every_scan():
    p = profile_model("nnmamba", size=32, in_channels=1, num_classes=16, latency=False, used_params=False,
                      conventions=("full",))
    assert p.input_shape == (1, 1, 32, 32, 32)
    assert p.params.total == 15_959_598
    full = p.flops["full"]
    # stages at 8^3, 4^3, 2^3 tokens with E = 2 * (64, 128, 256); 4 orderings x 2 blocks per stage
    assert full.parts["scan_calls"] == 24
    assert full.parts["scan_flops"] == _scan_flops([(512, 128), (64, 256), (8, 512)], 8)


def test_segmamba_counts_three_scans_per_tom_layer():
    model = create_model("segmamba", in_channels=1, num_classes=2, num_slices="depth")
    r = count_flops(model, (1, 1, 32, 32, 32), conventions=("full",))["full"]
    assert r.parts["scan_calls"] == 3 * 8
    assert r.parts["scan_flops"] == _scan_flops([(16 ** 3, 96), (8 ** 3, 192), (4 ** 3, 384), (2 ** 3, 768)], 6)


def test_segmamba_profile_cli_at_32_and_its_upstream_mode_error(capsys):
    """The default slice counts follow the depth, so ``profile segmamba --size 32`` runs (24 scans); the strict
    ``num_slices='upstream'`` refuses that depth with one clear error."""
    assert main(["profile", "segmamba", "--size", "32", "--no-latency", "--no-used", "--json"]) == 0
    assert '"scan_calls": 24' in capsys.readouterr().out
    import pytest
    with pytest.raises(ValueError, match="input depth of 128"):
        profile_model(create_model("segmamba", num_slices="upstream"), size=32, latency=False, used_params=False)


def test_used_parameters_of_a_3d_network_from_a_32_cube():
    """The 'used' pass runs on a 32^3 volume for 3-D networks; nnMamba uses every parameter (spec:
    trees/nnmamba_unused.txt is empty)."""
    p = profile_model("nnmamba", size=64, in_channels=1, num_classes=16, latency=False, conventions=())
    assert p.params.total == p.params.used == 15_959_598 and p.params.unused == []
