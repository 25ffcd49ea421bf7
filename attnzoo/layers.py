"""MultiHeadAttention: Q/K/V/O projections around a registry attention core.

x [B, T, d_model] -> q [B, T, H, D], k, v [B, S, G, D] -> core -> [B, T, H, D] -> [B, T, d_model].
G (K/V heads) comes from the variant entry (`mqa` projects 1, `gqa` num_kv_heads, ...).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attnzoo import attention


def rope(x, positions, base: float = 10000.0):
  """Rotary position embedding (Su et al. 2021) on x [B, T, N, D] (D even), positions [T]."""
  D = x.shape[-1]
  freqs = base ** (-jnp.arange(0, D, 2, dtype=jnp.float32) / D)  # [D/2]
  angles = positions[:, None].astype(jnp.float32) * freqs[None, :]  # [T, D/2]
  sin, cos = jnp.sin(angles)[None, :, None], jnp.cos(angles)[None, :, None]  # [1, T, 1, D/2]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


class SmearFactor(nnx.Param):
  pass


class MultiHeadAttention(nnx.Module):
  """Multi-head attention whose core is the registry variant `attention` with `options`.

  `core` may be passed to share one core module (and its parameters) between layers.
  `smear_keys` (Olsson et al. 2022): k_j <- sigmoid(a) k_j + (1 - sigmoid(a)) k_{j-1}, a learned
  per K/V head, which lets a single layer form induction heads.
  """

  def __init__(self, d_model: int, num_heads: int, *, num_kv_heads: int | None = None,
               attention_name: str = 'dense', options: dict | None = None, use_rope: bool = False,
               smear_keys: bool = False, core: attention.Attention | None = None,
               rngs: nnx.Rngs):
    entry = attention.get(attention_name)
    attention.base.check(d_model % num_heads == 0, 'model.d_model', d_model,
                         f'must be divisible by num_heads={num_heads}')
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    attention.base.check(num_kv_heads > 0 and num_heads % num_kv_heads == 0,
                         'model.num_kv_heads', num_kv_heads,
                         f'must divide num_heads={num_heads}')
    self.num_heads, self.head_dim = num_heads, d_model // num_heads
    self.num_kv_heads = entry.kv_heads(num_heads, num_kv_heads)
    self.shared_qk = entry.capabilities.shared_qk
    self.use_rope = use_rope
    H, G, D = num_heads, self.num_kv_heads, self.head_dim
    if use_rope:
      attention.base.check(D % 2 == 0, 'head_dim', D, 'RoPE needs an even head_dim')
    linear = lambda i, o: nnx.Linear(i, o, use_bias=False, rngs=rngs)
    self.q_proj = linear(d_model, H * D)
    self.k_proj = None if self.shared_qk else linear(d_model, G * D)
    self.v_proj = linear(d_model, G * D)
    self.o_proj = linear(H * D, d_model)
    self.smear = SmearFactor(jnp.zeros((H if self.shared_qk else G,))) if smear_keys else None
    self.core = core if core is not None else attention.make_attention(
        attention_name, rngs=rngs, **(options or {}))

  def __call__(self, x, context=None, *, causal: bool | None = None, key_mask=None,
               return_attention: bool = False, head_mask=None):
    """x [B, T, d]; context [B, S, d] for cross-attention (else self); head_mask [H] scales
    each head's output (0 ablates it). Returns y [B, T, d] and, if asked, A [B, H, T, S]."""
    B, T, _ = x.shape
    src = x if context is None else context
    S = src.shape[1]
    H, G, D = self.num_heads, self.num_kv_heads, self.head_dim
    q = self.q_proj(x).reshape(B, T, H, D)
    v = self.v_proj(src).reshape(B, S, G, D)
    if self.use_rope and context is None:
      q = rope(q, jnp.arange(T))
    if self.shared_qk:
      attention.base.check(context is None, 'context', 'given',
                           f'{self.core.name} shares Q and K, so it only does self-attention')
      k = q
    else:
      k = self.k_proj(src).reshape(B, S, G, D)
      if self.use_rope and context is None:
        k = rope(k, jnp.arange(S))
    if self.smear is not None:
      a = jax.nn.sigmoid(self.smear[...])[None, None, :, None]  # [1, 1, K/V heads, 1]
      prev = jnp.pad(k, [(0, 0), (1, 0), (0, 0), (0, 0)])[:, :-1]
      k = a * k + (1 - a) * prev
    out = self.core(q, k, v, causal=causal, key_mask=key_mask)  # [B, T, H, D]
    if head_mask is not None:
      out = out * head_mask[None, None, :, None].astype(out.dtype)  # [1, 1, H, 1]
    y = self.o_proj(out.reshape(B, T, H * D))
    if not return_attention:
      return y
    return y, self.core.attention_matrix(q, k, v, causal=causal, key_mask=key_mask)
