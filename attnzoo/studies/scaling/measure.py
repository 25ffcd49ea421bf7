"""The scaling study's plan and measurements: one JSON line per (variant, T) point."""
from __future__ import annotations

import gc
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

import attnzoo
from attnzoo import cost, jsonl
from attnzoo.attention import base
from attnzoo.studies import common

POINTS = 'scaling.jsonl'


def check(study: ml_collections.ConfigDict):
  """Raises ValueError naming the first bad `study.*` field."""
  base.check(len(study.lengths) > 0 and all(isinstance(t, int) and t > 0 for t in study.lengths),
             'study.lengths', study.lengths, 'must be positive integers')
  for field in ('tokens', 'heads', 'head_dim', 'repeats'):
    base.check(study[field] > 0, f'study.{field}', study[field], 'must be positive')
  base.check(study.time_budget_s >= 0, 'study.time_budget_s', study.time_budget_s,
             'must be >= 0')
  base.check(study.max_bytes >= 0, 'study.max_bytes', study.max_bytes,
             'must be >= 0 (0: from the device)')


def default_variants() -> tuple[str, ...]:
  """Every registered variant, without the presets that only re-label dense (causal, mqa, ...)."""
  dense_module = attnzoo.attention.get('dense').module
  return tuple(n for n in attnzoo.variant_names()
               if n == 'dense' or attnzoo.attention.get(n).module is not dense_module)


def point(spec: common.Spec, T: int, study) -> dict[str, Any]:
  """What determines a point's measurement (its key in scaling.jsonl)."""
  return {'variant': spec.label, 'name': spec.name, 'T': T, 'B': max(1, study.tokens // T),
          'H': study.heads, 'D': study.head_dim, 'causal': attnzoo.capabilities(spec.name).causal,
          'options': common.fit(spec.name, dict(spec.options), T)}


def key(r: dict[str, Any]) -> str:
  return json.dumps([r['variant'], r['T'], r['B'], r['H'], r['D'], r['causal'], r['options']],
                    sort_keys=True)


def _is_oom(error: BaseException) -> bool:
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower()


def _step(module, causal: bool):
  """(state, q, k, v) -> grads of mean(out²) w.r.t. the parameters, q, k, v; a pure function."""
  graphdef, state = nnx.split(module)
  shared_qk = module.caps.shared_qk

  def loss(m, q, k, v):
    out = m(q, q if shared_qk else k, v, causal=causal)
    return jnp.mean(jnp.square(out.astype(jnp.float32)))

  def step(state, q, k, v):
    # Merged outside the differentiated function, as in training, so variants that draw
    # per-call randomness can update their RNG state.
    m = nnx.merge(graphdef, state)
    return nnx.grad(loss, argnums=(0, 1, 3) if shared_qk else (0, 1, 2, 3))(m, q, k, v)

  return step, state


def measure(p: dict[str, Any], study, *, max_bytes: int) -> dict[str, Any]:
  """Measures point `p`; returns its record (status ok | oom | error)."""
  B, T, H, D = p['B'], p['T'], p['H'], p['D']
  record = {**p, 'cost_class': attnzoo.capabilities(p['name']).cost,
            'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind}
  try:
    module = attnzoo.make_attention(p['name'], rngs=nnx.Rngs(params=0, attention=1),
                                    **p['options'])
    fn, state = _step(module, p['causal'])
    kq, kk, kv = jax.random.split(jax.random.key(T), 3)
    q = jax.random.normal(kq, (B, T, H, D))
    k = None if module.caps.shared_qk else jax.random.normal(kk, (B, T, H, D))
    v = jax.random.normal(kv, (B, T, H, D))
    args = (state, q, k, v)
    stats = cost.compiled_stats(fn, *args)
    compiled = stats.pop('compiled')
    record.update(stats)
    if stats['peak_bytes'] is not None and stats['peak_bytes'] > max_bytes:
      record.update(status='oom', reason=f'compiled peak {stats["peak_bytes"]} > {max_bytes} B')
      return record
    first = cost.median_time(compiled, *args, repeats=1, warmup=0)
    repeats = study.repeats if first * study.repeats <= study.time_budget_s else 1
    seconds = first if repeats == 1 else cost.median_time(compiled, *args, repeats=repeats,
                                                          warmup=0)
    record.update(status='ok', time_s=seconds, repeats=repeats)
  except Exception as e:  # noqa: BLE001  (one failing point must not stop the study)
    record.update(status='oom' if _is_oom(e) else 'error', reason=f'{type(e).__name__}: {e}'[:500])
  return record


def run(config: ml_collections.ConfigDict, workdir: str,
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Measures every point of `config.study` not yet in workdir/scaling.jsonl (ok and oom points
  are kept, errors retried), appending each as it is measured; returns the new records."""
  study = config.study
  check(study)
  specs = common.parse_specs(study.variants or ','.join(default_variants()))
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, POINTS)
  done = {key(r): r for r in jsonl.read(path) if r['status'] in ('ok', 'oom')}
  max_bytes = study.max_bytes or cost.memory_limit()
  lengths = sorted(study.lengths)
  log(f'scaling: {len(specs)} variants x T in {lengths}, B·T={study.tokens}, H={study.heads}, '
      f'D={study.head_dim}, memory limit {max_bytes / 2**30:.1f} GiB, time budget '
      f'{study.time_budget_s:g} s/step')
  new = []
  for spec in specs:
    for T in lengths:
      p = point(spec, T, study)
      record = done.get(key(p))
      if record is None:
        t0 = time.perf_counter()
        record = measure(p, study, max_bytes=max_bytes)
        jsonl.append(path, record)
        new.append(record)
        log(f'  {spec.label:>20} T={T:<6} {_describe(record)}  ({time.perf_counter() - t0:.1f} s)')
        gc.collect()
      else:
        log(f'  {spec.label:>20} T={T:<6} {_describe(record)}  (already measured)')
      if record['status'] == 'oom':
        log(f'  {spec.label:>20} stops at T={T}: out of memory')
        break
      if record['status'] == 'ok' and record['time_s'] > study.time_budget_s:
        log(f'  {spec.label:>20} stops at T={T}: over the time budget')
        break
  return new


def _describe(r: dict[str, Any]) -> str:
  if r['status'] == 'ok':
    peak = r.get('peak_bytes')
    mem = '?' if peak is None else f'{peak / 2**20:.0f} MiB'
    return f'{r["time_s"] * 1e3:9.1f} ms  {mem:>9}  (x{r["repeats"]})'
  return f'{r["status"]}: {r.get("reason", "")[:120]}'
