"""End-to-end training: smoke test for every variant, resume, multi-device mesh, load_run."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import attnzoo
from attnzoo import train
from helpers import ROOT, SMALL_OPTIONS, load_config, tiny


def rows(workdir, split='eval'):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if r['split'] == split]


@pytest.mark.parametrize('name', attnzoo.variant_names())
def test_every_variant_trains_on_the_tiny_config(name, tmp_path):
  caps = attnzoo.capabilities(name)
  config = tiny(**{'model.attention.name': name, 'model.causal': caps.causal})
  config.model.attention[name].update(SMALL_OPTIONS.get(name, {}))
  final = train.train_and_evaluate(config, str(tmp_path))
  assert final['step'] == 4 and np.isfinite(final['loss'])
  assert [r["step"] for r in rows(tmp_path)] == [0, 2, 4]
  train_rows = rows(tmp_path, 'train')
  assert all(r['tokens_per_s'] > 0 and np.isfinite(r['loss']) for r in train_rows)
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['model']['attention']['name'] == name


def test_training_reduces_the_loss(tmp_path):
  final = train.train_and_evaluate(tiny(**{'train.num_steps': 150, 'train.eval_every': 5,
                                           'train.learning_rate': 1e-2}), str(tmp_path))
  first = rows(tmp_path)[0]
  assert final['loss_repeat'] < first['loss_repeat'] - 0.5


def test_random_positions_reach_training_but_not_evaluation(tmp_path):
  runs = {}
  for P in (0, 128):
    config = tiny(**{'model.positions': 'rope', 'task.random_positions': P})
    runs[P] = train.train_and_evaluate(config, str(tmp_path / str(P)))
  first = {P: (rows(tmp_path / str(P), 'train')[0], rows(tmp_path / str(P))[0]) for P in runs}
  assert first[0][0]['loss'] != first[128][0]['loss']  # the first step trained elsewhere
  assert first[0][1]['loss'] == first[128][1]['loss']  # ... from the same initial model
  assert np.isfinite(runs[128]['loss'])


@pytest.mark.parametrize('name', [n for n in ('causal', 'performer')
                                  if n in attnzoo.variant_names()])
def test_stopping_halfway_and_rerunning_matches_an_uninterrupted_run(name, tmp_path):
  config = tiny(**{'model.attention.name': name, 'train.num_steps': 6, 'train.eval_every': 3,
                   'train.checkpoint_every': 100})
  full = train.train_and_evaluate(config, str(tmp_path / 'full'))
  config.train.stop_after = 3
  half = train.train_and_evaluate(config, str(tmp_path / 'split'))
  assert half['step'] == 3
  config.train.stop_after = 0
  resumed = train.train_and_evaluate(config, str(tmp_path / 'split'))
  assert resumed['step'] == 6
  for key in full:
    if key != 'split':
      np.testing.assert_allclose(resumed[key], full[key], rtol=1e-6, err_msg=key)
  assert rows(tmp_path / 'split') == rows(tmp_path / 'full')


def test_load_run_restores_model_and_returns_attention(tmp_path):
  config = tiny()
  train.train_and_evaluate(config, str(tmp_path))
  model, loaded = attnzoo.load_run(str(tmp_path))
  assert loaded.model.attention.name == config.model.attention.name
  tokens = jax.numpy.asarray(train.batch_for(config, 0)['inputs'])
  logits, attns = model(tokens, return_attention=True)
  B, T = tokens.shape
  assert logits.shape == (B, T, config.task.vocab_size)
  assert len(attns) == config.model.num_layers
  for A in attns:
    assert A.shape == (B, config.model.num_heads, T, T)
    np.testing.assert_allclose(A.sum(-1), 1.0, atol=1e-5)
    assert float(np.abs(np.triu(A, 1)).max()) == 0.0  # causal
  eval_loss = rows(tmp_path)[-1]['loss']
  batch = {k: jax.numpy.asarray(v) for k, v in train.batch_for(config, 0, 'eval').items()
           if k in ('inputs', 'targets', 'weights')}
  assert abs(float(train.metrics_of(model, batch)['loss']) - eval_loss) < 1.0


def test_encoder_decoder_copy_trains(tmp_path):
  config = load_config('copy')
  config.update_from_flattened_dict({'task.seq_len': 12, 'task.encoder_decoder': True,
                                     'model.d_model': 16, 'model.max_len': 12,
                                     'train.num_steps': 2, 'train.batch_size': 4,
                                     'train.eval_every': 2, 'train.eval_batches': 1})
  final = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(final['loss'])


MESH_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import jax
from attnzoo import train
from helpers import load_config
c = load_config('tiny')
c.train.num_steps = 6
c.train.eval_every = 3
final = train.train_and_evaluate(c, sys.argv[1])
print(json.dumps({{'devices': jax.device_count(), **final}}))
"""


def _run_with_devices(n, workdir):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={n}',
             JAX_PLATFORMS='cpu')
  script = MESH_SCRIPT.format(tests=os.path.join(ROOT, 'tests'))
  out = subprocess.run([sys.executable, '-c', script, str(workdir)], env=env, check=True,
                       capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def test_eight_fake_devices_give_the_same_loss_as_one(tmp_path):
  one = _run_with_devices(1, tmp_path / 'one')
  eight = _run_with_devices(8, tmp_path / 'eight')
  assert (one['devices'], eight['devices']) == (1, 8)
  np.testing.assert_allclose(eight['loss'], one['loss'], rtol=1e-4)
  np.testing.assert_allclose(rows(tmp_path / 'eight', 'train')[-1]['loss'],
                             rows(tmp_path / 'one', 'train')[-1]['loss'], rtol=1e-4)


@pytest.mark.skipif('flash' not in attnzoo.variant_names(), reason='flash not registered')
def test_flash_training_matches_dense_at_the_same_seed(tmp_path):
  finals = {}
  for name in ('causal', 'flash'):
    config = tiny(**{'model.attention.name': name, 'train.num_steps': 6,
                     'train.eval_every': 6})
    config.model.attention[name].update(SMALL_OPTIONS.get(name, {}))
    finals[name] = train.train_and_evaluate(config, str(tmp_path / name))
  for key in ('loss', 'loss_repeat', 'accuracy'):
    np.testing.assert_allclose(finals['flash'][key], finals['causal'][key], rtol=1e-4,
                               err_msg=key)
