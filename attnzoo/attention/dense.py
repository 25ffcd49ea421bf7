"""Dense softmax attention (Vaswani et al. 2017), the reference every variant is checked against.

Cost: O(T·S) time and memory (the [T, S] score matrix is materialized). Presets registered here:
`causal` (causal by default), `cross` (T != S), `mqa` (MultiHeadAttention projects one K/V head)
and `gqa` (it projects `model.num_kv_heads` K/V heads, or num_heads // 2 when that equals
num_heads). All are the same mechanism; the presets only change defaults.
"""
from __future__ import annotations

import dataclasses

import einops
import jax.numpy as jnp

from attnzoo.attention import base


def scores(q, k):
  """q [B, T, H, D], k [B, S, G, D] -> logits [B, G, R, T, S] in float32, scaled by 1/sqrt(D)."""
  # Scale q ([T, D]) rather than the logits ([T, S]): one pass less over the big array.
  qg = base.group_heads(q, k.shape[2]).astype(jnp.float32) / jnp.sqrt(q.shape[-1])
  return jnp.einsum('btgrd,bsgd->bgrts', qg, k.astype(jnp.float32))


def attention_probs(q, k, *, causal: bool, key_mask=None):
  """Softmax attention matrix A [B, H, T, S] (float32); fully masked rows are zero."""
  s = scores(q, k)
  mask = base.mask_bias(q.shape[1], k.shape[1], causal=causal, key_mask=key_mask)
  A = base.masked_softmax(s, mask, may_empty_rows=key_mask is not None)
  return einops.rearrange(A, 'b g r t s -> b (g r) t s')


def dot_product_attention(q, k, v, *, causal: bool = False, key_mask=None):
  """Softmax attention: q [B, T, H, D], k, v [B, S, G, D] -> [B, T, H, D]."""
  return base.apply_matrix(attention_probs(q, k, causal=causal, key_mask=key_mask), v)


@base.register('dense', capabilities=base.Capabilities(
    causal=True, cross=True, key_mask=True, exact=True, cost='N^2'))
class Dense(base.Attention):
  """Dense softmax attention (non-causal by default)."""

  @dataclasses.dataclass(frozen=True)
  class Options:
    pass

  @classmethod
  def decodable(cls, options) -> bool:
    return True  # exact softmax: attention over the cache is the same math

  def forward(self, q, k, v, *, causal, key_mask):
    return dot_product_attention(q, k, v, causal=causal, key_mask=key_mask)

  def matrix(self, q, k, v, *, causal, key_mask):
    return attention_probs(q, k, causal=causal, key_mask=key_mask)


_CAPS = base.get('dense').capabilities
base.register('causal', capabilities=_CAPS, default_causal=True,
              doc='Dense attention, causal by default.')(Dense)
base.register('cross', capabilities=_CAPS,
              doc='Dense attention for cross-attention (T != S).')(Dense)
base.register('mqa', capabilities=_CAPS, kv_heads=lambda h, g: 1,
              doc='Dense attention; MultiHeadAttention projects one K/V head (Shazeer 2019).')(Dense)
base.register('gqa', capabilities=_CAPS, kv_heads=lambda h, g: g if g < h else max(1, h // 2),
              doc='Dense attention; MultiHeadAttention projects model.num_kv_heads K/V heads '
                  '(num_heads // 2 if that equals num_heads) (Ainslie et al. 2023).')(Dense)
