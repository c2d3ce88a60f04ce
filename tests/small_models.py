"""Small configurations of every registered network, for tests that run all of them (backbone, save/load,
ONNX). A network missing here (added later) is built with its defaults at 64x128 (3-D networks: at SIZE_3D)."""

from mambaseg.models import create_model, model_info

_VSS = dict(embed_dim=16, depths=[1, 1, 1, 1])
_HMT = dict(dim=16, in_dim=8, depths=[1, 1, 2, 2], num_heads=[1, 2, 2, 4], window_size=[4, 4, 2, 1])
SMALL = {
    "vmunet": dict(_VSS, depths_decoder=[1, 1, 1, 1]),
    "vmunet_v2": dict(_VSS, mid_channel=8),
    "mamba_unet": dict(_VSS),
    "hmt_unet": dict(_HMT),
    "hmt_unet_small": dict(_HMT),
    "hmt_unet_base": dict(_HMT),
    "hmt_unet_paper": dict(_HMT),
    "unet": dict(base_channels=4),
    "att_unet": dict(base_channels=4),
    "unet_pp": dict(base_channels=4),
    "swin_unet": dict(img_size=(64, 128), window_size=2, embed_dim=12, depths=(1, 1, 1, 1)),
    # nnU-Net-planned networks: the 64x64 plan (UMambaEnc takes exactly its plan's size)
    "umamba_bot": dict(patch_size=64),
    "umamba_enc": dict(patch_size=64),
    "lkm_unet": dict(patch_size=64),
    "lightm_unet": dict(init_filters=8),
    "swin_umamba": dict(depths=(1, 1, 1, 1)),
    "swin_umamba_d": dict(depths=(1, 1, 1, 1)),
    "msvm_unet": dict(depths=(1, 1, 1, 1)),
    # 3-D networks: a (D, H, W) = (8, 16, 32) plan (strides (2,2,2), (1,2,2)), tiny widths
    "umamba_bot_3d": dict(patch_size=(8, 16, 32), features_per_stage=[8, 16, 32]),
    "umamba_enc_3d": dict(patch_size=(8, 16, 32), features_per_stage=[8, 16, 32]),
    "umamba_nomamba_3d": dict(patch_size=(8, 16, 32), features_per_stage=[8, 16, 32]),
    "lkm_unet_3d": dict(patch_size=(8, 16, 32), features_per_stage=[8, 16, 32]),
    "nnunet_3d": dict(patch_size=(8, 16, 32), features_per_stage=[8, 16, 32]),
    "nnunet_resenc_3d": dict(patch_size=(8, 16, 32), features_per_stage=[8, 16, 32]),
    "lightm_unet_3d": dict(init_filters=8, blocks_down=[1, 1, 1, 1]),
}
# networks that take only one input size (their plan's): that size instead of SIZE
FIXED_SIZE = {"umamba_enc": (64, 64)}
SIZE = (64, 128)  # (H, W); not square so channels-last and channels-first maps cannot be confused
SIZE_3D = (8, 16, 32)  # (D, H, W) for the 3-D networks, no two axes equal


def is_3d(name) -> bool:
    """A network registered with ``spatial_dims=3`` (takes (B, C, D, H, W) volumes)."""
    return model_info(name).extra.get("spatial_dims", 2) == 3


def size_for(name, default=None):
    """The spatial size a test should feed ``small_model(name)``: ``default`` (SIZE) unless the network is
    fixed-size; SIZE_3D for 3-D networks."""
    if is_3d(name):
        return SIZE_3D
    return FIXED_SIZE.get(name, default or SIZE)


def small_model(name, in_channels=3, num_classes=1, **extra):
    """``extra`` overrides the small configuration."""
    return create_model(name, in_channels=in_channels, num_classes=num_classes, **{**SMALL.get(name, {}), **extra})
