"""A tiny pre-LayerNorm decoder: embed -> [Block: attention -> MLP?] x L -> logits.

Attention-only models (`mlp=False`) are what induction-head studies use (Elhage et al. 2021).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attnzoo import attention
from attnzoo.layers import MultiHeadAttention

POSITIONS = ('learned', 'sinusoidal', 'rope', 'none')


def sinusoidal(length: int, d_model: int):
  """[length, d_model] sinusoidal position table (Vaswani et al. 2017)."""
  pos = jnp.arange(length, dtype=jnp.float32)[:, None]
  freqs = 10000.0 ** (-jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model)
  table = jnp.zeros((length, d_model))
  table = table.at[:, 0::2].set(jnp.sin(pos * freqs))
  return table.at[:, 1::2].set(jnp.cos(pos * freqs[: d_model // 2]))


class Block(nnx.Module):

  def __init__(self, cfg, *, core, rngs: nnx.Rngs):
    d = cfg.d_model
    self.norm1 = nnx.LayerNorm(d, rngs=rngs)
    self.attn = MultiHeadAttention(
        d, cfg.num_heads, num_kv_heads=cfg.num_kv_heads, attention_name=cfg.attention.name,
        options=dict(cfg.attention.get(cfg.attention.name, {})), use_rope=cfg.positions == 'rope',
        smear_keys=cfg.get('smear_keys', False), core=core, rngs=rngs)
    cross = cfg.get('cross_attention', False)
    self.norm_c = nnx.LayerNorm(d, rngs=rngs) if cross else None
    self.cross = (MultiHeadAttention(d, cfg.num_heads, attention_name='cross', rngs=rngs)
                  if cross else None)
    self.norm2 = nnx.LayerNorm(d, rngs=rngs) if cfg.mlp else None
    self.mlp = (nnx.Sequential(nnx.Linear(d, 4 * d, rngs=rngs), nnx.gelu,
                               nnx.Linear(4 * d, d, rngs=rngs)) if cfg.mlp else None)

  def __call__(self, x, *, causal, key_mask, memory, memory_mask, return_attention, head_mask):
    h = self.attn(self.norm1(x), causal=causal, key_mask=key_mask,
                  return_attention=return_attention, head_mask=head_mask)
    h, A = h if return_attention else (h, None)
    x = x + h
    if self.cross is not None:
      x = x + self.cross(self.norm_c(x), memory, causal=False, key_mask=memory_mask)
    if self.mlp is not None:
      x = x + self.mlp(self.norm2(x))
    return x, A


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
    self.positions, self.max_len, self.d_model = cfg.positions, cfg.max_len, cfg.d_model
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs)
    if cfg.positions == 'learned':
      self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (cfg.max_len, cfg.d_model)))
    # Linformer's layer-wise sharing: one core module (one E = F) reused by every layer.
    options = cfg.attention.get(name, {})
    core = (attention.make_attention(name, rngs=rngs, **options)
            if options.get('share', None) == 'layer-wise' else None)
    self.blocks = nnx.List([Block(cfg, core=core, rngs=rngs) for _ in range(cfg.num_layers)])
    self.norm = nnx.LayerNorm(cfg.d_model, rngs=rngs)
    self.head = nnx.Linear(cfg.d_model, cfg.vocab_size, rngs=rngs)

  def embed_tokens(self, tokens):
    T = tokens.shape[1]
    attention.base.check(T <= self.max_len, 'tokens.shape[1]', T,
                         f'longer than model.max_len={self.max_len}')
    x = self.embed(tokens)
    if self.positions == 'learned':
      x = x + self.pos[None, :T]
    elif self.positions == 'sinusoidal':
      x = x + sinusoidal(T, self.d_model)[None]
    return x

  def __call__(self, tokens, *, key_mask=None, source=None, source_mask=None,
               return_attention: bool = False, head_mask=None):
    """tokens [B, T] int -> logits [B, T, V] (and [A_layer [B, H, T, T]] if return_attention).

    source [B, S] tokens to cross-attend to (encoder-decoder tasks); head_mask [L, H] scales
    each head's output (0 ablates it)."""
    x = self.embed_tokens(tokens)
    memory = None
    if source is not None:
      memory = self.embed(source)
      S = source.shape[1]
      memory = memory + (self.pos[None, :S] if self.positions == 'learned'
                         else sinusoidal(S, self.d_model)[None])
    attns = []
    for i, block in enumerate(self.blocks):
      x, A = block(x, causal=self.causal, key_mask=key_mask, memory=memory,
                   memory_mask=source_mask, return_attention=return_attention,
                   head_mask=None if head_mask is None else head_mask[i])
      attns.append(A)
    logits = self.head(self.norm(x))
    return (logits, attns) if return_attention else logits
