"""The induction-heads experiment: variant specs, phase-change detection, and a tiny end-to-end
run that writes every output and rebuilds the report from the saved files alone."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import attnzoo
from attnzoo import induction, train
from helpers import ROOT, load_config

RUN_FILES = ('config.json', 'metrics.jsonl', 'scores.jsonl', 'summary.json', 'attention.npz')


def test_parse_variants():
  model = dict(load_config('induction_heads').model)
  causal, lf, perf, smear, gqa = induction.parse_variants(
      ['causal', 'longformer:window=4', 'performer:num_features=16', 'redraw=false',
       'causal+smear', 'gqa:num_kv_heads=1'], model)
  assert (causal.name, causal.options, causal.layers) == ('causal', (), (2, 1))
  assert lf.options == (('window', 4),) and lf.slug == 'longformer_window-4'
  assert perf.label == 'performer:num_features=16,redraw=false'
  assert dict(perf.options) == {'num_features': 16, 'redraw': False}
  assert smear.layers == (1,) and dict(smear.model) == {'smear_keys': True}
  assert dict(gqa.model) == {'num_kv_heads': 1}
  assert induction.parse_variants('causal:layers=2')[0].layers == (2,)
  assert [s.label for s in induction.parse_variants('causal,causal')] == ['causal']


@pytest.mark.parametrize('spec, match', [
    ('nope', 'unknown attention variant'), ('causal+fast', 'unknown suffix'),
    ('longformer:width=4', 'unknown option'), ('longformer:window=x', 'expected int'),
    ('longformer:window=0', 'longformer.window'), ('causal:window', 'key=value')])
def test_bad_variant_specs_name_the_problem(spec, match):
  with pytest.raises(ValueError, match=match):
    induction.parse_variants(spec)


def test_all_is_every_causal_variant_without_dense_duplicates():
  labels = [s.label for s in induction.parse_variants('all')]
  assert labels[0] == 'causal' and 'causal+smear' in labels
  assert {'dense', 'cross'}.isdisjoint(labels)
  for name in attnzoo.variant_names():
    if not attnzoo.capabilities(name).causal:
      assert all(not label.startswith(name) for label in labels)
  for label in ('longformer:window=4', 'longformer:window=32', 'performer:num_features=16',
                'performer:num_features=128', 'mqa', 'gqa', 'reformer', 'flash'):
    if label.split(':')[0] in attnzoo.variant_names():
      assert label in labels


def test_phase_change_finds_the_drop_and_the_score_rise():
  steps = np.arange(0, 1001, 50)
  loss = np.where(steps < 400, 3.0, np.where(steps < 550, 1.0, 0.05))
  loss[0] = 4.2
  score = np.where(steps < 450, 0.05, 0.9)
  p = induction.phase_change(steps, loss, score, num_steps=1000)
  assert p['window'] == [50, 550] and p['total_drop'] == pytest.approx(4.15)
  j = p['jump']
  assert j['steps'] == [350, 550] and j['drop'] == pytest.approx(2.95)
  assert j['score'] == [0.05, 0.9] and j['fraction'] == pytest.approx(0.2)
  flat = induction.phase_change(steps, np.full(len(steps), 3.0), score, num_steps=1000)
  assert 'window' not in flat and flat['jump']['drop'] == 0.0


def tiny_config():
  c = load_config('tiny')
  c.train.num_steps = 4
  c.train.eval_every = 2
  c.induction = {'stripe_len': 12, 'score_batch': 4}  # T = 25 <= 32; periods 3-8 in training
  return c


def test_checks_of_a_variant_pair():
  two = {'repeat_loss': 0.05, 'max_stripe': 0.8, 'max_previous_token': 0.2,
         'phase': {'jump': {'drop': 2.5, 'fraction': 0.15, 'score': [0.05, 0.8]}},
         'ablations': [{'ablated': 'previous_token', 'loss_repeat': 0.4},
                       {'ablated': 'random', 'loss_repeat': 0.2},
                       {'ablated': 'previous_token_heads', 'loss_repeat': 5.0,
                        'max_induction': 0.1}]}
  one = {'repeat_loss': 2.7, 'max_stripe': 0.04}
  c = induction.checks(two, one)
  assert set(c) == {key for key, _ in induction.CHECKS}
  assert [key for key, ok in c.items() if not ok] == ['ablation']
  assert set(induction.checks(None, one).values()) == {None, True}


def test_tiny_end_to_end_writes_everything_and_rebuilds_from_files(tmp_path, monkeypatch):
  # Two variants, one run each (a compile dominates every run): a 2-layer dense model and the
  # 1-layer smeared-key model.
  config = load_config('tiny')
  config.train.num_steps = 4
  config.train.eval_every = 2
  config.induction = {'stripe_len': 12, 'score_batch': 4}  # T = 25 <= 32; periods 3-8
  workdir = str(tmp_path)
  variants = ['causal:layers=2', 'causal+smear']
  text = induction.run(config, workdir, variants, log=lambda _: None)
  runs = {'causal_layers-2-L2': 2, 'causal+smear-L1': 1}
  for run, layers in runs.items():
    for name in RUN_FILES:
      assert os.path.isfile(os.path.join(workdir, run, name)), (run, name)
    with open(os.path.join(workdir, run, 'scores.jsonl')) as f:
      rows = [json.loads(line) for line in f]
    assert [r['step'] for r in rows] == [0, 2, 4]
    assert np.asarray(rows[-1]['induction']).shape == (layers, 4)
    attn = np.load(os.path.join(workdir, run, 'attention.npz'))
    assert attn['probe_attention'].shape == (layers, 4, 25, 25)
  outputs = ('report.md', 'report.json', 'curves.png', 'attention_causal_layers-2.png',
             'attention_causal+smear.png')
  for name in outputs:
    assert os.path.isfile(os.path.join(workdir, name)), name
  report = json.load(open(os.path.join(workdir, 'report.json')))
  assert [(r['variant'], r['layers']) for r in report['rows']] == [
      ('causal:layers=2', 2), ('causal+smear', 1)]
  ablated = [a['ablated'] for a in report['rows'][0]['ablations']]
  assert ablated[:3] == ['previous_token', 'induction', 'random']
  assert '| causal+smear | 1 |' in text

  # Rebuild from the files alone, in a fresh process (the command line's --report_only).
  for name in outputs:
    os.remove(os.path.join(workdir, name))
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', 'induction_heads.py'),
                        f'--workdir={workdir}', '--report_only'], capture_output=True, text=True,
                       cwd=workdir, check=True).stdout
  assert out.strip() == text.strip()
  for name in outputs:
    assert os.path.isfile(os.path.join(workdir, name)), name

  # Rerunning with the same config reuses the finished runs: nothing is built or trained.
  def forbidden(*args, **kwargs):
    raise AssertionError('finished runs must be reused')
  monkeypatch.setattr(train, 'build', forbidden)
  monkeypatch.setattr(induction, 'train_run', forbidden)
  assert induction.run(config, workdir, variants, log=lambda _: None) == text
