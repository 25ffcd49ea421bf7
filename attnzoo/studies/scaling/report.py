"""The scaling study's analysis: per-variant series, log–log slopes, crossovers against dense,
the Markdown report and the plot, from scaling.jsonl alone (no measuring)."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import numpy as np

from attnzoo import jsonl
from attnzoo.studies import common
from attnzoo.studies.scaling.measure import POINTS

REPORT = 'report.md'
PLOT = 'scaling.png'
REFERENCE = 'dense'  # ratios and crossovers are against it, measured in the same run


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
    return '—'
  if ratios[-1] >= 1:
    return f'> {lengths[-1]}'
  i = len(ratios) - 1
  while i > 0 and ratios[i - 1] < 1:
    i -= 1
  if i == 0:
    return f'< {lengths[0]}'
  (t0, t1), (r0, r1) = lengths[i - 1:i + 1], ratios[i - 1:i + 1]
  frac = math.log(r0) / (math.log(r0) - math.log(r1))  # where log ratio crosses 0
  return f'≈ {round(math.exp(math.log(t0) + frac * (math.log(t1) - math.log(t0))))}'


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
  """Per-variant series, slopes and crossovers; the latest record of each (variant, T) counts."""
  latest = {(r['variant'], r['T']): r for r in records}
  variants = sorted(dict.fromkeys(r['variant'] for r in records), key=lambda v: v != REFERENCE)
  lengths = sorted({T for _, T in latest})
  ref = {T: latest.get((REFERENCE, T)) for T in lengths}
  ref_time = {T: r['time_s'] for T, r in ref.items() if r and r['status'] == 'ok'}
  rows = {}
  for name in variants:
    ok = [latest[(name, T)] for T in lengths if latest.get((name, T), {}).get('status') == 'ok']
    times = {r['T']: r['time_s'] for r in ok}
    mems = {r['T']: r['peak_bytes'] for r in ok if r.get('peak_bytes')}
    both = [T for T in times if T in ref_time]
    last = next(r for (n, _), r in reversed(latest.items()) if n == name)
    rows[name] = {
        'causal': last['causal'], 'cost_class': last.get('cost_class', '?'),
        'options': last['options'], 'times': times, 'mems': mems,
        'status': {T: latest[(name, T)]['status'] if (name, T) in latest else 'skipped'
                   for T in lengths},
        # Slopes of the per-sequence cost (value / B, B = B·T / T): quadratic ≈ 2, linear ≈ 1.
        'time_slope': loglog_slope(list(times), [v * T for T, v in times.items()]),
        'mem_slope': loglog_slope(list(mems), [v * T for T, v in mems.items()]),
        'crossover': ('—' if name == REFERENCE else
                      crossover(both, [times[T] / ref_time[T] for T in both])),
    }
  ref_mem = {T: r.get('peak_bytes') for T, r in ref.items() if r and r['status'] == 'ok'}
  return {'lengths': lengths, 'rows': rows, 'ref_time': ref_time, 'ref_mem': ref_mem}


def _cell(value, ref_value, scale: float, spec: str, status: str) -> str:
  if value is None:
    return {'oom': 'oom', 'error': 'error', 'skipped': 'skip'}.get(status, '—')
  return common.fmt(value * scale, spec) + common.ratio(value, ref_value)


def _table(s, key: str, ref_values, scale: float, spec: str, slope: str) -> list[str]:
  crossover_col = key == 'times'
  header = (['variant', 'causal', 'cost'] + [str(T) for T in s['lengths']] + ['slope']
            + ['crossover'] * crossover_col)
  rows = []
  for name, row in s['rows'].items():
    rows.append([name, 'yes' if row['causal'] else 'no', row['cost_class']]
                + [_cell(row[key].get(T), ref_values.get(T), scale, spec, row['status'][T])
                   for T in s['lengths']]
                + [common.fmt(row[slope], '.2f')] + [row['crossover']] * crossover_col)
  return common.table(header, rows)


def report(workdir: str) -> str:
  """Writes report.md and scaling.png from workdir/scaling.jsonl; returns the Markdown."""
  records = jsonl.read(os.path.join(workdir, POINTS))
  if not records:
    raise ValueError(f'workdir={workdir!r}: no measurements in {POINTS}; run without '
                     '--report_only first')
  s = summarize(records)
  first = records[0]
  lines = [
      '# Attention scaling: forward+backward time and peak memory',
      '',
      f'B·T = {first["B"] * first["T"]}, H = {first["H"]}, D = {first["D"]}, float32, '
      f'{first["backend"]} ({first["device"]}). One step is grad of mean(out²) w.r.t. q, k, v '
      'and the variant\'s parameters; time is the median of repeats after compile, memory the '
      'compiled peak (arguments + outputs + temporaries). Slopes are log–log slopes of the '
      'per-sequence cost (value / B, with B·T fixed): quadratic attention ≈ 2, linear ≈ 1. '
      f'Each cell: value (ratio to {REFERENCE}, measured in the same run). '
      'oom: over the memory limit; skip: not run after the variant went over the time budget '
      f'or memory at a shorter length; error: see {POINTS}. Crossover: the length from '
      f'which the variant is faster than {REFERENCE} (log–log interpolation, measured lengths '
      'only).',
      '',
      '## Time (ms)', '', *_table(s, 'times', s['ref_time'], 1e3, '.1f', 'time_slope'), '',
      '## Peak memory (MiB)', '', *_table(s, 'mems', s['ref_mem'], 2**-20, '.0f', 'mem_slope'),
      '', '## Options (after fitting to T)', '',
      *[f'- {name}: {json.dumps({k: v for k, v in row["options"].items() if k != "max_len"})}'
        + (' (max_len = T)' if 'max_len' in row['options'] else '')
        for name, row in s['rows'].items()],
      '', f'![scaling]({PLOT})', '']
  plot(s, os.path.join(workdir, PLOT))
  return common.write_report(workdir, lines, REPORT)


def plot(summary: dict[str, Any], path: str):
  plt = common.plt()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for name, row in summary['rows'].items():
    style = dict(marker='o', color=common.color(name), lw=2.5 if name == REFERENCE else 1.5)
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
  if axes[1].lines:
    common.legend_outside(axes[1])
  fig.tight_layout()
  common.save(fig, path)
