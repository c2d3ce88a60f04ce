"""Building blocks several networks share (written once): generic layers, conv / nnU-Net / UNETR / Swin blocks, the
Mamba-1 block, VMamba's SS2D (v0 and v2), MambaVision and the U-Mamba family's blocks. Blocks import only
:mod:`mambaseg.ops` and each other."""
