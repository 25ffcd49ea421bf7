"""Quality-vs-cost sweep: a tiny sweep writes results.jsonl, a restart skips finished runs and
redoes an unfinished one (its directory wiped), the report is built from results.jsonl alone."""
import json
import os
import shutil

import pytest

import attnzoo
from attnzoo import sweep

TINY = sweep.Settings(
    variants=('causal', 'linformer'), tasks=('mqar',), lengths=(16,), widths=(16,), num_heads=2,
    steps=3, batch_size=4, learning_rates=(3e-3,), warmup_steps=1, eval_batches=1,
    mqar_widths=(), mqar_points=(),
    task_overrides={'mqar': {'num_pairs': 2, 'num_layers': 1, 'mlp': False}},
    decode=sweep.DecodeSettings(length=16, batch_size=1, d_model=16, num_heads=4, num_layers=1,
                                kv_heads=(4, 1), vocab_size=16, positions='learned', repeats=1),
    options={'linformer': {'proj_dim': 4}})


def _lines(workdir):
  with open(os.path.join(workdir, sweep.RESULTS)) as f:
    return [json.loads(line) for line in f]


def test_tiny_sweep_resumes_and_reports(tmp_path):
  workdir = str(tmp_path)
  log = []
  new = sweep.run(workdir, TINY, log=log.append)
  assert len(new) == 4 and all(r['status'] == 'ok' for r in new), [r.get('reason') for r in new]
  records = _lines(workdir)
  assert [r['id'] for r in records] == [r['id'] for r in new]
  trains = [r for r in records if r['kind'] == 'train']
  assert [(r['variant'], r['form']) for r in trains] == [('causal', 'causal'),
                                                         ('linformer', 'masked')]
  for r in trains:
    assert r['learning_rate'] == 3e-3 and len(r['lr_grid']) == 1
    assert 0 <= r['accuracy'] <= 1 and r['step_s'] > 0 and r['compile_s'] > 0
    assert r['flops'] > r['attn_flops'] > 0 and r['peak_bytes'] > 0 and r['params'] > 0
  assert trains[1]['options'] == {'proj_dim': 4, 'max_len': 16}  # max_len follows T
  decodes = {r['num_kv_heads']: r for r in records if r['kind'] == 'decode'}
  assert decodes[4]['variant'] == 'causal' and decodes[1]['variant'] == 'mqa'
  assert decodes[4]['kv_bytes'] == 4 * decodes[1]['kv_bytes'] == decodes[4]['kv_bytes_formula']

  assert sweep.estimate_seconds(records, TINY) > 0

  # Restart: finished runs are skipped.
  assert sweep.run(workdir, TINY, log=log.append) == []
  # A run that died before its line was written is redone, its stale directory wiped first.
  lost = records[-1]
  with open(os.path.join(workdir, sweep.RESULTS), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records[:-1])
  stale = os.path.join(workdir, sweep.RUNS, lost['id'], 'stale.txt')
  os.makedirs(os.path.dirname(stale))
  open(stale, 'w').close()
  redone = sweep.run(workdir, TINY, log=log.append)
  assert [r['id'] for r in redone] == [lost['id']] and not os.path.exists(stale)
  assert len(_lines(workdir)) == 4

  # The report needs results.jsonl only. Two more MQAR widths (lines derived from the measured
  # ones) make the width section appear.
  with open(os.path.join(workdir, sweep.RESULTS), 'a') as f:
    for r in trains:
      f.write(json.dumps({**r, 'id': r['id'] + 'w', 'd_model': 8, 'accuracy': 0.25}) + '\n')
  shutil.rmtree(os.path.join(workdir, sweep.RUNS))
  text = sweep.report(workdir)
  with open(os.path.join(workdir, sweep.REPORT)) as f:
    assert f.read() == text
  for name in ('pareto_mqar.png', 'mqar_width.png', 'decode.png'):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert '## mqar, T=16, d_model=16, 2 pairs' in text
  assert '| causal | causal |' in text and '| linformer | masked |' in text
  assert '(1.00)' in text  # the causal row is its own reference
  assert '### T=16, 2 pairs' in text and '| causal | causal | 0.250 |' in text
  assert '| mqa | 1 |' in text and '| 4.00 | 4 |' in text  # MHA / MQA KV bytes = H / G


def test_plan_forms_aliases_and_ids():
  specs = sweep.plan(sweep.QUICK)
  trains = [s for s in specs if s['kind'] == 'train']
  names = {s['variant'] for s in trains}
  assert names == set(attnzoo.variant_names()) - set(sweep.ALIASES)
  forms = {s['variant']: s['form'] for s in trains}
  assert forms['linformer'] == 'masked' and forms['dense'] == 'masked'
  assert forms['causal'] == forms['mqa'] == forms['performer'] == 'causal'
  assert len({sweep.run_id(s) for s in specs}) == len(specs)  # the width sweep reuses d=64 runs
  assert all(s['options']['max_len'] == s['T'] for s in trains if s['variant'] == 'linformer')
  config = sweep.make_config(next(s for s in trains if s['variant'] == 'linformer'), 1e-3)
  assert config.model.causal is False and config.model.attention.name == 'linformer'


def test_best_learning_rate_is_kept():
  grid = [{'learning_rate': lr, 'loss': loss, 'accuracy': 0.5, 'step_s': 0.01, 'params': 3}
          for lr, loss in ((1e-3, 2.0), (3e-3, 1.5), (1e-2, float('nan')))]
  best = sweep.best_of(grid)
  assert best['learning_rate'] == 3e-3 and best['params'] == 3
  assert [g['learning_rate'] for g in best['lr_grid']] == [1e-3, 3e-3, 1e-2]


def test_pareto_front():
  points = [(1.0, 0.5), (2.0, 0.9), (1.5, 0.4), (3.0, 0.9), (0.5, 0.1)]
  assert sweep.pareto_front(points) == [4, 0, 1]


def test_bad_settings_name_the_field():
  with pytest.raises(ValueError, match='sweep.tasks'):
    sweep.Settings(tasks=('nope',))
  with pytest.raises(ValueError, match='decode.kv_heads'):
    sweep.DecodeSettings(num_heads=8, kv_heads=(3,))
