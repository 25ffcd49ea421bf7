"""KV-cache incremental decoding for the Decoder: prefill the prompt, then one token at a time.

The Decoder's own modules (embed, pos, blocks[i].norm1, blocks[i].attn.{q,k,v,o}_proj,
blocks[i].mlp, norm, head) are reused step by step; only the attention over the cache is written
here. Per layer the cache holds keys k [B, G, D, S_max] and values v [B, G, S_max, D] with
G = num_kv_heads: heads first and keys stored transposed, so a decode step is two plain matrix
products per K/V head, [M, D] x [D, S] and [M, S] x [S, D], each reading the cache once (with
keys as [S, D], XLA's CPU backend ran the product up to 2x slower for 2 query heads per K/V
head). Its size is 2 · L · B · S_max · G · D elements: MHA (G = H) stores H / G times more than
GQA and H times more than MQA (G = 1) (Shazeer 2019; Ainslie et al. 2023). The R = H // G query heads that share a
K/V head are grouped ([B, G, T·R, D]), never by repeating K/V.

Decodable variants are the exact, causal ones whose math is softmax over all earlier keys
(`dense`, `causal`, `cross`, `mqa`, `gqa`, `blockwise`, `flash` with window 0): for those,
attention over the cache equals the training-time core. Approximate or windowed variants
(Longformer, Reformer, Performer, Linformer) would need their own cache and are rejected.

  cache = init_cache(model, batch_size=B, max_len=S_max)
  logits, cache = extend(model, cache, prompt)        # prefill: prompt [B, P]
  logits, cache = extend(model, cache, token[:, None])  # one step: logits [B, 1, V]
  tokens, logits = generate(model, prompt, num_tokens)  # greedy, jitted steps
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from attnzoo.attention import base
from attnzoo.layers import rope
from attnzoo.model import sinusoidal

DECODABLE = ('dense', 'causal', 'cross', 'mqa', 'gqa', 'blockwise', 'flash')


class KVCache(NamedTuple):
  """Per-layer keys and values written so far, and how many positions are filled."""
  k: tuple  # L x [B, G, D, S_max] (transposed), after RoPE and key smearing
  v: tuple  # L x [B, G, S_max, D]
  last_k: tuple  # L x [B, G, D]: the newest key before smearing (smear_keys mixes it in next)
  length: jax.Array  # int32 scalar: positions 0 .. length - 1 are filled

  @property
  def max_len(self) -> int:
    return self.v[0].shape[2]

  def nbytes(self) -> int:
    """Bytes of the K/V entries (what decoding reads every step)."""
    return sum(x.nbytes for x in self.k + self.v)


def check_decodable(model):
  """Raises ValueError naming the field when `model` cannot be decoded with this cache."""
  base.check(model.causal, 'model.causal', model.causal,
             'incremental decoding needs a causal model')
  for i, block in enumerate(model.blocks):
    core = block.attn.core
    base.check(core.name in DECODABLE, 'model.attention.name', core.name,
               f'KV-cache decoding supports the exact causal variants {DECODABLE}')
    base.check(getattr(core.options, 'window', 0) == 0, f'{core.name}.window',
               getattr(core.options, 'window', 0), 'windowed attention is not decodable here')
    base.check(block.cross is None, f'blocks[{i}].cross', 'present',
               'cross-attention models are not decodable here')


def init_cache(model, *, batch_size: int, max_len: int | None = None,
               dtype=jnp.float32) -> KVCache:
  """An empty cache for `batch_size` sequences of up to `max_len` (default model.max_len)."""
  check_decodable(model)
  max_len = model.max_len if max_len is None else max_len
  base.check(0 < max_len <= model.max_len, 'max_len', max_len,
             f'must be in [1, model.max_len={model.max_len}]')
  shapes = [(batch_size, b.attn.num_kv_heads, max_len, b.attn.head_dim) for b in model.blocks]
  return KVCache(k=tuple(jnp.zeros((B, G, D, S), dtype) for B, G, S, D in shapes),
                 v=tuple(jnp.zeros(s, dtype) for s in shapes),
                 last_k=tuple(jnp.zeros((s[0], s[1], s[3]), dtype) for s in shapes),
                 length=jnp.zeros((), jnp.int32))


def _embed(model, tokens, positions):
  """tokens [B, T] at positions [T] -> x [B, T, d], as Decoder.embed_tokens does."""
  x = model.embed(tokens)
  if model.positions == 'learned':
    x = x + jnp.take(model.pos[...], positions, axis=0)[None]
  elif model.positions == 'sinusoidal':
    x = x + jnp.take(sinusoidal(model.max_len, model.d_model), positions, axis=0)[None]
  return x


def cached_attention(q, k_cache, v_cache, k_new, v_new, start):
  """Softmax attention of the new queries q [B, T, H, D] (positions start ... start + T - 1) over
  the cached keys k_cache [B, G, D, S] and values v_cache [B, G, S, D] at positions < start and
  the new ones k_new [B, G, D, T], v_new [B, G, T, D] (causal among themselves) -> [B, T, H, D].

  The R = H // G query heads of a group and the T new positions form one row axis M = T·R, so
  each group is a single [M, D] x [D, S] product that reads its keys and values once. The cache
  is only read here (`write` appends the new entries)."""
  B, T, H, D = q.shape
  G, S = v_cache.shape[1], v_cache.shape[2]
  R = H // G
  f32 = lambda x: x.astype(jnp.float32)
  qg = f32(einops.rearrange(q, 'b t (g r) d -> b g (t r) d', g=G)) / jnp.sqrt(D)  # [B, G, M, D]
  s_old = jnp.einsum('bgmd,bgds->bgms', qg, f32(k_cache))  # [B, G, M, S]
  s_new = jnp.einsum('bgmd,bgdt->bgmt', qg, f32(k_new))  # [B, G, M, T]
  row_t = jnp.arange(T * R) // R  # [M]: row m is new query t = m // R
  mask = jnp.concatenate([jnp.broadcast_to(jnp.arange(S)[None, :] < start, (T * R, S)),
                          jnp.arange(T)[None, :] <= row_t[:, None]], axis=1)  # [M, S + T]
  p = base.masked_softmax(jnp.concatenate([s_old, s_new], -1), mask[None, None])
  out = (jnp.einsum('bgms,bgsd->bgmd', p[..., :S], f32(v_cache))
         + jnp.einsum('bgmt,bgtd->bgmd', p[..., S:], f32(v_new)))  # [B, G, M, D]
  return einops.rearrange(out, 'b g (t r) d -> b t (g r) d', t=T).astype(q.dtype)


class NewEntries(NamedTuple):
  """What one call adds to the cache: per layer k [B, G, D, T], v [B, G, T, D] and the newest
  raw key."""
  k: tuple
  v: tuple
  last_k: tuple


def attend(model, cache: KVCache, tokens):
  """Runs tokens [B, T] at positions cache.length ... + T - 1 against the cache without writing
  it; returns logits [B, T, V] and the entries to append (see `write`)."""
  B, T = tokens.shape
  start = cache.length
  positions = start + jnp.arange(T, dtype=jnp.int32)  # [T]
  x = _embed(model, tokens, positions)  # [B, T, d]
  ks, vs, lasts = [], [], []
  for i, block in enumerate(model.blocks):
    attn = block.attn
    H, G, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
    h = block.norm1(x)
    q = attn.q_proj(h).reshape(B, T, H, D)
    k = attn.k_proj(h).reshape(B, T, G, D)
    v = attn.v_proj(h).reshape(B, T, G, D)
    if attn.use_rope:
      q, k = rope(q, positions), rope(k, positions)
    lasts.append(k[:, -1].astype(cache.last_k[i].dtype))
    if attn.smear is not None:  # k_j <- a k_j + (1 - a) k_{j-1}; k_{-1} = 0 as in training
      a = jax.nn.sigmoid(attn.smear[...])[None, None, :, None]  # [1, 1, G, 1]
      prev = jnp.concatenate([cache.last_k[i][:, None].astype(k.dtype), k[:, :-1]], axis=1)
      k = a * k + (1 - a) * prev
    ks.append(jnp.transpose(k, (0, 2, 3, 1)).astype(cache.k[i].dtype))  # [B, G, D, T]
    vs.append(jnp.transpose(v, (0, 2, 1, 3)).astype(cache.v[i].dtype))  # [B, G, T, D]
    out = cached_attention(q, cache.k[i], cache.v[i], ks[-1], vs[-1], start)  # [B, T, H, D]
    x = x + attn.o_proj(out.reshape(B, T, H * D))
    if block.mlp is not None:
      x = x + block.mlp(block.norm2(x))
  logits = model.head(model.norm(x))  # [B, T, V]
  return logits, NewEntries(tuple(ks), tuple(vs), tuple(lasts))


def write(cache: KVCache, new: NewEntries) -> KVCache:
  """The cache with `new` appended at positions cache.length ... + T - 1."""
  start = cache.length
  put_k = lambda c, x: jax.lax.dynamic_update_slice(c, x, (0, 0, 0, start))
  put_v = lambda c, x: jax.lax.dynamic_update_slice(c, x, (0, 0, start, 0))
  return KVCache(k=tuple(map(put_k, cache.k, new.k)), v=tuple(map(put_v, cache.v, new.v)),
                 last_k=new.last_k, length=start + new.v[0].shape[2])


def extend(model, cache: KVCache, tokens):
  """Feeds tokens [B, T] at positions cache.length ... + T - 1 (T = prompt length to prefill,
  1 to decode); returns logits [B, T, V] and the cache with T more positions."""
  logits, new = attend(model, cache, tokens)
  return logits, write(cache, new)


@dataclasses.dataclass
class Decoding:
  """Jitted functions over a split model: `prefill(state, cache, prompt)` and
  `step(state, cache, token [B])` -> (logits, cache). A step is two programs: `attend_step`
  reads the cache, `write` appends to it in place (donated). Kept apart because XLA on CPU
  copies a donated buffer that the same program also reads."""
  graphdef: object
  state: object

  def __post_init__(self):
    graphdef = self.graphdef

    def prefill(state, cache, tokens):
      return extend(nnx.merge(graphdef, state), cache, tokens)

    def attend_step(state, cache, token):  # token [B] -> next logits [B, V], new entries
      logits, new = attend(nnx.merge(graphdef, state), cache, token[:, None])
      return logits[:, 0], new

    self.prefill = jax.jit(prefill, donate_argnums=1)
    self.attend_step = jax.jit(attend_step)
    self.write = jax.jit(write, donate_argnums=0)

  def step(self, state, cache, token):
    logits, new = self.attend_step(state, cache, token)
    return logits, self.write(cache, new)


def decoding(model) -> Decoding:
  check_decodable(model)
  return Decoding(*nnx.split(model))


def generate(model, prompt, num_tokens: int, *, max_len: int | None = None):
  """Greedy decoding with the KV cache: prompt [B, P] -> tokens [B, N], logits [B, N, V]
  (logits[:, n] is the distribution token n was chosen from)."""
  B, P = prompt.shape
  total = P + num_tokens - 1  # the last chosen token is never fed back
  base.check(total <= model.max_len, 'num_tokens', num_tokens,
             f'prompt {P} + tokens must fit model.max_len={model.max_len}')
  fns = decoding(model)
  cache = init_cache(model, batch_size=B, max_len=max_len or max(total, 1))
  logits, cache = fns.prefill(fns.state, cache, jnp.asarray(prompt, jnp.int32))
  step_logits = [logits[:, -1]]
  tokens = [step_logits[-1].argmax(-1).astype(jnp.int32)]
  for _ in range(num_tokens - 1):
    last, cache = fns.step(fns.state, cache, tokens[-1])
    step_logits.append(last)
    tokens.append(last.argmax(-1).astype(jnp.int32))
  return jnp.stack(tokens, 1), jnp.stack(step_logits, 1)


def generate_recompute(model, prompt, num_tokens: int):
  """Greedy decoding by rerunning the full model on the whole sequence at every step (the
  reference the cache must match): prompt [B, P] -> tokens [B, N], logits [B, N, V].

  The sequence lives in a fixed [B, P + N - 1] buffer (one compile); the model is causal, so
  the zeros after position P + n - 1 do not change the logits read there."""
  B, P = prompt.shape
  graphdef, state = nnx.split(model)
  full = jax.jit(lambda state, seq: nnx.merge(graphdef, state)(seq))  # [B, S] -> [B, S, V]
  seq = jnp.zeros((B, P + num_tokens - 1), jnp.int32)
  seq = seq.at[:, :P].set(jnp.asarray(prompt, jnp.int32))
  tokens, step_logits = [], []
  for n in range(num_tokens):
    last = full(state, seq)[:, P + n - 1]  # [B, V]
    step_logits.append(last)
    tokens.append(last.argmax(-1).astype(jnp.int32))
    if n < num_tokens - 1:
      seq = seq.at[:, P + n].set(tokens[-1])
  return jnp.stack(tokens, 1), jnp.stack(step_logits, 1)


def kv_cache_bytes(*, num_layers: int, batch_size: int, length: int, num_kv_heads: int,
                   head_dim: int, bytes_per_element: int = 4) -> int:
  """2 (K and V) · L · B · S · G · D · bytes: the cache size formula."""
  return 2 * num_layers * batch_size * length * num_kv_heads * head_dim * bytes_per_element
