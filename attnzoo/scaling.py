"""Scaling of every registered attention variant: forward+backward time and peak memory vs T.

For each variant (presets that only re-label `dense` are skipped) and each length T, one
training-like step, grad of mean(out²) with respect to q, k, v and the variant's parameters, is
compiled and timed (median of repeats after compile, `attnzoo.cost`); its peak memory is the
compiled program's (arguments + outputs + temporaries). The batch keeps B·T fixed; slopes are
reported for the per-sequence cost (value / B), the convention of the papers: near 2 for
quadratic attention and near 1 for linear attention. Variants run causally where they can
(recorded per point).

Each point is appended to `scaling.jsonl` as soon as it is measured, and points already there are
skipped, so an interrupted run resumes. A point whose compiled peak exceeds the memory limit is
recorded as `oom` without running; once a variant runs out of memory or one step exceeds the time
budget, its larger lengths are skipped. The report (`scaling.md`, `scaling.png`) is built from
`scaling.jsonl` alone.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import attnzoo
from attnzoo import cost, jsonl
from attnzoo.attention import base

RECORDS = 'scaling.jsonl'
REPORT = 'scaling.md'
PLOT = 'scaling.png'
REFERENCE = 'dense'

# Per-variant options at these lengths (over each variant's defaults). An option named `max_len`
# always follows the measured length (Linformer's projections must cover S).
VARIANT_OPTIONS: dict[str, dict[str, Any]] = {
    'longformer': {'window': 128},
    'linformer': {'proj_dim': 256},  # the paper's k for long sequences
}


@dataclasses.dataclass(frozen=True)
class Settings:
  lengths: tuple[int, ...] = tuple(2 ** i for i in range(9, 15))  # 512 ... 16384
  tokens: int = 16384  # B·T, so B = max(1, tokens // T)
  heads: int = 4
  head_dim: int = 64
  repeats: int = 5
  time_budget_s: float = 30.0  # a step slower than this stops the variant's larger lengths
  max_bytes: int = 0  # compiled peak above this is recorded as `oom`; 0 = from the device
  variants: tuple[str, ...] = ()  # () = every registered variant except dense presets
  options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # overrides

  def __post_init__(self):
    base.check(len(self.lengths) > 0 and all(t > 0 for t in self.lengths), 'scaling.lengths',
               self.lengths, 'must be positive lengths')
    for field in ('tokens', 'heads', 'head_dim', 'repeats'):
      base.check(getattr(self, field) > 0, f'scaling.{field}', getattr(self, field),
                 'must be positive')


QUICK = Settings(lengths=(512, 1024, 2048, 4096), repeats=2, time_budget_s=15.0)


# ---- what to measure --------------------------------------------------------------------------

def default_variants() -> tuple[str, ...]:
  """Every registered variant, without the presets that only re-label dense (causal, mqa, ...)."""
  dense_module = attnzoo.attention.get(REFERENCE).module
  return tuple(n for n in attnzoo.variant_names()
               if n == REFERENCE or attnzoo.attention.get(n).module is not dense_module)


def variant_options(name: str, T: int, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
  options = {**VARIANT_OPTIONS.get(name, {}), **overrides.get(name, {})}
  if 'max_len' in attnzoo.default_options(name):
    options['max_len'] = T
  return options


def point_key(r: dict[str, Any]) -> tuple:
  return (r['variant'], r['T'], r['B'], r['H'], r['D'], r['causal'],
          json.dumps(r['options'], sort_keys=True))


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


def measure_point(name: str, T: int, settings: Settings, *, max_bytes: int) -> dict[str, Any]:
  """Measures one (variant, T) point; returns its record (status ok | oom | error)."""
  caps = attnzoo.capabilities(name)
  causal = caps.causal
  B, H, D = max(1, settings.tokens // T), settings.heads, settings.head_dim
  options = variant_options(name, T, settings.options)
  record = {'variant': name, 'T': T, 'B': B, 'H': H, 'D': D, 'causal': causal,
            'options': options, 'cost_class': caps.cost, 'backend': jax.default_backend(),
            'device': jax.devices()[0].device_kind}
  try:
    module = attnzoo.make_attention(name, rngs=nnx.Rngs(params=0, attention=1), **options)
    fn, state = _step(module, causal)
    kq, kk, kv = jax.random.split(jax.random.key(T), 3)
    q = jax.random.normal(kq, (B, T, H, D))
    k = None if caps.shared_qk else jax.random.normal(kk, (B, T, H, D))
    v = jax.random.normal(kv, (B, T, H, D))
    args = (state, q, k, v)
    stats = cost.compiled_stats(fn, *args)
    compiled = stats.pop('compiled')
    record.update(stats)
    if stats['peak_bytes'] is not None and stats['peak_bytes'] > max_bytes:
      record.update(status='oom', reason=f'compiled peak {stats["peak_bytes"]} > {max_bytes} B')
      return record
    first = cost.median_time(compiled, *args, repeats=1, warmup=0)
    repeats = settings.repeats if first * settings.repeats <= settings.time_budget_s else 1
    seconds = first if repeats == 1 else cost.median_time(compiled, *args, repeats=repeats,
                                                          warmup=0)
    record.update(status='ok', time_s=seconds, repeats=repeats)
  except Exception as e:  # noqa: BLE001  (one failing point must not stop the sweep)
    record.update(status='oom' if _is_oom(e) else 'error', reason=f'{type(e).__name__}: {e}'[:500])
  return record


def read_records(workdir: str) -> list[dict[str, Any]]:
  return jsonl.read(os.path.join(workdir, RECORDS))


def run(workdir: str, settings: Settings = Settings(),
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Measures every missing point, appending each to workdir/scaling.jsonl; returns the new ones.

  Points recorded as ok or oom are not measured again; errors are retried.
  """
  os.makedirs(workdir, exist_ok=True)
  done = {point_key(r): r for r in read_records(workdir) if r['status'] in ('ok', 'oom')}
  variants = settings.variants or default_variants()
  max_bytes = settings.max_bytes or cost.memory_limit()
  lengths = sorted(settings.lengths)
  log(f'scaling: {len(variants)} variants x T in {lengths}, B·T={settings.tokens}, '
      f'H={settings.heads}, D={settings.head_dim}, memory limit {max_bytes / 2**30:.1f} GiB, '
      f'time budget {settings.time_budget_s:g} s/step')
  new = []
  for name in variants:
    for T in lengths:
      caps = attnzoo.capabilities(name)
      probe = {'variant': name, 'T': T, 'B': max(1, settings.tokens // T), 'H': settings.heads,
               'D': settings.head_dim, 'causal': caps.causal,
               'options': variant_options(name, T, settings.options)}
      record = done.get(point_key(probe))
      if record is None:
        t0 = time.perf_counter()
        record = measure_point(name, T, settings, max_bytes=max_bytes)
        jsonl.append(os.path.join(workdir, RECORDS), record)
        new.append(record)
        log(f'  {name:>12} T={T:<6} {_describe(record)}  ({time.perf_counter() - t0:.1f} s)')
        gc.collect()
      else:
        log(f'  {name:>12} T={T:<6} {_describe(record)}  (already measured)')
      if record['status'] == 'oom':
        log(f'  {name:>12} stops at T={T}: out of memory')
        break
      if record['status'] == 'ok' and record['time_s'] > settings.time_budget_s:
        log(f'  {name:>12} stops at T={T}: over the time budget')
        break
  return new


def _describe(r: dict[str, Any]) -> str:
  if r['status'] == 'ok':
    peak = r.get('peak_bytes')
    mem = '?' if peak is None else f'{peak / 2**20:.0f} MiB'
    return f'{r["time_s"] * 1e3:9.1f} ms  {mem:>9}  (x{r["repeats"]})'
  return f'{r["status"]}: {r.get("reason", "")[:120]}'


# ---- report -----------------------------------------------------------------------------------

def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
  """Least-squares slope of log y against log x; None with fewer than two points."""
  if len(xs) < 2:
    return None
  return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def crossover(lengths: Sequence[int], ratios: Sequence[float]) -> str:
  """Length from which ratio (variant / dense) stays below 1, interpolated in log–log.

  Only lengths where both were measured count; '< T0' if always faster, '> Tn' if never.
  """
  if not lengths:
    return '–'
  if ratios[-1] >= 1:
    return f'> {lengths[-1]}'
  i = len(ratios) - 1
  while i > 0 and ratios[i - 1] < 1:
    i -= 1
  if i == 0:
    return f'< {lengths[0]}' if ratios[0] < 1 else '–'
  (t0, t1), (r0, r1) = lengths[i - 1:i + 1], ratios[i - 1:i + 1]
  frac = math.log(r0) / (math.log(r0) - math.log(r1))  # where log ratio crosses 0
  return f'≈ {round(math.exp(math.log(t0) + frac * (math.log(t1) - math.log(t0))))}'


def _latest(records):
  """Last record per (variant, T); the report describes the latest measurement of each point."""
  table = {}
  for r in records:
    table[(r['variant'], r['T'])] = r
  return table


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
  """Per-variant series, slopes and crossovers from the records (no measuring)."""
  table = _latest(records)
  variants = list(dict.fromkeys(r['variant'] for r in records))
  if REFERENCE in variants:
    variants.remove(REFERENCE)
    variants.insert(0, REFERENCE)
  lengths = sorted({T for _, T in table})
  ref = {T: table.get((REFERENCE, T)) for T in lengths}
  rows = {}
  for name in variants:
    ok = [table[(name, T)] for T in lengths
          if (name, T) in table and table[(name, T)]['status'] == 'ok']
    times = {r['T']: r['time_s'] for r in ok}
    mems = {r['T']: r['peak_bytes'] for r in ok if r.get('peak_bytes')}
    both = [T for T in times if ref[T] is not None and ref[T]['status'] == 'ok']
    any_r = next(iter(r for (n, _), r in table.items() if n == name))
    rows[name] = {
        'causal': any_r['causal'], 'cost_class': any_r.get('cost_class', '?'),
        'options': any_r['options'], 'times': times, 'mems': mems,
        'status': {T: table[(name, T)]['status'] if (name, T) in table else 'skipped'
                   for T in lengths},
        # Slopes of the per-sequence cost (value / B, B = B·T / T): quadratic ≈ 2, linear ≈ 1.
        'time_slope': loglog_slope(list(times), [v * T for T, v in times.items()]),
        'mem_slope': loglog_slope(list(mems), [v * T for T, v in mems.items()]),
        'crossover': ('–' if name == REFERENCE else
                      crossover(both, [times[T] / ref[T]['time_s'] for T in both])),
    }
  return {'lengths': lengths, 'rows': rows, 'ref': ref, 'records': records}


def _cell(value, ref_value, unit_scale, fmt, status):
  if value is None:
    return {'oom': 'oom', 'error': 'error', 'skipped': 'skip'}.get(status, '–')
  text = fmt.format(value * unit_scale)
  if ref_value:
    text += f' ({value / ref_value:.2f})'
  return text


def report(workdir: str) -> str:
  """Writes scaling.md and scaling.png from workdir/scaling.jsonl; returns the Markdown."""
  records = read_records(workdir)
  if not records:
    raise ValueError(f'no measurements in {os.path.join(workdir, RECORDS)}; run without '
                     '--report_only first')
  s = summarize(records)
  lengths, rows, ref = s['lengths'], s['rows'], s['ref']
  first = records[0]
  ref_time = {T: r['time_s'] for T, r in ref.items() if r and r['status'] == 'ok'}
  ref_mem = {T: r.get('peak_bytes') for T, r in ref.items() if r and r['status'] == 'ok'}
  lines = [
      '# Attention scaling: forward+backward time and peak memory',
      '',
      f'B·T = {first["B"] * first["T"]}, H = {first["H"]}, D = {first["D"]}, float32, '
      f'{first["backend"]} ({first["device"]}). One step is grad of mean(out²) w.r.t. q, k, v '
      'and the variant\'s parameters; time is the median of repeats after compile, memory the '
      'compiled peak (arguments + outputs + temporaries). Slopes are log–log slopes of the '
      'per-sequence cost (value / B, with B·T fixed): quadratic attention ≈ 2, linear ≈ 1. '
      'Each cell: value (ratio to dense). '
      'oom: over the memory limit; skip: not run after the variant went over the time budget '
      'or memory at a shorter length; error: see scaling.jsonl. Crossover: the length from '
      'which the variant is faster than dense (log–log interpolation, measured lengths only).',
      '',
  ]
  head = ' | '.join(str(T) for T in lengths)
  for title, key, ref_values, scale, fmt, slope in (
      ('Time (ms)', 'times', ref_time, 1e3, '{:.1f}', 'time_slope'),
      ('Peak memory (MiB)', 'mems', ref_mem, 2 ** -20, '{:.0f}', 'mem_slope')):
    lines += [f'## {title}', '',
              f'| variant | causal | cost | {head} | slope |' +
              (' crossover |' if key == 'times' else ''),
              '|' + '---|' * (len(lengths) + 4 + (key == 'times'))]
    for name, row in rows.items():
      cells = [_cell(row[key].get(T), ref_values.get(T), scale, fmt, row['status'][T])
               for T in lengths]
      sl = row[slope]
      line = (f'| {name} | {"yes" if row["causal"] else "no"} | {row["cost_class"]} | '
              + ' | '.join(cells) + f' | {"–" if sl is None else f"{sl:.2f}"} |')
      if key == 'times':
        line += f' {row["crossover"]} |'
      lines.append(line)
    lines.append('')
  lines += ['## Options', ''] + [
      f'- {name}: {json.dumps({k: v for k, v in row["options"].items() if k != "max_len"})}'
      + (' (max_len = T)' if 'max_len' in row['options'] else '')
      for name, row in rows.items()] + ['', f'![scaling]({PLOT})', '']
  text = '\n'.join(lines)
  with open(os.path.join(workdir, REPORT), 'w') as f:
    f.write(text)
  plot(s, os.path.join(workdir, PLOT))
  return text


def plot(summary: dict[str, Any], path: str):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for name, row in summary['rows'].items():
    style = dict(marker='o', lw=2.5 if name == REFERENCE else 1.5,
                 color='black' if name == REFERENCE else None)
    for ax, key, scale in ((axes[0], 'times', 1e3), (axes[1], 'mems', 2 ** -20)):
      pts = sorted(row[key].items())
      if pts:
        ax.plot([t for t, _ in pts], [y * scale for _, y in pts], label=name, **style)
  for ax, ylabel in zip(axes, ('forward+backward time (ms)', 'compiled peak memory (MiB)')):
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xlabel('sequence length T (B·T fixed)')
    ax.set_ylabel(ylabel)
    ax.grid(True, which='both', alpha=0.3)
  if axes[0].lines:
    axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
