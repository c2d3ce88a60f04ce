"""A 3-D nnU-Net-style network trained on a patch equal to its strides' product (32³ for the 6-stage brats128
plan) ended in torch's "Expected more than 1 spatial element when training" from instance norm at the one-voxel
bottleneck (evaluation too). Now one ValueError names the size, the strides' product and a size that works."""
import pytest
import torch

from mambaseg.models import create_model


@pytest.mark.parametrize("name", ["nnunet_3d", "umamba_bot_3d"])
def test_training_patch_with_a_one_voxel_bottleneck_is_one_line(name):
    torch.manual_seed(0)
    net = create_model(name, in_channels=1, num_classes=2, patch_size=(16, 16, 16), features_per_stage=[4, 8, 16])
    d = net.input_divisor
    x = torch.randn(1, 1, *d)
    for mode in (True, False):
        with pytest.raises(ValueError, match=r"leaves one voxel at the deepest stage .* use a larger patch"):
            net.train(mode)(x)
    bigger = torch.randn(1, 1, 2 * d[0], *d[1:])
    assert net.train()(bigger).shape == (1, 2, *bigger.shape[2:])  # the size the message suggests trains
