"""The decode study's plan and measurements: one JSON line per variant spec."""
from __future__ import annotations

import gc
import json
import os
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

import attnzoo
from attnzoo import cost, decode, jsonl
from attnzoo.attention import base
from attnzoo.studies import common

POINTS = 'decode.jsonl'


def check(study: ml_collections.ConfigDict):
  """Raises ValueError naming the first bad `study.*` field."""
  for field in ('length', 'batch_size', 'repeats'):
    base.check(isinstance(study[field], int) and study[field] > 0, f'study.{field}',
               study[field], 'must be a positive integer')
  base.check(bool(study.variants.strip()), 'study.variants', study.variants,
             'expected comma-joined variant specs, e.g. causal,mqa')


def build(config: ml_collections.ConfigDict, spec: common.Spec):
  """The eval-mode decoder of config.model running `spec`, for contexts of study.length; raises
  ValueError naming the field when the model is invalid or cannot decode with a KV cache."""
  T = config.study.length
  shim = ml_collections.ConfigDict({'model': config.model.to_dict(), 'task': {'seq_len': T}})
  cfg = common.with_spec(shim, spec).model  # options fitted to T, model.* overrides applied
  cfg.max_len = T
  model = attnzoo.Decoder(cfg, rngs=nnx.Rngs(params=0, attention=1))
  model.eval()
  decode.init_cache(model, batch_size=1, max_len=1)  # refuses undecodable models
  return model, cfg


def full_cache(model, batch_size: int, length: int):
  """A cache of `length` positions with random keys and values, filled up to position
  length - 1; a function that sets a cache back to that position; the bytes of its keys and
  values.

  The one place here that relies on decode.py's internals: a cache is a pytree whose scalar
  leaves count the filled positions and whose 4-D leaves are the keys and values (any other
  leaf, such as the last raw key, may hold anything)."""
  cache = decode.init_cache(model, batch_size=batch_size, max_len=length)
  leaves, tree = jax.tree.flatten(cache)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  cache = jax.tree.unflatten(tree, [x if x.ndim == 0 else jax.random.normal(k, x.shape, x.dtype)
                                    for x, k in zip(leaves, keys)])
  rewind = lambda c: jax.tree.map(lambda x: jnp.full((), length - 1, x.dtype) if x.ndim == 0
                                  else x, c)
  return rewind(cache), rewind, sum(x.nbytes for x in leaves if x.ndim == 4)


def point(config: ml_collections.ConfigDict, spec: common.Spec, cfg) -> dict[str, Any]:
  """What determines a point's measurement (its key in decode.jsonl)."""
  model = {k: v for k, v in cfg.to_dict().items() if k != 'attention'}
  return {'variant': spec.label, 'name': spec.name, 'options': cfg.attention[spec.name].to_dict(),
          'model': model, **{k: config.study[k] for k in ('length', 'batch_size', 'repeats')}}


def key(r: dict[str, Any]) -> str:
  return json.dumps([r[k] for k in ('variant', 'options', 'model', 'length', 'batch_size',
                                    'repeats')], sort_keys=True)


def measure(model, p: dict[str, Any]) -> dict[str, Any]:
  """Latency of one decode step at position T - 1 of a full cache, median of p['repeats'] steps
  after a warm-up step; the compiled step's cost and the cache's bytes."""
  B, T = p['batch_size'], p['length']
  graphdef, state = nnx.split(model)

  def step(state, cache, token):  # token [B] -> logits [B, V] and the cache one longer
    logits, cache = decode.extend(nnx.merge(graphdef, state), cache, token[:, None])
    return logits[:, 0], cache

  cache, rewind, kv_bytes = full_cache(model, B, T)
  token = jnp.zeros((B,), jnp.int32)
  stats = cost.compiled_stats(step, state, cache, token, donate_argnums=1)
  compiled = stats.pop('compiled')
  times = []
  for i in range(p['repeats'] + 1):
    cache = rewind(cache)  # the same step every time: position T - 1
    t0 = time.perf_counter()
    logits, cache = compiled(state, cache, token)
    jax.block_until_ready((logits, cache))
    if i:  # the first call is the warm-up
      times.append(time.perf_counter() - t0)
  attn = model.blocks[0].attn
  return {'num_kv_heads': attn.num_kv_heads, 'num_heads': attn.num_heads,
          'head_dim': attn.head_dim, 'token_s': statistics.median(times),
          'token_s_min': min(times), **stats, 'kv_bytes': kv_bytes,
          'kv_bytes_formula': decode.kv_cache_bytes(
              num_layers=len(model.blocks), batch_size=B, length=T,
              num_kv_heads=attn.num_kv_heads, head_dim=attn.head_dim),
          'params': cost.param_count(nnx.state(model, nnx.Param))}


def run(config: ml_collections.ConfigDict, workdir: str,
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Measures every variant spec not yet in workdir/decode.jsonl (errors are retried),
  appending each as it is measured; returns the new records. Bad or undecodable specs raise
  ValueError before anything is measured."""
  check(config.study)
  defaults = config.model.to_dict()
  planned = [(spec, *build(config, spec))
             for spec in common.parse_specs(config.study.variants, defaults)]
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, POINTS)
  done = {key(r) for r in jsonl.read(path) if r['status'] == 'ok'}
  s = config.study
  log(f'decode: {len(planned)} variants at T={s.length}, batch {s.batch_size}, '
      f'{s.repeats} timed steps each')
  new = []
  for spec, model, cfg in planned:
    p = point(config, spec, cfg)
    if key(p) in done:
      log(f'  {spec.label:>28}: already measured')
      continue
    record = {**p, 'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind}
    t0 = time.perf_counter()
    try:
      record.update(measure(model, p), status='ok')
    except Exception as e:  # noqa: BLE001  (one failing point must not stop the study)
      record.update(status='error', reason=f'{type(e).__name__}: {e}'[:500])
    jsonl.append(path, record)
    new.append(record)
    log(f'  {spec.label:>28}: {_describe(record)}  ({time.perf_counter() - t0:.1f} s)')
    gc.collect()
  return new


def _describe(r: dict[str, Any]) -> str:
  if r['status'] != 'ok':
    return f'{r["status"]}: {r.get("reason", "")[:200]}'
  return (f'G={r["num_kv_heads"]}, {r["token_s"] * 1e3:.2f} ms/token, '
          f'KV {r["kv_bytes"] / 2**20:.1f} MiB')
