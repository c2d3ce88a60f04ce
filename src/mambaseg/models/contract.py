"""The model contract: what every registered network provides and what the engine, export and profiling read.

Networks inherit it through :class:`~mambaseg.models.backbone.BackboneMixin` (``class VMUNet(BackboneMixin,
nn.Module)``) and set plain attributes; nothing here builds layers. The engine reads these names directly, never
with ``getattr`` fallbacks:

=========================  ===================================================================================
``spatial_dims``           2 or 3: the number of spatial axes of the input (B, C, *spatial)
``in_channels``            input channels (set by the constructor)
``num_classes``            output channels of the logits (set by the constructor)
``downsample_factor``      the input-size rule: every spatial side must be a multiple of it (an int for every
                           axis, or a tuple with one entry per axis); 1 = any size
``fixed_input_size``       ``None``, or the one size (tuple per axis) the network was built for (Swin-Unet's
                           position tables): then that is the only size it takes
``default_input_size``     the size the paper trained at: an int (the same on every axis) or a tuple per axis.
                           Stored here only: the registry reads it from the class (``model_info(n).default_size``)
``returns_list()``         output kind in the current mode: False -> ``forward`` returns logits
                           (B, num_classes, *spatial); True -> a list of logits (deep supervision: nnU-Net
                           full resolution first, UNet++ shallow head first); networks with deep supervision
                           override it
``feature_info``           one dict per encoder stage (``num_chs``, ``reduction``, ``module``; timm's convention)
``encoder_modules``        dotted paths of the modules ``forward_intermediates`` uses (``features_only``)
=========================  ===================================================================================
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

from mambaseg.utils.convert import as_size

__all__ = ["SegmentationNetwork"]

Size = Union[int, Tuple[int, ...]]


class SegmentationNetwork:
    """Mixin holding the contract's attributes and their defaults (see the module docstring)."""

    spatial_dims: int = 2
    in_channels: int
    num_classes: int
    downsample_factor: Size = 1
    default_input_size: Optional[Size] = None
    feature_info: List[Dict] = []
    encoder_modules: Sequence[str] = ()

    def returns_list(self) -> bool:
        """Output kind in the current (train / eval) mode: True when ``forward`` returns a list of logits."""
        return False

    @property
    def fixed_input_size(self) -> Optional[Tuple[int, ...]]:
        """The one input size this network takes, or ``None`` when any multiple of ``downsample_factor`` works."""
        return None

    @property
    def input_divisor(self) -> Tuple[int, ...]:
        """``downsample_factor`` as one int per spatial axis."""
        return as_size(self.downsample_factor, self.spatial_dims, "downsample_factor")

    @classmethod
    def class_default_size(cls) -> Optional[Tuple[int, ...]]:
        """The class's ``default_input_size`` per axis (``None`` if the class sets none)."""
        d = cls.default_input_size
        return None if d is None or isinstance(d, property) else as_size(d, cls.spatial_dims, "default_input_size")

    @property
    def input_size(self) -> Tuple[int, ...]:
        """The size to feed this network when none is given: its fixed size, else its default size."""
        fixed = self.fixed_input_size
        if fixed is not None:
            return tuple(fixed)
        return as_size(self.default_input_size if self.default_input_size is not None else 256, self.spatial_dims)

