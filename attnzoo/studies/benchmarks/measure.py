"""The benchmarks' measurements: one JSON line per point (the decoder, each length)."""
from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any, Callable

import jax
import ml_collections
from flax import nnx

from attnzoo import cost, jsonl, train
from attnzoo.attention import base, blockwise, dense

POINTS = 'benchmarks.jsonl'
EXACT = (('dense', dense.dot_product_attention), ('blockwise', blockwise.blockwise_attention))


def check(study: ml_collections.ConfigDict):
  """Raises ValueError naming the first bad `study.*` field."""
  base.check(len(study.lengths) > 0 and all(isinstance(t, int) and t > 0 for t in study.lengths),
             'study.lengths', study.lengths, 'must be positive integers')
  for field in ('steps', 'rounds', 'heads', 'head_dim', 'repeats'):
    base.check(isinstance(study[field], int) and study[field] > 0, f'study.{field}',
               study[field], 'must be a positive integer')


class FlaxAttention(nnx.Module):
  """flax.nnx.MultiHeadAttention behind our MultiHeadAttention's call signature."""

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs):
    self.mha = nnx.MultiHeadAttention(num_heads, d_model, use_bias=False, decode=False,
                                      rngs=rngs)

  def __call__(self, x, context=None, *, causal=None, **unused):
    mask = nnx.make_causal_mask(x[..., 0]) if causal else None
    return self.mha(x, mask=mask, deterministic=True)


def _tokens_per_s(config, model, optimizer, steps: int) -> float:
  graphdef, state = nnx.split((model, optimizer))
  train_step, _ = train.make_steps(graphdef)
  batches = [train.device_batch({k: v for k, v in train.batch_for(config, s).items()
                                 if k in ('inputs', 'targets', 'weights')})
             for s in range(steps + 1)]
  state, _ = train_step(state, batches[0])  # compile
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for b in batches[1:]:
    state, m = train_step(state, b)
  jax.block_until_ready(m)
  return steps * config.train.batch_size * config.task.seq_len / (time.perf_counter() - t0)


def decoder_throughput(config, steps: int, rounds: int) -> dict[str, Any]:
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
  ours, ref = statistics.median(ours), statistics.median(ref)
  return {'attnzoo_tokens_per_s': ours, 'flax_nnx_mha_tokens_per_s': ref, 'ratio': ours / ref}


def exact_cost(T: int, heads: int, head_dim: int, causal: bool, repeats: int) -> dict[str, Any]:
  """Forward+backward seconds and compiled peak bytes of blockwise and dense at length T."""
  q, k, v = jax.random.normal(jax.random.key(T), (3, 1, T, heads, head_dim))
  memory_limit = cost.memory_limit()
  row = {}
  for name, fn in EXACT:
    loss = lambda q, k, v, fn=fn: (fn(q, k, v, causal=causal) ** 2).sum()
    stats = cost.compiled_stats(jax.grad(loss, argnums=(0, 1, 2)), q, k, v)
    row[f'{name}_peak_bytes'] = stats['peak_bytes']
    fits = stats['peak_bytes'] < memory_limit  # running past it gets the process killed
    row[f'{name}_s'] = (cost.median_time(stats['compiled'], q, k, v, repeats=repeats)
                        if fits else None)
  if row['dense_s'] and row['blockwise_s']:
    row['speed_ratio'] = row['dense_s'] / row['blockwise_s']  # > 1: blockwise is faster
  row['memory_ratio'] = row['blockwise_peak_bytes'] / row['dense_peak_bytes']
  return row


def points(config) -> list[dict[str, Any]]:
  """What determines each measurement (its key in benchmarks.jsonl)."""
  s = config.study
  model = {k: v for k, v in config.model.to_dict().items() if k != 'attention'}
  return ([{'kind': 'decoder', 'model': model, 'task': config.task.to_dict(),
            'batch_size': config.train.batch_size, 'steps': s.steps, 'rounds': s.rounds}]
          + [{'kind': 'exact', 'T': T, 'heads': s.heads, 'head_dim': s.head_dim,
              'causal': s.causal, 'repeats': s.repeats} for T in s.lengths])


def run(config: ml_collections.ConfigDict, workdir: str,
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Measures every point not yet in workdir/benchmarks.jsonl, appending each as it is
  measured; returns the new records."""
  check(config.study)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, POINTS)
  key = lambda p: json.dumps({k: v for k, v in p.items() if k in POINTS_KEYS[p['kind']]},
                             sort_keys=True)
  done = {key(r) for r in jsonl.read(path)}
  todo = [p for p in points(config) if key(p) not in done]
  log(f'benchmarks: {len(todo)} to measure, {len(points(config)) - len(todo)} already measured')
  new = []
  for p in todo:
    t0 = time.perf_counter()
    if p['kind'] == 'decoder':
      result = decoder_throughput(config, p['steps'], p['rounds'])
    else:
      result = exact_cost(p['T'], p['heads'], p['head_dim'], p['causal'], p['repeats'])
    record = {**p, **result, 'backend': jax.default_backend(),
              'device': jax.devices()[0].device_kind}
    jsonl.append(path, record)
    new.append(record)
    log(f'  {_describe(record)}  ({time.perf_counter() - t0:.1f} s)')
  return new


POINTS_KEYS = {'decoder': ('kind', 'model', 'task', 'batch_size', 'steps', 'rounds'),
               'exact': ('kind', 'T', 'heads', 'head_dim', 'causal', 'repeats')}


def _describe(r: dict[str, Any]) -> str:
  if r['kind'] == 'decoder':
    return (f'decoder tokens/s: ours {r["attnzoo_tokens_per_s"]:.0f}, flax nnx MHA '
            f'{r["flax_nnx_mha_tokens_per_s"]:.0f}, ratio {r["ratio"]:.2f}')
  ms = lambda x: 'not run (memory)' if x is None else f'{x * 1e3:.1f} ms'
  return (f'T={r["T"]}: dense {ms(r["dense_s"])}, blockwise {ms(r["blockwise_s"])}, '
          f'memory blockwise / dense {r["memory_ratio"]:.3f}')
