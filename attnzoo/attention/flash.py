"""FlashAttention (Dao et al. 2022): exact softmax attention by a tiled Pallas kernel.

Same math as `dense`, but IO-aware: the kernel (kernels/flash_attention.py) streams key tiles
through an online softmax in float32 and never writes the [T, S] score matrix to device memory;
the backward recomputes probabilities from the saved logsumexp. GQA goes through the kernel's
K/V index maps (no repeat). Optional sliding window (`window`, as
`jax.nn.dot_product_attention(local_window_size=window)`): with it, key blocks outside the band
are skipped by the loop bounds, so the cost drops from O(T·S·D) to O(T·window·D).

The `backend` option picks the kernel: 'mosaic_tpu' (key blocks as a grid axis, state in VMEM),
'triton' (key loop over tiles in global memory), 'mosaic_gpu' (TMA + wgmma, forward only,
bf16 / fp16, no key_mask), 'interpret' (the generic Pallas interpreter, the CPU default) or
'auto' (by platform: Mosaic GPU forward on Hopper with Triton for gradients, Triton on older
GPUs). Every backend lowers on CPU through `jax.export` (tests); the TPU kernel also runs there
in TPU interpret mode. Under an ambient mesh (`jax.set_mesh`) with a `data` axis the kernel runs
per shard through `shard_map`. Cost: O(T·S·D) time, O((T + S)·D) memory, and a few
[block, D] tiles of on-chip memory per program whatever the length.
"""
from __future__ import annotations

import dataclasses

import einops

from attnzoo.attention import base, dense
from kernels import flash_attention as kernel


def flash_attention(q, k, v, *, causal: bool = False, key_mask=None, window: int = 0,
                    block_q: int = 128, block_k: int = 128, backend: str = 'auto',
                    interpret: str = 'auto'):
  """Exact attention by the Pallas kernel: q [B, T, H, D], k, v [B, S, G, D] -> [B, T, H, D]."""
  return kernel.flash_attention(q, k, v, causal=causal, key_mask=key_mask, window=window,
                                block_q=block_q, block_k=block_k, backend=backend,
                                interpret=kernel.resolve_interpret(interpret))


def flash_matrix(q, k, *, causal: bool, key_mask=None, window: int = 0):
  """The attention matrix A [B, H, T, S] (float32) the kernel computes, window included."""
  mask = base.mask_bias(q.shape[1], k.shape[1], causal=causal, key_mask=key_mask,
                        window=window or None)
  A = base.masked_softmax(dense.scores(q, k), mask)
  return einops.rearrange(A, 'b g r t s -> b (g r) t s')


@base.register('flash', capabilities=base.Capabilities(
    causal=True, cross=True, key_mask=True, exact=True, cost='N^2'))
class Flash(base.Attention):
  """Exact softmax attention by the Pallas flash kernels (one per backend; interpret on CPU)."""

  @dataclasses.dataclass(frozen=True)
  class Options:
    block_q: int = 128  # query tile (power of two >= 16; shrunk for short inputs)
    block_k: int = 128  # key tile (power of two >= 16; shrunk for short inputs)
    window: int = 0  # 0 = full attention; else keys with |i - j| <= window (j <= i if causal)
    backend: str = 'auto'  # 'auto', 'mosaic_gpu', 'triton', 'mosaic_tpu' or 'interpret'
    interpret: str = 'auto'  # 'auto' (interpret on CPU only), 'true' or 'false'

    def __post_init__(self):
      for field in ('block_q', 'block_k'):
        b = getattr(self, field)
        base.check(isinstance(b, int) and b >= kernel.MIN_BLOCK and b & (b - 1) == 0,
                   f'flash.{field}', b,
                   f'must be a power of two >= {kernel.MIN_BLOCK} (Triton tile constraint)')
      base.check(isinstance(self.window, int) and self.window >= 0, 'flash.window',
                 self.window, 'must be an int >= 0 (0 = no window)')
      base.check(self.backend in kernel.BACKENDS, 'flash.backend', self.backend,
                 f'must be one of {", ".join(kernel.BACKENDS)}')
      base.check(self.interpret in ('auto', 'true', 'false'), 'flash.interpret',
                 self.interpret, "must be 'auto', 'true' or 'false'")

  @classmethod
  def decodable(cls, options) -> bool:
    return options.window == 0  # a window would need a rolling cache

  def forward(self, q, k, v, *, causal, key_mask):
    o = self.options
    return flash_attention(q, k, v, causal=causal, key_mask=key_mask, window=o.window,
                           block_q=o.block_q, block_k=o.block_k, backend=o.backend,
                           interpret=o.interpret)

  def matrix(self, q, k, v, *, causal, key_mask):
    return flash_matrix(q, k, causal=causal, key_mask=key_mask, window=self.options.window)
