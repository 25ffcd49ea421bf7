"""The benchmarks' report and plot, from benchmarks.jsonl alone."""
from __future__ import annotations

import os
from typing import Any

from attnzoo import jsonl
from attnzoo.studies import common
from attnzoo.studies.benchmarks.measure import EXACT, POINTS

REPORT = 'report.md'
PLOT = 'benchmarks.png'


def report(workdir: str) -> str:
  """Writes report.md and benchmarks.png from workdir/benchmarks.jsonl; returns the Markdown."""
  records = jsonl.read(os.path.join(workdir, POINTS))
  if not records:
    raise ValueError(f'workdir={workdir!r}: no measurements in {POINTS}; run without '
                     '--report_only first')
  decoder = [r for r in records if r['kind'] == 'decoder']
  exact = sorted({r['T']: r for r in records if r['kind'] == 'exact'}.values(),
                 key=lambda r: r['T'])
  lines = ['# Foundation benchmarks', '', f'{records[0]["backend"]} ({records[0]["device"]}).',
           '']
  if decoder:
    d = decoder[-1]
    lines += ['## Decoder training throughput', '',
              f'tokens/s, median of {d["rounds"]} alternating rounds of {d["steps"]} steps '
              f'after compile (batch {d["batch_size"]}, T={d["task"]["seq_len"]}, '
              f'd_model {d["model"]["d_model"]}, {d["model"]["num_layers"]} layers): attnzoo '
              f'{d["attnzoo_tokens_per_s"]:.0f}, flax.nnx.MultiHeadAttention '
              f'{d["flax_nnx_mha_tokens_per_s"]:.0f}, ratio {d["ratio"]:.2f}x', '']
  if exact:
    e = exact[0]
    mib = lambda b: f'{b / 2**20:.0f}'
    lines += ['## Exact attention: blockwise vs dense', '',
              f'Forward+backward of sum(out²), batch 1, H={e["heads"]}, D={e["head_dim"]}, '
              f'{"causal" if e["causal"] else "bidirectional"}; median of {e["repeats"]} '
              'repeats after compile; compiled peak (arguments + outputs + temporaries).', '',
              *common.table(
                  ['T', 'dense s', 'blockwise s', 'speed (dense / blockwise)', 'dense MiB',
                   'blockwise MiB', 'memory (blockwise / dense)'],
                  [[r['T'], _seconds(r['dense_s']), _seconds(r['blockwise_s']),
                    common.fmt(r.get('speed_ratio'), '.2f') + 'x' * ('speed_ratio' in r),
                    mib(r['dense_peak_bytes']), mib(r['blockwise_peak_bytes']),
                    f'{r["memory_ratio"]:.3f}'] for r in exact]),
              '', f'![benchmarks]({PLOT})', '']
    plot(exact, os.path.join(workdir, PLOT))
  return common.write_report(workdir, lines, REPORT)


def _seconds(x) -> str:
  return 'not run (memory)' if x is None else f'{x:.3f}'


def plot(rows: list[dict[str, Any]], path: str):
  plt = common.plt()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for name, _ in EXACT:
    for ax, key, scale in ((axes[0], f'{name}_s', 1e3), (axes[1], f'{name}_peak_bytes', 2**-20)):
      pts = [(r['T'], r[key] * scale) for r in rows if r[key] is not None]
      ax.plot([t for t, _ in pts], [y for _, y in pts], marker='o', color=common.color(name),
              label=name)
  for ax, ylabel in zip(axes, ('forward+backward time (ms)', 'compiled peak memory (MiB)')):
    ax.set(xscale='log', yscale='log', xlabel='sequence length T (batch 1)', ylabel=ylabel)
    ax.grid(True, which='both', alpha=0.3)
  common.legend_outside(axes[1])
  fig.tight_layout()
  common.save(fig, path)
