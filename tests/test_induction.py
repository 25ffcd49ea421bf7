"""The induction-heads study: variant specs, phase-change detection, checks, and a tiny
end-to-end run through the training loop that writes every output, rebuilds the report from
the saved files alone, and leaves runs that `load_run` restores."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import attnzoo
from attnzoo import tasks, train
from attnzoo.model import Decoder
from attnzoo.studies import induction
from attnzoo.studies.induction import analysis, circuit, plan
from helpers import ROOT, load_config

RUN_FILES = ('config.json', 'metrics.jsonl', 'summary.json', 'attention.npz', 'checkpoints')


def test_parse_variants():
  config = load_config('induction_heads')
  model = dict(config.model)
  causal, lf, perf, smear, gqa, two = plan.parse_variants(
      ['causal', 'longformer:window=4', 'performer:num_features=16', 'redraw=false',
       'causal:model.smear_keys=true', 'gqa:model.num_kv_heads=1', 'causal:model.num_layers=2'],
      model)
  assert (causal.name, causal.options, plan.depths(causal, config)) == ('causal', (), (2, 1))
  assert lf.options == (('window', 4),) and lf.slug == 'longformer_window-4'
  assert perf.label == 'performer:num_features=16,redraw=False'
  assert dict(perf.options) == {'num_features': 16, 'redraw': False}
  assert plan.depths(smear, config) == (1,) and dict(smear.model) == {'smear_keys': True}
  assert dict(gqa.model) == {'num_kv_heads': 1}
  assert plan.depths(two, config) == (2,)
  assert [s.label for s in plan.parse_variants('causal,causal')] == ['causal']
  runs = plan.make_plan(config, [causal, smear])
  assert list(runs) == ['causal-L2', 'causal-L1', 'causal_model.smear_keys-True-L1']
  assert [c.model.num_layers for c in runs.values()] == [2, 1, 1]
  assert runs['causal_model.smear_keys-True-L1'].model.smear_keys
  assert runs['causal-L1'].study.variant == 'causal' and 'variants' not in runs['causal-L1'].study


@pytest.mark.parametrize('spec, match', [
    ('nope', 'unknown attention variant'), ('causal+smear', 'unknown attention variant'),
    ('longformer:width=4', 'unknown option'), ('longformer:window=x', 'expected int'),
    ('longformer:window=0', 'longformer.window'), ('causal:window', 'key=value'),
    ('causal:model.layers=1', 'unknown model field'), ('linformer', 'not causal-capable')])
def test_bad_variant_specs_name_the_problem(spec, match):
  with pytest.raises(ValueError, match=match):
    plan.parse_variants(spec, dict(load_config('induction_heads').model))


def test_all_is_every_causal_variant_without_dense_duplicates():
  labels = [s.label for s in plan.parse_variants('all', dict(load_config('tiny').model))]
  assert labels[0] == 'causal' and 'causal:model.smear_keys=True' in labels
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
  p = analysis.phase_change(steps, loss, score, num_steps=1000)
  assert p['window'] == [50, 550] and p['total_drop'] == pytest.approx(4.15)
  j = p['jump']
  assert j['steps'] == [350, 550] and j['drop'] == pytest.approx(2.95)
  assert j['score'] == [0.05, 0.9] and j['fraction'] == pytest.approx(0.2)
  flat = analysis.phase_change(steps, np.full(len(steps), 3.0), score, num_steps=1000)
  assert 'window' not in flat and flat['jump']['drop'] == 0.0


def test_checks_of_a_variant_pair():
  mean = lambda name, loss, heads=(), **kw: {'ablated': name, 'mode': 'mean', 'heads': list(heads),
                                            'loss_repeat': loss, **kw}
  two = {'repeat_loss': 0.05, 'max_stripe': 0.8, 'max_previous_token': 0.2,
         'phase': {'jump': {'drop': 2.5, 'fraction': 0.15, 'score': [0.05, 0.8]}},
         'final_scores': {'previous_token': [[0.1, 0.2, 0.05, 0.0]]}, 'random_head': [0, 3],
         'ablations': [mean('path_q', 0.1), mean('path_k', 6.0), mean('path_v', 0.6),
                       mean('head', 0.4, [[0, 1]]), mean('head', 0.2, [[0, 3]]),
                       mean('previous_token_heads', 5.0, [[0, 0], [0, 1]], max_induction=0.1),
                       mean('induction_heads', 0.9, [[1, 2]])]}
  one = {'repeat_loss': 2.7, 'max_stripe': 0.04}
  c = analysis.checks(two, one)
  assert set(c) == {key for key, _ in analysis.CHECKS}
  assert [key for key, ok in c.items() if not ok] == ['path_qv', 'induction_group']
  two['random_head'] = [0, 1]  # the control must be another head: no verdict
  assert analysis.checks(two, one)['prev_single'] is None
  assert set(analysis.checks(None, one).values()) == {None, True}


def tiny_config():
  config = load_config('induction_heads')
  tiny = load_config('tiny')
  for part in ('task', 'model', 'train'):
    config[part] = tiny[part]
  config.model.mlp = False
  config.study.stripe_len = 12  # T = 25 <= 32; periods 3-8 in training
  config.study.score_batch = 4
  return config


def test_tiny_end_to_end_writes_everything_and_rebuilds_from_files(tmp_path, monkeypatch):
  # Two variants, one run each (a compile dominates every run): a 2-layer dense model and the
  # 1-layer smeared-key model.
  config = tiny_config()
  workdir = str(tmp_path)
  variants = ['causal:model.num_layers=2', 'causal:model.smear_keys=true']
  text = induction.run(config, workdir, variants, log=lambda _: None)
  runs = {'causal_model.num_layers-2-L2': 2, 'causal_model.smear_keys-True-L1': 1}
  for run, layers in runs.items():
    for name in RUN_FILES:
      assert os.path.exists(os.path.join(workdir, run, name)), (run, name)
    with open(os.path.join(workdir, run, 'metrics.jsonl')) as f:
      rows = [r for r in map(json.loads, f) if r['split'] == 'scores']
    assert [r['step'] for r in rows] == [0, 2, 4]
    assert np.asarray(rows[-1]['induction']).shape == (layers, 4)
    attn = np.load(os.path.join(workdir, run, 'attention.npz'))
    assert attn['probe_attention'].shape == (layers, 4, 25, 25)
  outputs = ('report.md', 'report.json', 'curves.png', 'generalisation.png',
             'attention_causal_model.num_layers-2.png', 'attention_causal_model.smear_keys-True.png')
  for name in outputs:
    assert os.path.isfile(os.path.join(workdir, name)), name
  report = json.load(open(os.path.join(workdir, 'report.json')))
  assert [(r['variant'], r['layers']) for r in report['rows']] == [
      ('causal:model.num_layers=2', 2), ('causal:model.smear_keys=True', 1)]
  ablated = [(a['ablated'], a['mode']) for a in report['rows'][0]['ablations']]
  assert ablated[:3] == [('path_q', 'mean'), ('path_k', 'mean'), ('path_v', 'mean')]
  assert ablated.count(('head', 'zero')) == 2 * 4 and ('path_k', 'zero') in ablated
  gen = report['rows'][0]['generalisation']  # learned positions: only lengths <= max_len = 32
  assert [t['seq_len'] for t in gen['task']] == [32]
  assert [p['length'] for p in gen['probe']] == [8]
  assert '| causal:model.smear_keys=True | 1 |' in text

  # Every run is a training run: load_run restores it, and its eval loss is the logged one.
  run_dir = os.path.join(workdir, 'causal_model.num_layers-2-L2')
  model, loaded = attnzoo.load_run(run_dir)
  assert loaded.model.num_layers == 2 and loaded.study.variant == 'causal:model.num_layers=2'
  batch = {k: jnp.asarray(v) for k, v in train.batch_for(loaded, 0, 'eval').items()
           if k in ('inputs', 'targets', 'weights', 'mask_repeat')}
  np.testing.assert_allclose(float(train.metrics_of(model, batch)['loss_repeat']),
                             report['rows'][0]['repeat_loss'], rtol=1e-5)

  # Rebuild from the files alone, in a fresh process (the command line's --report_only).
  for name in outputs:
    os.remove(os.path.join(workdir, name))
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', 'induction_heads.py'),
                        f'--workdir={workdir}', '--report_only'], capture_output=True, text=True,
                       cwd=workdir, check=True, env=dict(os.environ, PYTHONPATH=ROOT)).stdout
  assert out.strip() == induction.outputs(workdir).strip()
  assert 'report.md' in out and 'causal_model.num_layers-2-L2: repeat loss' in out
  with open(os.path.join(workdir, 'report.md')) as f:
    assert f.read().strip() == text.strip()
  for name in outputs:
    assert os.path.isfile(os.path.join(workdir, name)), name

  # Rerunning with the same config reuses the finished runs: nothing is built or trained.
  def forbidden(*args, **kwargs):
    raise AssertionError('finished runs must be reused')
  monkeypatch.setattr(train, 'build', forbidden)
  assert induction.run(config, workdir, variants, log=lambda _: None) == text


def test_a_user_error_is_one_line(tmp_path):
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', 'induction_heads.py'),
                        f'--workdir={tmp_path}', '--variants=causal+smear'], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 2
  assert out.stderr.strip().startswith('error: ') and 'causal+smear' in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1


# ---- path-specific ablations on a hand-built induction circuit ---------------------------------

V, T = 16, 24
TOK, POS, PREV, OUT = 0, V, V + T, 2 * V + T  # residual subspaces (one-hot codes)
D_MODEL = 3 * V + T


def hand_built_circuit():
  """A 2-layer, 1-head-per-layer attention-only Decoder wired by hand (Elhage et al. 2021):
  layer 1 attends from position i to i-1 and writes that token into a PREV subspace; layer 2
  queries with the current token, keys on PREV (K-composition) and copies the key's token into
  an OUT subspace, which the unembedding reads."""
  cfg = load_config('induction_heads_learned').model
  cfg.update(vocab_size=V, max_len=T, d_model=D_MODEL, num_heads=1, num_kv_heads=1,
             num_layers=2)
  model = Decoder(cfg, rngs=nnx.Rngs(0))

  def eye(rows, cols, n, scale=1.0, shift=0, shape=(D_MODEL, D_MODEL)):
    W = np.zeros(shape, np.float32)
    for i in range(n - shift):
      W[rows + i, cols + i + shift] = scale
    return jnp.asarray(W)

  model.embed.embedding[...] = eye(0, TOK, V, shape=(V, D_MODEL))
  model.pos[...] = eye(0, POS, T, shape=(T, D_MODEL))
  a1, a2 = model.blocks[0].attn, model.blocks[1].attn
  a1.q_proj.kernel[...] = eye(POS, 0, T, 3.0)  # query: own position i
  a1.k_proj.kernel[...] = eye(POS, 0, T, 3.0, shift=1)  # key j carries j + 1: i attends i - 1
  a1.v_proj.kernel[...] = eye(TOK, 0, V)
  a1.o_proj.kernel[...] = eye(0, PREV, V, 0.2)
  a2.q_proj.kernel[...] = eye(TOK, 0, V, 3.0)  # query: the current token
  a2.k_proj.kernel[...] = eye(PREV, 0, V, 3.0)  # key: the token before the key
  a2.v_proj.kernel[...] = eye(TOK, 0, V)  # value: the key's own token (the next one)
  a2.o_proj.kernel[...] = eye(0, OUT, V, 0.2)
  model.head.kernel[...] = eye(OUT, 0, V, 10.0, shape=(D_MODEL, V))
  model.eval()
  return model


def circuit_batch():
  return tasks.induction(np.random.default_rng(0), batch_size=8, seq_len=T, vocab_size=V,
                         min_period=3, max_period=8)


def repeat_loss(logits, batch):
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(batch['targets']))
  return float((xent * batch['mask_repeat']).sum() / batch['mask_repeat'].sum())


def test_path_forward_without_ablation_is_the_models_forward_exactly():
  x = jnp.asarray(circuit_batch()['inputs'])
  random_init = Decoder(train.model_config(tiny_config()), rngs=nnx.Rngs(3))  # GQA, V = 16
  # the default study's model: partial RoPE and Scalable-Softmax
  default = Decoder(train.model_config(load_config('induction_heads')), rngs=nnx.Rngs(4))
  for model in (hand_built_circuit(), random_init, default):
    logits, attns = model(x, return_attention=True)
    got, got_attns = circuit.forward(model, x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(logits))
    for a, b in zip(got_attns, attns):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('mode', circuit.MODES)
def test_removing_layer1_from_layer2_keys_breaks_the_circuit_but_not_values(mode):
  model, batch = hand_built_circuit(), circuit_batch()
  x = jnp.asarray(batch['inputs'])
  clean = repeat_loss(circuit.forward(model, x)[0], batch)
  loss = {kind: repeat_loss(circuit.forward(model, x, paths=[(0, 1, kind)], mode=mode)[0],
                            batch) for kind in circuit.INPUTS}
  assert clean < 0.2
  assert loss['k'] > 2.0  # the layer-2 head no longer finds the key after the earlier copy
  assert loss['q'] < clean + 0.1 and loss['v'] < clean + 0.2
  # Removing the previous-token head itself breaks it too; a path that does not exist is refused.
  assert repeat_loss(circuit.forward(model, x, heads=[(0, 0)], mode=mode)[0], batch) > 2.0
  with pytest.raises(ValueError, match='path'):
    circuit.forward(model, x, paths=[(1, 0, 'k')])
