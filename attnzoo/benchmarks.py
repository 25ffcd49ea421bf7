"""Benchmarks for the foundation: ratios against a reference measured in the same run.

- `decoder_throughput`: training tokens/s of our Decoder vs the same-shape model whose
  attention is `flax.nnx.MultiHeadAttention`.
- `exact_attention_cost`: forward+backward time and compiled peak memory of `blockwise` vs
  `dense` attention at several lengths.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from flax import nnx

from attnzoo import cost, train
from attnzoo.attention import blockwise, dense


class FlaxAttention(nnx.Module):
  """flax.nnx.MultiHeadAttention behind our MultiHeadAttention's call signature."""

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs):
    self.mha = nnx.MultiHeadAttention(num_heads, d_model, use_bias=False, decode=False,
                                      rngs=rngs)

  def __call__(self, x, context=None, *, causal=None, key_mask=None, return_attention=False,
               head_mask=None):
    mask = nnx.make_causal_mask(x[..., 0]) if causal else None
    return self.mha(x, mask=mask, deterministic=True)


def _tokens_per_s(config, model, optimizer, steps: int) -> float:
  graphdef, state = nnx.split((model, optimizer))
  train_step, _ = train.make_steps(graphdef)
  batches = [{k: jnp.asarray(v) for k, v in train.batch_for(config, s).items()
              if k in ('inputs', 'targets', 'weights')} for s in range(steps + 1)]
  state, _ = train_step(state, batches[0])  # compile
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for b in batches[1:]:
    state, m = train_step(state, b)
  jax.block_until_ready(m)
  return steps * config.train.batch_size * config.task.seq_len / (time.perf_counter() - t0)


def decoder_throughput(config, steps: int = 50, rounds: int = 3) -> dict:
  """Training tokens/s, ours vs flax.nnx.MultiHeadAttention (median over alternating rounds)."""
  ours, ref = [], []
  for _ in range(rounds):
    model, opt = train.build(config)
    ours.append(_tokens_per_s(config, model, opt, steps))
    model, opt = train.build(config)
    for block in model.blocks:
      block.attn = FlaxAttention(config.model.d_model, config.model.num_heads,
                                 rngs=nnx.Rngs(config.seed))
    opt = nnx.Optimizer(model, opt.tx, wrt=nnx.Param)
    ref.append(_tokens_per_s(config, model, opt, steps))
  mid = lambda xs: sorted(xs)[len(xs) // 2]
  return {'attnzoo_tokens_per_s': mid(ours), 'flax_nnx_mha_tokens_per_s': mid(ref),
          'ratio': mid(ours) / mid(ref), 'rounds': rounds, 'steps': steps}


def exact_attention_cost(lengths=(1024, 4096, 16384), heads: int = 4, head_dim: int = 64,
                         causal: bool = True, repeats: int = 3) -> list[dict]:
  """Forward+backward seconds and compiled peak bytes, blockwise vs dense, batch 1.

  A program whose compiled peak exceeds cost.memory_limit() is not run (time None)."""
  memory_limit = cost.memory_limit()
  rows = []
  for T in lengths:
    q, k, v = jax.random.normal(jax.random.key(T), (3, 1, T, heads, head_dim))
    row = {'T': T}
    for name, fn in (('dense', dense.dot_product_attention),
                     ('blockwise', blockwise.blockwise_attention)):
      loss = lambda q, k, v, fn=fn: (fn(q, k, v, causal=causal) ** 2).sum()
      stats = cost.compiled_stats(jax.grad(loss, argnums=(0, 1, 2)), q, k, v)
      row[f'{name}_peak_bytes'] = stats['peak_bytes']
      fits = stats['peak_bytes'] < memory_limit  # running past it gets the process killed
      row[f'{name}_s'] = (cost.median_time(stats['compiled'], q, k, v, repeats=repeats)
                          if fits else None)
      print(f'T={T} {name}: ' + (f'{row[f"{name}_s"]:.3f} s' if fits else 'not run (memory)')
            + f', {stats["peak_bytes"] / 2**20:.0f} MiB compiled peak', flush=True)
    if row['dense_s'] and row['blockwise_s']:
      row['speed_ratio'] = row['dense_s'] / row['blockwise_s']  # > 1: blockwise is faster
    row['memory_ratio'] = row['blockwise_peak_bytes'] / row['dense_peak_bytes']
    rows.append(row)
  return rows
