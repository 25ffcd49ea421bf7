"""Greedy decoding with the Decoder's KV cache (`Decoder.init_cache`, `Decoder(..., cache=)`).

The forward pass is the model's own; this module only wraps it: jitted prefill and step over
the split model (the cache is donated, so XLA updates it in place), greedy generation, the
recompute reference it must match, and the cache-size formula. Whether a model can decode is
declared by its variant (`Attention.decodable`); other models raise ValueError naming it.

  cache = init_cache(model, batch_size=B, max_len=S_max)  # one layers.KVCache per layer
  logits, cache = extend(model, cache, prompt)            # prefill: prompt [B, P]
  logits, cache = extend(model, cache, token[:, None])    # one step: logits [B, 1, V]
  tokens, logits = generate(model, prompt, num_tokens)     # greedy, jitted steps
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from attnzoo.attention import base


def init_cache(model, *, batch_size: int, max_len: int | None = None, dtype=jnp.float32):
  """An empty cache (tuple of layers.KVCache) for `batch_size` sequences of up to `max_len`
  positions (default model.max_len)."""
  return model.init_cache(batch_size=batch_size, max_len=max_len, dtype=dtype)


def extend(model, cache, tokens):
  """Feeds tokens [B, T] at positions cache[0].length ... + T - 1 (T = prompt length to
  prefill, 1 to decode); returns logits [B, T, V] and the cache with T more positions."""
  return model(tokens, cache=cache)


def cache_bytes(cache) -> int:
  """Bytes of the K/V entries (what decoding reads every step)."""
  return sum(c.k.nbytes + c.v.nbytes for c in cache)


@dataclasses.dataclass
class Decoding:
  """Jitted functions over a split model: `prefill(state, cache, prompt [B, P])` and
  `step(state, cache, token [B])` -> (logits, cache), logits [B, P, V] and [B, V]; both donate
  the cache."""
  graphdef: object
  state: object

  def __post_init__(self):
    graphdef = self.graphdef

    def prefill(state, cache, tokens):
      return extend(nnx.merge(graphdef, state), cache, tokens)

    def step(state, cache, token):
      logits, cache = extend(nnx.merge(graphdef, state), cache, token[:, None])
      return logits[:, 0], cache

    self.prefill = jax.jit(prefill, donate_argnums=1)
    self.step = jax.jit(step, donate_argnums=1)


def decoding(model) -> Decoding:
  model.check_decodable()
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
