"""Quality against cost for every attention variant, a client of the one training loop.

  plan.py      study config -> named training configs (references first), dropped rows
  hooks.py     eval hook: accuracy by key-query distance (MQAR) or position
  analysis.py  runs -> rows: seeds, cost ratios, the "not converged" rule, frontiers, findings
  report.py    report.md and plots

`run(config, workdir)` trains the references, then the rows of every group whose reference
converged (the others are recorded as skipped, with the reference's accuracy), and writes
workdir/study.json (plan, dropped and skipped rows, wall time, load), rows.jsonl and the report.
Each run is workdir/<run name>/, a normal training run (`attnzoo.load_run` loads it).
"""
from __future__ import annotations

import json
import os
import time

import jax

from attnzoo import jsonl
from attnzoo.studies import common
from attnzoo.studies.quality_vs_cost import analysis, hooks, plan, report

STUDY, ROWS = 'study.json', 'rows.jsonl'


def _load(workdir):
  path = os.path.join(workdir, STUDY)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _save(workdir, meta):
  with open(os.path.join(workdir, STUDY), 'w') as f:
    json.dump(meta, f, indent=2)


def _load_avg() -> str:
  return ' / '.join(f'{x:.1f}' for x in os.getloadavg())


def rows(config, workdir, skipped=None):
  runs, _ = plan.make_plan(config)
  skipped = _load(workdir).get('skipped', {}) if skipped is None else skipped
  return analysis.mark(analysis.rows_of(common.load_runs(workdir), runs, skipped),
                       config.study.threshold)


def run(config, workdir: str, *, log=print, estimate_for=None) -> str:
  """Trains (or, with study.estimate, only times) the plan and writes the report; returns the
  report's Markdown (or the estimate's text). `estimate_for` {name: study config}: the report
  estimates each one's time on this machine from the step times measured here."""
  runs, dropped = plan.make_plan(config)
  s = config.study
  if s.estimate:
    est = plan.estimate(config, runs, log=log)
    return (f'{len(runs)} runs, estimated {sum(est.values()) / 60:.1f} min on this machine '
            f'(load {_load_avg()})')
  os.makedirs(workdir, exist_ok=True)
  meta = _load(workdir)
  if not s.report_only:
    t0, load = time.perf_counter(), _load_avg()
    hook = lambda c: [hooks.Breakdown()]
    refs = [r for r in runs if r.reference]
    failed = common.run_plan(plan.configs(config, refs), workdir, hook, log=log)
    done = analysis.mark(analysis.rows_of(common.load_runs(workdir), refs, {}), s.threshold)
    ok = {analysis.group_key(r) for r in done if analysis.converged(r, s.threshold)}
    why = {analysis.group_key(r): r for r in done}
    rest, skipped = [], {}
    for r in runs:
      if r.reference:
        continue
      if (r.task, r.width, r.form) in ok:
        rest.append(r)
      else:
        ref = why[(r.task, r.width, r.form)]
        skipped[r.name] = (f'not trained: reference {ref["label"]} reached '
                           f'{common.fmt(ref["min"])} (min over seeds) < {s.threshold:g}')
    failed += common.run_plan(plan.configs(config, rest), workdir, hook, log=log)
    meta = {'wall_s': meta.get('wall_s', 0.0) + time.perf_counter() - t0,
            'load': meta.get('load', load), 'load_end': _load_avg(),
            'runs_trained': len(refs) + len(rest), 'failed': failed, 'skipped': skipped}
    common.write_explorers(workdir, [r.name for r in refs + rest], log=log)
  meta.update(config=json.loads(config.to_json()), study=json.loads(s.to_json()),
              dropped=dropped, backend=jax.default_backend(), cpus=os.cpu_count())
  meta.setdefault('wall_s', 0.0)
  for k in ('load', 'load_end'):
    meta.setdefault(k, '?')
  meta.setdefault('runs_trained', 0)
  measured = common.load_runs(workdir)
  for name, other in (estimate_for or {}).items():
    other_runs = plan.make_plan(other)[0]
    est = plan.estimate_from_runs(other, other_runs, measured)
    if est is not None:
      meta.setdefault('estimates', {})[f'`{name}` preset ({len(other_runs)} runs)'] = (
          f'{est / 3600:.1f} h on this machine, from the step times measured here, scaled by '
          'batch x length x width (and length again for N^2 variants)')
  _save(workdir, meta)
  marked = rows(config, workdir, meta.get('skipped', {}))
  jsonl.write(os.path.join(workdir, ROWS), marked)
  return report.write(workdir, marked, meta)
