"""mambaseg: 2D medical image segmentation with Mamba (selective state-space) U-Nets.

Layers, imported one way only: ``cli -> engine -> models, data, metrics, losses -> ops``.
"""

__version__ = "0.1.0"
