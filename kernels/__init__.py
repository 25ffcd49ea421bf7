"""Pallas kernels behind attnzoo's kernel-backed variants.

`kernels.flash_attention.flash_attention` is the tiled flash-attention kernel (the `flash`
variant). The function is not re-exported here, so the module name is never shadowed.
"""
from kernels import flash_attention  # noqa: F401
