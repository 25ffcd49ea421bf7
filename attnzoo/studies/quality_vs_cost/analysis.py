"""From the saved runs to rows: quality over seeds, cost ratios to the group's reference, the
"not converged" rule, Pareto frontiers and findings computed from the rows.

A row is one (task, width, form, variant spec) over its seeds. Its group is (task, width,
form); the group's reference is the study's reference (causal form) or masked reference.
A group whose reference did not reach `threshold` on every seed is "not converged": none of
its rows is ranked, put on a frontier or used in a finding.
"""
from __future__ import annotations

import statistics
from typing import Any

from attnzoo.studies.quality_vs_cost.plan import CAUSAL, MASKED  # noqa: F401  (re-exported)

SCORED = {'induction': 'repeat', 'mqar': 'answer', 'copy': 'answer'}  # metric mask per task
OK, NOT_CONVERGED, FAILED = 'ok', 'not converged', 'failed'


def chance(task: dict) -> float:
  """Accuracy of a uniform guess among the tokens that can be the answer."""
  V = task['vocab_size']
  return {'mqar': 1 / (V - V // 2), 'induction': 1 / (V - 1), 'copy': 1 / (V - 2)}[task['name']]


def quality(summary: dict, task_name: str) -> float:
  final = summary['final']
  return final.get(f'accuracy_{SCORED.get(task_name, "")}', final['accuracy'])


def rows_of(runs: list[dict], plan_runs: list, skipped: dict[str, str]) -> list[dict[str, Any]]:
  """Rows (one per task, width, form, spec) from common.load_runs' runs and the plan's Run
  list; `skipped` maps run names that were not trained to the reason."""
  by_name = {r['name']: r for r in runs}
  rows: dict[tuple, dict] = {}
  for p in plan_runs:
    key = (p.task, p.width, p.form, p.spec.label)
    row = rows.setdefault(key, {
        'task': p.task, 'width': p.width, 'form': p.form, 'label': p.spec.label,
        'variant': p.spec.name, 'reference': p.reference, 'seeds': [], 'accuracy': [],
        'step_s': [], 'peak_bytes': None, 'flops': None, 'params': None, 'compile_s': [],
        'correct': None, 'count': None, 'bins': None, 'by': None, 'problems': [],
        'task_config': None})
    run = by_name.get(p.name)
    if p.name in skipped:
      row['problems'].append(skipped[p.name])
      continue
    if run is None or run['summary'] is None:
      row['problems'].append(f'seed {p.seed}: ' + (run['error'] if run and run['error']
                                                   else 'not run'))
      continue
    s = run['summary']
    row['task_config'] = run['config']['task']
    row['seeds'].append(p.seed)
    row['accuracy'].append(quality(s, run['config']['task']['name']))
    row['step_s'].append(s['step_s'])
    row['compile_s'].append(s['compile_s'])
    row['peak_bytes'], row['flops'], row['params'] = s['peak_bytes'], s['flops'], s['params']
    b = s.get('breakdown')
    if b:
      row['bins'], row['by'] = b['bins'], b['by']
      add = lambda old, new: new if old is None else [x + y for x, y in zip(old, new)]
      row['correct'], row['count'] = add(row['correct'], b['correct']), add(row['count'],
                                                                            b['count'])
  out = list(rows.values())
  for r in out:
    acc = r['accuracy']
    r['mean'] = statistics.fmean(acc) if acc else None
    r['min'], r['max'] = (min(acc), max(acc)) if acc else (None, None)
    r['step_s'] = statistics.median(r['step_s']) if r['step_s'] else None
    r['compile_s'] = statistics.median(r['compile_s']) if r['compile_s'] else None
  return out


def group_key(r: dict) -> tuple:
  return (r['task'], r['width'], r['form'])


def references(rows: list[dict]) -> dict[tuple, dict]:
  return {group_key(r): r for r in rows if r['reference']}


def converged(ref: dict | None, threshold: float) -> bool:
  """The reference reached `threshold` on every seed it was trained on (and all its seeds ran)."""
  return bool(ref and ref['accuracy'] and not ref['problems'] and ref['min'] >= threshold)


def mark(rows: list[dict], threshold: float) -> list[dict]:
  """Sets each row's `status` (ok | not converged | failed), `why`, and cost ratios to its
  group's reference (`x_step_s`, `x_peak_bytes`, `x_flops`)."""
  refs = references(rows)
  for r in rows:
    ref = refs.get(group_key(r))
    if not converged(ref, threshold):
      got = 'nothing' if not ref or ref['min'] is None else f'{ref["min"]:.3f}'
      r['status'] = NOT_CONVERGED
      r['why'] = (f'reference {ref["label"] if ref else "?"} ({r["form"]}) reached {got} '
                  f'(min over seeds) < {threshold:g}')
    elif not r['accuracy']:
      r['status'], r['why'] = FAILED, '; '.join(r['problems'])
    else:
      r['status'], r['why'] = OK, '; '.join(r['problems'])
    for k in ('step_s', 'peak_bytes', 'flops'):
      r[f'x_{k}'] = (r[k] / ref[k] if ref and r[k] is not None and ref.get(k) else None)
  return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
  """Indices of the points no other point beats (cost <= and quality >=, one strictly), sorted
  by cost: the quality-against-cost frontier."""
  front = [i for i, (c, q) in enumerate(points)
           if not any(c2 <= c and q2 >= q and (c2 < c or q2 > q)
                      for j, (c2, q2) in enumerate(points) if j != i)]
  return sorted(front, key=lambda i: points[i])


def bin_text(b) -> str:
  return str(b[0]) if b[0] == b[1] else f'{b[0]}–{b[1]}'


def bin_accuracy(r: dict) -> list[float | None]:
  return [c / n if n else None for c, n in zip(r['correct'] or [], r['count'] or [])]


def _family(rows: list[dict]) -> dict[tuple, list[dict]]:
  out: dict[tuple, list[dict]] = {}
  for r in rows:
    out.setdefault((r['task'], r['width'], r['form'], r['variant']), []).append(r)
  return out


def _knob(label: str) -> str:
  return label.partition(':')[2] or '(defaults)'


def findings(rows: list[dict], *, threshold: float, target: float) -> list[str]:
  """Sentences computed from the marked rows."""
  out = []
  refs = references(rows)
  for key, ref in sorted(refs.items()):
    task, width, form = key
    accs = ', '.join(f'{a:.3f} (seed {s})' for s, a in zip(ref['seeds'], ref['accuracy']))
    state = ('converged' if converged(ref, threshold) else
             f'not converged (< {threshold:g}): the group\'s other rows are not ranked')
    out.append(f'{ref["label"]} ({form}) on {task} at d_model={width}: {accs or "no run"}; '
               f'{state}.')
  ok = [r for r in rows if r['status'] == OK and not r['reference']]
  for (task, width, form, variant), fam in sorted(_family(ok).items()):
    fam = sorted(fam, key=lambda r: r['step_s'])
    good = [r for r in fam if r['mean'] >= target]
    tried = ', '.join(f'{_knob(r["label"])} {r["mean"]:.2f}' for r in fam)
    if good:
      g = good[0]
      out.append(f'{variant} on {task} (d_model={width}): the cheapest setting reaching '
                 f'{target:g} is {_knob(g["label"])} (accuracy {g["mean"]:.3f}, '
                 f'{g["x_step_s"]:.2f}x the reference\'s step time); tried: {tried}.')
    else:
      out.append(f'{variant} on {task} (d_model={width}): no setting tried reaches {target:g} '
                 f'(tried: {tried}).')
  for task in sorted({r['task'] for r in ok}):
    good = sorted((r for r in ok if r['task'] == task and r['mean'] >= target),
                  key=lambda r: r['x_step_s'] or 0)
    if good:
      g = good[0]
      out.append(f'On {task}, the cheapest non-reference row reaching {target:g} is {g["label"]}'
                 f' at d_model={g["width"]} ({g["form"]}): {g["x_step_s"]:.2f}x the reference\'s'
                 f' step time, {g["x_peak_bytes"]:.2f}x its peak memory.')
  for r in sorted(ok, key=lambda r: (r['task'], r['width'], r['label'])):
    accs = bin_accuracy(r)
    if r['mean'] >= target or not any(a is not None for a in accs):
      continue
    best = max((i for i, a in enumerate(accs) if a is not None), key=lambda i: accs[i])
    beyond = [a for a in accs[best + 1:] if a is not None]
    tail = (f', at most {max(beyond):.2f} at {r["by"]} > {r["bins"][best][1]}' if beyond
            else '')
    out.append(f'{r["label"]} on {r["task"]} (d_model={r["width"]}): overall {r["mean"]:.2f}; '
               f'{accs[best]:.2f} at {r["by"]} {bin_text(r["bins"][best])}{tail}.')
  widths: dict[tuple, list[dict]] = {}
  for r in rows:
    if r['status'] == OK:
      widths.setdefault((r['task'], r['form'], r['label']), []).append(r)
  for (task, form, label), ws in sorted(widths.items()):
    if len(ws) < 2:
      continue
    ws = sorted(ws, key=lambda r: r['width'])
    first = next((r['width'] for r in ws if r['mean'] >= target), None)
    tried = ', '.join(f'd={r["width"]} {r["mean"]:.2f}' for r in ws)
    out.append(f'{label} on {task}: ' + (f'reaches {target:g} from d_model={first}' if first
                                         else f'does not reach {target:g} at any width')
               + f' ({tried}).')
  return out
