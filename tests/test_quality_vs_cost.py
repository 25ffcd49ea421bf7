"""Quality-vs-cost study: the planner (every variant appears, forms, dropped rows with reasons),
a tiny study end to end through the training loop (resume, report from files, load_run), the
"not converged" rule, the distance breakdown and the findings on synthetic rows."""
import os
import shutil

import numpy as np
import pytest

import attnzoo
from attnzoo import tasks
from attnzoo.studies import common
from attnzoo.studies import quality_vs_cost as qvc
from attnzoo.studies.quality_vs_cost import analysis, hooks, plan
from helpers import load_config


@pytest.mark.parametrize('preset', ['standard', 'full'])
def test_plan_has_every_variant_with_a_run_or_a_reason(preset):
  config = load_config('quality_vs_cost', preset)
  runs, dropped = plan.make_plan(config)
  trained = {r.spec.name for r in runs}
  named = {row.split(' ')[2].split(':')[0] for row in dropped}
  assert set(attnzoo.variant_names()) <= trained | named, set(attnzoo.variant_names()) - trained
  assert all(reason for reason in dropped.values())
  assert len({r.name for r in runs}) == len(runs)
  forms = {r.spec.name: r.form for r in runs if not r.reference}
  assert forms['linformer'] == 'masked' and forms['performer'] == forms['mqa'] == 'causal'
  # Every group has its reference, listed (and so trained) before every other run.
  first_other = min(i for i, r in enumerate(runs) if not r.reference)
  assert all(r.reference for r in runs[:first_other])
  groups = {(r.task, r.width, r.form) for r in runs}
  refs = {(r.task, r.width, r.form): r for r in runs if r.reference}
  assert groups == set(refs)
  assert {r.spec.label for r in refs.values()} == {config.study.reference,
                                                   config.study.masked_reference}
  assert all(len([r for r in runs if r.reference and (r.task, r.width, r.form) == g])
             == len(config.study.reference_seeds) for g in groups)
  # Aliases are rows with a reason, not trained twice.
  assert any(k.startswith(f'{config.study.cheap_task} ') and ' cross (causal)' in k
             and 'same computation as causal' in v for k, v in dropped.items())
  for r in runs:  # Linformer's projections cover each task's length
    c = plan.run_config(config, r.task, r.width, r.form, r.spec, r.seed)
    assert c.model.causal == (r.form == 'causal') and c.model.d_model == r.width
    if r.spec.name == 'linformer':
      assert c.model.attention.linformer.max_len == c.task.seq_len


def test_unrunnable_rows_are_dropped_with_the_reason():
  config = load_config('quality_vs_cost', 'test')
  config.study.variants = ('causal', 'causal:model.num_kv_heads=3', 'performer:num_features=8')
  config.study.tasks.mqar.widths = (16, 32)
  runs, dropped = plan.make_plan(config)
  assert 'mqar d=16 causal:model.num_kv_heads=3 (causal)' in dropped
  assert 'model.num_kv_heads=3' in dropped['mqar d=16 causal:model.num_kv_heads=3 (causal)']
  assert any(r.spec.label == 'performer:num_features=8' and r.width == 32 for r in runs)
  assert not any(r.spec.name == 'mqa' and r.width == 32 for r in runs)  # cheap: first width only


def test_bad_study_fields_are_named():
  config = load_config('quality_vs_cost', 'test')
  config.study.tasks.mqar.widths = (18,)
  with pytest.raises(ValueError, match='study.tasks.mqar.widths'):
    plan.make_plan(config)
  config = load_config('quality_vs_cost', 'test')
  config.study.cheap_task = 'nope'
  with pytest.raises(ValueError, match="study.cheap_task='nope'"):
    plan.make_plan(config)
  config = load_config('quality_vs_cost', 'test')
  config.study.variants = ('performer:features=3',)
  with pytest.raises(ValueError, match='features'):
    plan.make_plan(config)


def test_tiny_study_end_to_end(tmp_path):
  workdir = str(tmp_path / 'study')
  config = load_config('quality_vs_cost', 'test')
  log = []
  bigger = load_config('quality_vs_cost', 'test')
  bigger.train.batch_size *= 2
  text = qvc.run(config, workdir, log=log.append, estimate_for={'bigger': bigger})
  runs, dropped = plan.make_plan(config)
  assert '## Runtime estimates' in text and '`bigger` preset' in text
  rows = common.load_runs(workdir)
  assert {r['name'] for r in rows} == {r.name for r in runs}
  assert all(r['summary'] and not r['error'] for r in rows), [r['error'] for r in rows]
  s = next(r['summary'] for r in rows if r['name'].startswith('mqar_d16_causal_causal'))
  b = s['breakdown']
  assert b['by'] == 'distance' and sum(b['count']) == 2 * 8  # 2 answers x 8 sequences
  assert s['step_s'] > 0 and s['flops'] > 0 and s['peak_bytes'] > 0
  assert next(r['summary']['breakdown']['by'] for r in rows
              if r['name'].startswith('induction')) == 'position'
  for name in ('report.md', 'rows.jsonl', 'study.json', 'pareto_mqar.png',
               'pareto_induction.png', 'breakdown.png'):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert '## Findings' in text and '`linformer:proj_dim=4` | masked' in text
  assert 'same computation as causal' in text  # dropped rows are listed
  # Every run is a normal training run: load_run restores it.
  model, c = attnzoo.load_run(os.path.join(workdir, runs[0].name))
  assert c.task.name == runs[0].task.split('_')[0] and model.blocks[0].attn.num_heads == 4
  # A rerun trains nothing; the report is rebuilt from the saved files alone.
  log.clear()
  for r in runs:
    shutil.rmtree(os.path.join(workdir, r.name, 'checkpoints'))
  config.study.report_only = True
  assert qvc.run(config, workdir, log=log.append, estimate_for={'bigger': bigger}) == text
  assert not log
  assert plan.estimate_from_runs(load_config('quality_vs_cost', 'test'), runs, rows) > 0
  est = plan.estimate(config, runs[:1], log=log.append)
  assert list(est) == [runs[0].name] and est[runs[0].name] > 0


def _row(label, task='t', width=64, form='causal', acc=(0.9,), step_s=1.0, reference=False,
         correct=None, count=None):
  return {'task': task, 'width': width, 'form': form, 'label': label,
          'variant': label.split(':')[0], 'reference': reference,
          'seeds': list(range(len(acc))), 'accuracy': list(acc), 'mean': float(np.mean(acc)),
          'min': min(acc), 'max': max(acc), 'step_s': step_s, 'peak_bytes': 1.0, 'flops': 1.0,
          'params': 1, 'compile_s': 1.0, 'problems': [], 'by': 'distance',
          'bins': [[1, 1], [2, 3], [4, 7], [8, 15]], 'correct': correct, 'count': count,
          'task_config': {'name': 'mqar', 'vocab_size': 128}}


def test_not_converged_rows_are_not_ranked():
  rows = analysis.mark([
      _row('causal', acc=(0.99, 0.94), reference=True),  # one seed below 0.95
      _row('performer:num_features=64', acc=(0.97,), step_s=3.0),
      _row('causal', width=128, acc=(0.99, 0.96), reference=True),
      _row('performer:num_features=64', width=128, acc=(0.5,), step_s=2.0),
  ], threshold=0.95)
  assert [r['status'] for r in rows] == ['not converged', 'not converged', 'ok', 'ok']
  assert '0.940' in rows[1]['why']
  assert rows[3]['x_step_s'] == 2.0
  text = ' '.join(analysis.findings(rows, threshold=0.95, target=0.9))
  assert 'd_model=64: 0.990 (seed 0), 0.940 (seed 1); not converged' in text
  assert 'performer on t (d_model=64)' not in text  # not ranked
  assert 'performer on t (d_model=128): no setting tried reaches 0.9' in text


def test_findings_cheapest_knob_and_distance():
  rows = analysis.mark([
      _row('causal', acc=(1.0, 1.0), reference=True),
      _row('performer:num_features=16', acc=(0.4,), step_s=2.0),
      _row('performer:num_features=64', acc=(0.93,), step_s=3.0),
      _row('performer:num_features=256', acc=(0.95,), step_s=5.0),
      _row('longformer:window=4', acc=(0.1,), step_s=0.5, correct=[0, 1, 49, 2],
           count=[0, 10, 100, 100]),
  ], threshold=0.95)
  text = analysis.findings(rows, threshold=0.95, target=0.9)
  assert any('performer on t (d_model=64): the cheapest setting reaching 0.9 is '
             'num_features=64 (accuracy 0.930, 3.00x' in f for f in text), text
  assert any('longformer:window=4 on t (d_model=64): overall 0.10; 0.49 at distance 4–7, '
             'at most 0.02 at distance > 7.' in f for f in text), text
  front = analysis.pareto_front([(r['step_s'], r['mean']) for r in rows])
  assert [rows[i]['label'] for i in front] == ['longformer:window=4', 'causal']


def test_pareto_front():
  points = [(1.0, 0.5), (2.0, 0.9), (1.5, 0.4), (3.0, 0.9), (0.5, 0.1)]
  assert analysis.pareto_front(points) == [4, 0, 1]


def test_distance_breakdown():
  batch = tasks.mqar(np.random.default_rng(0), batch_size=4, seq_len=32, vocab_size=64,
                     num_pairs=8)
  w, d, x = batch['weights'] > 0, batch['distance'], batch['inputs']
  assert (d[~w] == 0).all() and (d[w] >= 2).all()
  rows, cols = np.nonzero(w)
  assert (x[rows, cols - d[w]] == x[rows, cols]).all()  # the key sits `distance` back
  correct = np.zeros_like(w)
  correct[w & (d < 8)] = True  # right only at distances < 8
  right, count = hooks.breakdown(correct, batch['weights'], d, len(hooks.bins_upto(32)))
  assert sum(count) == w.sum() and count[0] == 0
  assert right[:3] == count[:3] and right[3:] == [0, 0, 0]
  assert hooks.bins_upto(32) == [(1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 63)]
