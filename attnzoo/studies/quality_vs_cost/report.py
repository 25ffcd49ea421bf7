"""report.md and the plots (pareto_<task>.png, width.png, breakdown.png) from the saved runs."""
from __future__ import annotations

import os
from typing import Any

from attnzoo.studies import common
from attnzoo.studies.quality_vs_cost import analysis as an

MARKERS = {32: 'v', 64: 'o', 128: 's', 256: 'D'}


def _acc(r) -> str:
  if r['mean'] is None:
    return '—'
  spread = '' if len(r['accuracy']) < 2 else f' ({r["min"]:.3f}–{r["max"]:.3f})'
  return f'{r["mean"]:.3f}{spread}'


def _mib(x):
  return None if x is None else x / 2**20


def _gflop(x):
  return None if x is None else x / 1e9


def _x(r, k) -> str:
  v = r.get(f'x_{k}')
  return '' if v is None else f' ({v:.2f}x)'


def task_table(rows: list[dict]) -> list[str]:
  header = ('variant', 'form', 'seeds', 'accuracy (min–max)', 'ms/step (x ref)',
            'peak MiB (x ref)', 'GFLOP/step (x ref)', 'params', 'compile s', 'status')
  body = []
  for r in rows:
    ms = None if r['step_s'] is None else r['step_s'] * 1e3
    status = r['status'] + (f': {r["why"]}' if r['why'] else '')
    body.append((f'`{r["label"]}`' + (' (ref)' if r['reference'] else ''), r['form'],
                 len(r['seeds']), _acc(r), common.fmt(ms, '.1f') + _x(r, 'step_s'),
                 common.fmt(_mib(r['peak_bytes']), '.1f') + _x(r, 'peak_bytes'),
                 common.fmt(_gflop(r['flops']), '.2f') + _x(r, 'flops'),
                 common.fmt(r['params'], ','), common.fmt(r['compile_s'], '.1f'), status))
  return common.table(header, body)


def breakdown_table(rows: list[dict]) -> list[str]:
  rows = [r for r in rows if r['count']]
  if not rows:
    return []
  bins = rows[0]['bins']
  used = [i for i in range(len(bins)) if any(r['count'][i] for r in rows)]
  header = ['variant', 'form', 'd_model'] + [an.bin_text(bins[i]) for i in used]
  body = [[f'`{r["label"]}`', r['form'], r['width']]
          + [common.fmt(an.bin_accuracy(r)[i], '.2f') for i in used] for r in rows]
  return common.table(header, body)


def summary_table(rows: list[dict]) -> list[str]:
  """Every variant spec: per task accuracy and step-time ratio to the reference, at the task's
  main width (the one with most converged rows, then most rows, then the widest)."""
  tasks = list(dict.fromkeys(r['task'] for r in rows))
  def rank(t, w):
    same = [r for r in rows if (r['task'], r['width']) == (t, w)]
    return sum(r['status'] == an.OK for r in same), len(same), w
  main = {t: max({r['width'] for r in rows if r['task'] == t}, key=lambda w, t=t: rank(t, w))
          for t in tasks}
  labels = list(dict.fromkeys((r['label'], r['form']) for r in rows))
  body = []
  for label, form in labels:
    cells = []
    for t in tasks:
      r = next((r for r in rows if (r['label'], r['form'], r['task'], r['width'])
                == (label, form, t, main[t])), None)
      if r is None:
        cells.append('')
      elif r['status'] != an.OK:
        cells.append(r['status'])
      else:
        cells.append(f'{r["mean"]:.2f} @ {common.fmt(r["x_step_s"], ".2f")}x')
    body.append([f'`{label}`', form] + cells)
  return common.table(['variant', 'form'] + [f'{t} (d={main[t]})' for t in tasks], body)


def pareto_plot(rows: list[dict], task: str, chance: float, path: str):
  plt = common.plt()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  pts = [r for r in rows if r['task'] == task and r['mean'] is not None and r['step_s']]
  for r in pts:
    ok = r['status'] == an.OK
    c = common.color(r['label'])
    ax.scatter(r['step_s'] * 1e3, r['mean'], s=45, marker=MARKERS.get(r['width'], 'o'),
               facecolors=c if r['form'] == an.CAUSAL else 'none', edgecolors=c,
               alpha=1.0 if ok else 0.3, linewidths=1.3, zorder=3,
               label=f'{r["label"]} d={r["width"]}' + ('' if ok else ' (not converged)'))
    if len(r['accuracy']) > 1:
      ax.vlines(r['step_s'] * 1e3, r['min'], r['max'], colors=[c], lw=1, zorder=2)
  for form, ls in ((an.CAUSAL, '-'), (an.MASKED, '--')):
    same = [r for r in pts if r['form'] == form and r['status'] == an.OK]
    xy = [(r['step_s'] * 1e3, r['mean']) for r in same]
    front = [xy[i] for i in an.pareto_front(xy)]
    if front:
      ax.step(*zip(*front), where='post', color='black', ls=ls, lw=1, alpha=0.6,
              label=f'frontier ({form})', zorder=1)
  common.chance_line(ax, chance)
  ax.set_xscale('log')
  ax.set(xlabel='train step (ms, log scale)', ylabel=f'{task} accuracy', ylim=(-0.03, 1.03),
         title=f'{task}: quality against cost (filled: causal, hollow: masked form)')
  ax.grid(True, which='both', alpha=0.3)
  common.legend_outside(ax)
  common.save(fig, path)


def width_plot(rows: list[dict], path: str) -> bool:
  groups = {}
  for r in rows:
    if r['mean'] is not None:
      groups.setdefault(r['task'], {}).setdefault((r['label'], r['form']), []).append(r)
  tasks = [t for t, g in groups.items() if any(len(v) > 1 for v in g.values())]
  if not tasks:
    return False
  plt = common.plt()
  fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
  for ax, t in zip(axes[0], tasks):
    for (label, form), rs in groups[t].items():
      rs = sorted(rs, key=lambda r: r['width'])
      if len(rs) < 2:
        continue
      ax.plot([r['width'] for r in rs], [r['mean'] for r in rs], marker='o',
              color=common.color(label), ls='-' if form == an.CAUSAL else '--',
              label=label + ('' if form == an.CAUSAL else ' (masked)'))
    widths = sorted({r['width'] for rs in groups[t].values() for r in rs})
    ax.set_xscale('log', base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.minorticks_off()
    common.chance_line(ax, an.chance(next(r['task_config'] for rs in groups[t].values()
                                          for r in rs if r['task_config'])))
    ax.set(xlabel='d_model', ylabel=f'{t} accuracy', ylim=(-0.03, 1.03), title=t)
    ax.grid(True, alpha=0.3)
    common.legend_outside(ax)
  fig.tight_layout()
  common.save(fig, path)
  return True


def breakdown_plot(rows: list[dict], tasks: list[str], path: str) -> bool:
  tasks = [t for t in tasks if any(r['count'] and r['task'] == t for r in rows)]
  if not tasks:
    return False
  plt = common.plt()
  fig, axes = plt.subplots(len(tasks), 1, figsize=(7.5, 3.6 * len(tasks)), squeeze=False)
  for ax, t in zip(axes[:, 0], tasks):
    rs = [r for r in rows if r['task'] == t and r['count']]
    width = max({r['width'] for r in rs}, key=lambda w: sum(r['width'] == w for r in rs))
    rs = [r for r in rs if r['width'] == width]
    bins = rs[0]['bins']
    used = [i for i in range(len(bins)) if any(r['count'][i] for r in rs)]
    for r in rs:
      acc = an.bin_accuracy(r)
      ax.plot(range(len(used)), [acc[i] for i in used], marker='o', color=common.color(
          r['label']), ls='-' if r['form'] == an.CAUSAL else '--', alpha=1.0 if r['status']
          == an.OK else 0.3, label=r['label'] + ('' if r['form'] == an.CAUSAL else ' (masked)'))
    ax.set_xticks(range(len(used)), [an.bin_text(bins[i]) for i in used])
    common.chance_line(ax, an.chance(rs[0]['task_config']))
    ax.set(xlabel=f'key–query {rs[0]["by"]}' if rs[0]['by'] == 'distance' else
           'target position', ylabel='accuracy', ylim=(-0.03, 1.03),
           title=f'{t}, d_model={width}: accuracy by {rs[0]["by"]}')
    ax.grid(True, alpha=0.3)
    common.legend_outside(ax)
  fig.tight_layout()
  common.save(fig, path)
  return True


def write(workdir: str, rows: list[dict], meta: dict[str, Any]) -> str:
  """report.md and the plots in workdir; returns the Markdown."""
  s = meta['study']
  tasks = list(dict.fromkeys(r['task'] for r in rows))
  b = meta['config']['train']
  m = meta['config']['model']
  lines = ['# Quality against cost: every attention variant', '',
           f'Budget per run: {b["num_steps"]} steps (unless a task says otherwise), batch '
           f'{b["batch_size"]}, lr {b["learning_rate"]:g} ({b["warmup_steps"]} warmup, cosine), '
           f'{m["num_layers"]} layers, mlp={m["mlp"]}, {m["num_heads"]} heads, positions '
           f'{m["positions"]}. Seeds {tuple(s["seeds"])}, reference seeds '
           f'{tuple(s["reference_seeds"])}. Backend {meta["backend"]}, {meta["cpus"]} CPUs.',
           '',
           f'Wall time of the study, end to end: **{meta["wall_s"] / 60:.1f} min** '
           f'({meta["runs_trained"]} runs trained; load average {meta["load"]} at the start, '
           f'{meta["load_end"]} at the end; other jobs shared the machine when it was above the '
           'number of CPUs).', '',
           '- **accuracy**: eval accuracy on the scored tokens (MQAR: the answers; induction: '
           'the repeated part), mean over seeds (min–max).',
           '- **form**: `causal` = next token; `masked` = the bidirectional masked-token form '
           '(`model.causal=False`) for variants that cannot be causal, referenced to '
           f'`{s["masked_reference"]}` in the same form.',
           f'- **not converged**: the (task, width, form) group\'s reference stayed below '
           f'{s["threshold"]:g} on some seed; such rows are not ranked, not on frontiers and not '
           'in the findings. Ratios (x ref) are to the group\'s reference.',
           '- **ms/step**: median compiled train-step time (forward, backward, AdamW); **peak '
           'MiB**: arguments + outputs + temporaries of the compiled step; **GFLOP/step**: XLA\'s '
           'cost analysis (it counts a loop body once: variants with scans are lower bounds).',
           '']
  lines += ['## Findings', ''] + [f'- {f}' for f in an.findings(
      rows, threshold=s['threshold'], target=s['target'])] + ['']
  lines += ['## Every variant (main width): accuracy @ step time / reference', '']
  lines += summary_table(rows) + ['']
  for t in tasks:
    task = next((r['task_config'] for r in rows if r['task'] == t and r['task_config']), None)
    extra = '' if task is None else ', '.join(f'{k}={v}' for k, v in task.items())
    lines += [f'## {t} ({extra}; chance {an.chance(task):.3f})' if task else f'## {t}', '']
    for w in sorted({r['width'] for r in rows if r['task'] == t}):
      lines += [f'### d_model={w}', ''] + task_table(
          [r for r in rows if r['task'] == t and r['width'] == w]) + ['']
    by = next((r['by'] for r in rows if r['task'] == t and r['by']), None)
    if by:
      main = [r for r in rows if r['task'] == t and r['count']]
      lines += [f'Accuracy by {by} (summed over seeds):', ''] + breakdown_table(main) + ['']
    if task:
      pareto_plot(rows, t, an.chance(task), os.path.join(workdir, f'pareto_{t}.png'))
      lines += [f'![pareto {t}](pareto_{t}.png)', '']
  if width_plot(rows, os.path.join(workdir, 'width.png')):
    lines += ['## Accuracy against width', '', '![width](width.png)', '']
  if breakdown_plot(rows, tasks, os.path.join(workdir, 'breakdown.png')):
    lines += ['## Accuracy by distance / position', '', '![breakdown](breakdown.png)', '']
  if meta['dropped']:
    lines += ['## Not trained', ''] + [f'- {k}: {v}' for k, v in meta['dropped'].items()] + ['']
  if meta.get('estimates'):
    lines += ['## Runtime estimates', ''] + [f'- {k}: {v}' for k, v in meta['estimates'].items()]
  return common.write_report(workdir, lines)
