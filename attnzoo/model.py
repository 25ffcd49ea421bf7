"""A tiny pre-LayerNorm decoder: embed -> [Block: attention -> MLP?] x L -> logits.

Attention-only models (`mlp=False`) are what induction-head studies use (Elhage et al. 2021).
Incremental decoding is the same forward pass with a cache, one `KVCache` per layer:

  cache = model.init_cache(batch_size=B, max_len=S_max)
  logits, cache = model(prompt, cache=cache)           # prefill: prompt [B, P]
  logits, cache = model(token[:, None], cache=cache)   # one step: logits [B, 1, V]
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attnzoo import attention
from attnzoo.layers import KVCache, MultiHeadAttention

POSITIONS = ('learned', 'sinusoidal', 'rope', 'none')


def sinusoidal(length: int, d_model: int, start=0):
  """[length, d_model] sinusoidal position table (Vaswani et al. 2017) of positions
  start ... start + length - 1."""
  pos = (start + jnp.arange(length, dtype=jnp.float32))[:, None]
  freqs = 10000.0 ** (-jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model)[None, :]
  table = jnp.zeros((length, d_model))
  table = table.at[:, 0::2].set(jnp.sin(pos * freqs))
  return table.at[:, 1::2].set(jnp.cos(pos * freqs[:, : d_model // 2]))


class Block(nnx.Module):

  def __init__(self, cfg, *, core, rngs: nnx.Rngs, index: int = 0):
    d = cfg.d_model
    use_rope = cfg.positions == 'rope' and index not in tuple(cfg.get('nope_layers', ()))
    self.norm1 = nnx.LayerNorm(d, rngs=rngs)
    self.attn = MultiHeadAttention(
        d, cfg.num_heads, num_kv_heads=cfg.num_kv_heads, attention_name=cfg.attention.name,
        options=dict(cfg.attention.get(cfg.attention.name, {})), use_rope=use_rope,
        rope_fraction=cfg.get('rope_fraction', 1.0),
        scalable_softmax=cfg.get('scalable_softmax', False),
        smear_keys=cfg.get('smear_keys', False), core=core, rngs=rngs)
    cross = cfg.get('cross_attention', False)
    self.norm_c = nnx.LayerNorm(d, rngs=rngs) if cross else None
    self.cross = (MultiHeadAttention(d, cfg.num_heads, attention_name='cross', rngs=rngs)
                  if cross else None)
    self.norm2 = nnx.LayerNorm(d, rngs=rngs) if cfg.mlp else None
    self.mlp = (nnx.Sequential(nnx.Linear(d, 4 * d, rngs=rngs), nnx.gelu,
                               nnx.Linear(4 * d, d, rngs=rngs)) if cfg.mlp else None)

  def __call__(self, x, *, causal, key_mask=None, memory=None, memory_mask=None,
               return_attention=False, head_mask=None, rng=None, cache=None, positions=None):
    """x [B, T, d] -> (x, A [B, H, T, T] or None, the updated cache or None)."""
    A = None
    if cache is not None:
      h, cache = self.attn(self.norm1(x), head_mask=head_mask, cache=cache)
    else:
      h = self.attn(self.norm1(x), causal=causal, key_mask=key_mask,
                    return_attention=return_attention, head_mask=head_mask, rng=rng,
                    positions=positions)
      h, A = h if return_attention else (h, None)
    x = x + h
    if self.cross is not None:
      rng = None if rng is None else jax.random.fold_in(rng, 1)
      x = x + self.cross(self.norm_c(x), memory, causal=False, key_mask=memory_mask, rng=rng)
    if self.mlp is not None:
      x = x + self.mlp(self.norm2(x))
    return x, A, cache


class Decoder(nnx.Module):
  """Decoder-only LM (optionally cross-attending to an embedded source sequence).

  cfg is the `model` ConfigDict: vocab_size, d_model, num_layers, num_heads, num_kv_heads, mlp,
  positions (learned | sinusoidal | rope | none), max_len, causal, attention.name and
  attention.<variant>.<option>, optional cross_attention and smear_keys.
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    attention.base.check(cfg.positions in POSITIONS, 'model.positions', cfg.positions,
                         f'expected one of {POSITIONS}')
    for field in ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'max_len'):
      attention.base.check(cfg[field] > 0, f'model.{field}', cfg[field], 'must be positive')
    name = cfg.attention.name
    entry = attention.get(name)  # unknown names fail here, listing the known ones
    self.causal = cfg.get('causal', True)
    attention.base.check(not self.causal or entry.capabilities.causal, 'model.attention.name',
                         name, 'variant is not causal-capable; use model.causal=False')
    attention.base.check(self.causal or not cfg.get('scalable_softmax', False),
                         'model.scalable_softmax', True,
                         'scales a query by its causal key count: needs model.causal=True')
    self.positions, self.max_len, self.d_model = cfg.positions, cfg.max_len, cfg.d_model
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs)
    if cfg.positions == 'learned':
      self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (cfg.max_len, cfg.d_model)))
    # A variant that declares itself layer-shared is built once and reused by every layer.
    options = dict(cfg.attention.get(name, {}))
    core = (attention.make_attention(name, rngs=rngs, **options)
            if attention.layer_shared(name, options) else None)
    self.blocks = nnx.List([Block(cfg, core=core, rngs=rngs, index=i)
                            for i in range(cfg.num_layers)])
    self.norm = nnx.LayerNorm(cfg.d_model, rngs=rngs)
    self.head = nnx.Linear(cfg.d_model, cfg.vocab_size, rngs=rngs)

  def embed_tokens(self, tokens, start=0):
    """tokens [B, T] at positions start ... start + T - 1 (start may be traced) -> [B, T, d]."""
    T = tokens.shape[1]
    attention.base.check(T <= self.max_len, 'tokens.shape[1]', T,
                         f'longer than model.max_len={self.max_len}')
    x = self.embed(tokens)
    if self.positions == 'learned':
      x = x + jax.lax.dynamic_slice_in_dim(self.pos[...], start, T)[None]
    elif self.positions == 'sinusoidal':
      x = x + sinusoidal(T, self.d_model, start)[None]
    return x

  def check_decodable(self):
    """Raises ValueError naming the field when this model cannot decode with a KV cache."""
    attention.base.check(self.causal, 'model.causal', self.causal,
                         'incremental decoding needs a causal model')
    for i, block in enumerate(self.blocks):
      block.attn.check_decodable()
      attention.base.check(block.cross is None, f'blocks[{i}].cross', 'present',
                           'cross-attention models are not decodable here')

  def init_cache(self, *, batch_size: int, max_len: int | None = None,
                 dtype=jnp.float32) -> tuple[KVCache, ...]:
    """One empty KVCache per layer for `batch_size` sequences of up to `max_len` positions
    (default model.max_len); raises ValueError if the model cannot decode."""
    self.check_decodable()
    max_len = self.max_len if max_len is None else max_len
    attention.base.check(0 < max_len <= self.max_len, 'max_len', max_len,
                         f'must be in [1, model.max_len={self.max_len}]')
    return tuple(b.attn.init_cache(batch_size, max_len, dtype) for b in self.blocks)

  def __call__(self, tokens, *, key_mask=None, source=None, source_mask=None,
               return_attention: bool = False, head_mask=None, rng=None, cache=None,
               positions=None):
    """tokens [B, T] int -> logits [B, T, V] (and [A_layer [B, H, T, T]] if return_attention).

    positions [T] or [B, T] (RoPE models only): the positions the tokens sit at (default 0 ...
    T - 1), e.g. a sorted random subset of a longer range (`task.random_positions`).
    source [B, S] tokens to cross-attend to (encoder-decoder tasks); head_mask [L, H] scales
    each head's output (0 ablates it); rng a PRNG key for random variants (layer i uses
    fold_in(rng, i); without it they use their own RNG stream, see `attention.Attention`).

    cache (from `init_cache`): tokens are positions cache[0].length ... + T - 1, attending to
    the cached ones; returns (logits, updated cache). A cache holding S_max positions takes
    at most S_max tokens in all (later writes would be clipped)."""
    attention.base.check(positions is None or (self.positions == 'rope' and cache is None),
                         'positions', 'given', 'only RoPE models take positions, and not with a '
                         f'cache (model.positions={self.positions})')
    if cache is not None:
      self.check_decodable()
      x = self.embed_tokens(tokens, cache[0].length)
      new = []
      for block, layer_cache in zip(self.blocks, cache):
        x, _, layer_cache = block(x, causal=True, cache=layer_cache,
                                  head_mask=None if head_mask is None else head_mask[len(new)])
        new.append(layer_cache)
      return self.head(self.norm(x)), tuple(new)
    x = self.embed_tokens(tokens)
    memory = None
    if source is not None:
      memory = self.embed(source)
      S = source.shape[1]
      memory = memory + (self.pos[None, :S] if self.positions == 'learned'
                         else sinusoidal(S, self.d_model)[None])
    attns = []
    for i, block in enumerate(self.blocks):
      x, A, _ = block(x, causal=self.causal, key_mask=key_mask, memory=memory,
                      memory_mask=source_mask, return_attention=return_attention,
                      head_mask=None if head_mask is None else head_mask[i],
                      rng=None if rng is None else jax.random.fold_in(rng, i),
                      positions=positions)
      attns.append(A)
    logits = self.head(self.norm(x))
    return (logits, attns) if return_attention else logits
