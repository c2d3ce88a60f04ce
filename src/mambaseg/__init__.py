"""mambaseg: 2D medical image segmentation with Mamba (selective state-space) U-Nets.

Layers, imported one way only (checked by import-linter, contracts in pyproject.toml): ``cli -> export, profiling
-> engine -> data | metrics | losses -> models -> ops -> utils``.
"""

__version__ = "0.1.0"
