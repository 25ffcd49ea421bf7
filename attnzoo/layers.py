"""MultiHeadAttention: Q/K/V/O projections around a registry attention core, with a KV cache.

x [B, T, d_model] -> q [B, T, H, D], k, v [B, S, G, D] -> core -> [B, T, H, D] -> [B, T, d_model].
G (K/V heads) comes from the variant entry (`mqa` projects 1, `gqa` num_kv_heads, ...).

Incremental decoding passes a `KVCache` in and gets the updated one back (a functional cache,
so a decode step is a pure function of (parameters, cache, tokens) that jit can donate the
cache to). The cache holds keys k [B, G, D, S_max] and values v [B, G, S_max, D]: heads first
and keys transposed, so attending is two plain matrix products per K/V head that read the
cache once (`base.cached_attention`); its size is 2 · B · S_max · G · D elements per layer, so
MHA (G = H) stores H / G times more than GQA and H times more than MQA (G = 1) (Shazeer 2019;
Ainslie et al. 2023). New entries are written first and then read: the old buffer is dead after
the write, so XLA updates a donated cache in place.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from attnzoo import attention


def rope(x, positions, base: float = 10000.0, fraction: float = 1.0):
  """Rotary position embedding (Su et al. 2021) on x [B, T, N, D] (D even), positions [T] or
  [B, T].

  fraction < 1 keeps only that fraction of the D/2 frequencies, the highest (p-RoPE, Barbero et
  al. 2024): the others rotate by 0, so those dimensions carry content alone. A low frequency
  turns less than a full cycle within a training length, so at longer distances it shows
  angles never trained on; the high ones cycle many times and show none new."""
  D = x.shape[-1]
  freqs = base ** (-jnp.arange(0, D, 2, dtype=jnp.float32) / D)  # [D/2], highest first
  freqs = jnp.where(jnp.arange(D // 2) < round(fraction * (D // 2)), freqs, 0.0)
  positions = jnp.atleast_2d(positions).astype(jnp.float32)  # [1 or B, T]
  angles = positions[:, :, None, None] * freqs[None, None, None, :]  # [1 or B, T, 1, D/2]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


class SmearFactor(nnx.Param):
  pass


class KVCache(NamedTuple):
  """One self-attention layer's keys and values so far (all after RoPE and key smearing)."""
  k: jax.Array  # [B, G, D, S_max], keys transposed
  v: jax.Array  # [B, G, S_max, D]
  last_k: jax.Array  # [B, G, D]: the newest key before smearing (smear_keys mixes it in next)
  length: jax.Array  # int32 scalar: positions 0 .. length - 1 are filled

  @property
  def max_len(self) -> int:
    return self.v.shape[2]


class MultiHeadAttention(nnx.Module):
  """Multi-head attention whose core is the registry variant `attention` with `options`.

  `core` may be passed to share one core module (and its parameters) between layers.
  `smear_keys` (Olsson et al. 2022): k_j <- sigmoid(a) k_j + (1 - sigmoid(a)) k_{j-1}, a learned
  per K/V head, which lets a single layer form induction heads.
  """

  def __init__(self, d_model: int, num_heads: int, *, num_kv_heads: int | None = None,
               attention_name: str = 'dense', options: dict | None = None, use_rope: bool = False,
               rope_fraction: float = 1.0, scalable_softmax: bool = False,
               smear_keys: bool = False, core: attention.Attention | None = None, rngs: nnx.Rngs):
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
    self.use_rope, self.rope_fraction = use_rope, rope_fraction
    self.scalable_softmax = scalable_softmax
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

  def place(self, q, k, index, positions=None):
    """Self-attention's q [B, T, H, D] and k [B, T, G, D], the tokens at indices `index` [T] of
    their sequence: rotated by `positions` ([T] or [B, T]; default `index`) if this layer uses
    RoPE, and q scaled by log_64(n), n = index + 1 the number of keys a causal query sees, if
    it uses Scalable-Softmax (Nakanishi 2025: attention that stays as peaked at a longer length
    as at the training length; 1 at n = 64)."""
    if self.use_rope:
      q, k = (rope(x, index if positions is None else positions, fraction=self.rope_fraction)
              for x in (q, k))
    if self.scalable_softmax:
      n = index.astype(jnp.float32) + 1
      q = q * (jnp.log(n) / jnp.log(64.0))[None, :, None, None]
    return q, k

  def project(self, x, context=None, positions=None):
    """x [B, T, d] (context [B, S, d] for cross-attention) -> q [B, T, H, D], k, v [B, S, G, D]
    after RoPE (at `positions`, default 0 ... T - 1), query scaling and key smearing: exactly
    what the core sees."""
    q, _, k, v = self._project(x, context, jnp.arange(x.shape[1]), None, positions)
    return q, k, v

  def _project(self, x, context, index, prev_k, positions=None):
    """q, the raw (unsmeared) keys, the keys the core sees, and v; x the tokens at `index` [T]
    (self-attention; see `place`), prev_k [B, G, D] the raw key before x's first token (None:
    zeros)."""
    B, T, _ = x.shape
    src = x if context is None else context
    S = src.shape[1]
    H, G, D = self.num_heads, self.num_kv_heads, self.head_dim
    q = self.q_proj(x).reshape(B, T, H, D)
    v = self.v_proj(src).reshape(B, S, G, D)
    if self.shared_qk:
      attention.base.check(context is None, 'context', 'given',
                           f'{self.core.name} shares Q and K, so it only does self-attention')
      raw = q
    else:
      raw = self.k_proj(src).reshape(B, S, G, D)
    if context is None:
      q, raw = self.place(q, raw, index, positions)
    k = raw
    if self.smear is not None:
      a = jax.nn.sigmoid(self.smear[...])[None, None, :, None]  # [1, 1, K/V heads, 1]
      first = jnp.zeros_like(raw[:, :1]) if prev_k is None else prev_k[:, None].astype(raw.dtype)
      k = a * raw + (1 - a) * jnp.concatenate([first, raw[:, :-1]], axis=1)
    return q, raw, k, v

  def check_decodable(self):
    """Raises ValueError naming the variant when its core cannot attend over a KV cache."""
    core = self.core
    attention.base.check(
        core.decodable(core.options), 'model.attention.name', core.name,
        f'this variant with {core.options} does not declare itself decodable: its causal '
        'core is not softmax attention over all earlier keys, so a KV cache cannot reproduce '
        'it (decodable: the exact causal variants, e.g. dense, blockwise, flash with window=0)')

  def init_cache(self, batch_size: int, max_len: int, dtype=jnp.float32) -> KVCache:
    """An empty cache for `batch_size` sequences of up to `max_len` positions."""
    self.check_decodable()
    G, D = self.num_kv_heads, self.head_dim
    return KVCache(k=jnp.zeros((batch_size, G, D, max_len), dtype),
                   v=jnp.zeros((batch_size, G, max_len, D), dtype),
                   last_k=jnp.zeros((batch_size, G, D), dtype),
                   length=jnp.zeros((), jnp.int32))

  def __call__(self, x, context=None, *, causal: bool | None = None, key_mask=None,
               return_attention: bool = False, head_mask=None, rng=None,
               cache: KVCache | None = None, positions=None):
    """x [B, T, d]; context [B, S, d] for cross-attention (else self); positions [T] or [B, T]
    the RoPE positions of self-attention (default 0 ... T - 1); head_mask [H] scales
    each head's output (0 ablates it); rng a PRNG key for random variants (see
    `attention.Attention`). Returns y [B, T, d] and, if asked, A [B, H, T, S].

    With `cache`, x holds positions cache.length ... + T - 1 and attends causally to them and
    to the cached ones; returns (y, updated cache)."""
    if cache is not None:
      return self._extend(x, cache, head_mask)
    q, k, v = self.project(x, context, positions)
    out = self.core(q, k, v, causal=causal, key_mask=key_mask, rng=rng)  # [B, T, H, D]
    y = self._output(out, head_mask)
    if not return_attention:
      return y
    return y, self.core.attention_matrix(q, k, v, causal=causal, key_mask=key_mask, rng=rng)

  def _output(self, out, head_mask):
    """out [B, T, H, D] -> y [B, T, d], each head scaled by head_mask [H] if given."""
    B, T, H, D = out.shape
    if head_mask is not None:
      out = out * head_mask[None, None, :, None].astype(out.dtype)  # [1, 1, H, 1]
    return self.o_proj(out.reshape(B, T, H * D))

  def _extend(self, x, cache: KVCache, head_mask):
    self.check_decodable()
    T = x.shape[1]
    attention.base.check(T <= cache.max_len, 'tokens.shape[1]', T,
                         f'longer than the cache (max_len={cache.max_len})')
    positions = cache.length + jnp.arange(T, dtype=jnp.int32)  # [T]
    q, raw, k, v = self._project(x, None, positions, cache.last_k)
    at = cache.length
    cache = KVCache(
        k=jax.lax.dynamic_update_slice(
            cache.k, jnp.transpose(k, (0, 2, 3, 1)).astype(cache.k.dtype), (0, 0, 0, at)),
        v=jax.lax.dynamic_update_slice(
            cache.v, jnp.transpose(v, (0, 2, 1, 3)).astype(cache.v.dtype), (0, 0, at, 0)),
        last_k=raw[:, -1].astype(cache.last_k.dtype), length=at + T)
    out = self.core.attend_cache(q, cache.k, cache.v, positions=positions)  # [B, T, H, D]
    return self._output(out, head_mask), cache
