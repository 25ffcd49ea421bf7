"""Bad input gets a ValueError that names the offending field, raised in Python (eagerly)."""
import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx

import attnzoo
from attnzoo import tasks
from attnzoo.model import Decoder
from helpers import load_config, make

NON_CROSS = [n for n in attnzoo.variant_names() if not attnzoo.capabilities(n).cross]
NON_CAUSAL = [n for n in attnzoo.variant_names() if not attnzoo.capabilities(n).causal]


def _call(name='dense', q_shape=(1, 8, 4, 8), kv_shape=(1, 8, 2, 8), key_mask=None, k_shape=None,
          **kw):
  q = jnp.ones(q_shape)
  k = jnp.ones(k_shape or kv_shape)
  return make(name)(q, k, jnp.ones(kv_shape), key_mask=key_mask, **kw)


def _model(**overrides):
  cfg = load_config('tiny').model
  cfg.vocab_size = 16
  for key, value in overrides.items():
    target = cfg
    *path, last = key.split('.')
    for p in path:
      target = target[p]
    target[last] = value
  return Decoder(cfg, rngs=nnx.Rngs(0))


def _task(**overrides):
  cfg = ml_collections.ConfigDict(dict(load_config('tiny').task))
  cfg.update(overrides)
  return tasks.make_batch(cfg, seed=0, step=0, batch_size=2, vocab_size=cfg.vocab_size)


BAD = {
    'unknown variant': (lambda: attnzoo.make_attention('nope', rngs=nnx.Rngs(0)), 'name'),
    'unknown option': (lambda: attnzoo.make_attention('blockwise', rngs=nnx.Rngs(0), size=3),
                       'size'),
    'bad option value': (lambda: attnzoo.make_attention('blockwise', rngs=nnx.Rngs(0),
                                                        block_k=0), 'block_k'),
    'q rank': (lambda: _call(q_shape=(8, 4, 8)), r'q\.shape'),
    'H % G': (lambda: _call(kv_shape=(1, 8, 3, 8)), 'heads'),
    'head_dim mismatch': (lambda: _call(kv_shape=(1, 8, 2, 8), k_shape=(1, 8, 2, 6)), 'k.shape'),
    'k/v length mismatch': (lambda: _call(k_shape=(1, 9, 2, 8)), 'k.shape'),
    'key_mask shape': (lambda: _call(key_mask=jnp.ones((1, 7), bool)), 'key_mask.shape'),
    'key_mask dtype': (lambda: _call(key_mask=jnp.ones((1, 8))), 'key_mask.dtype'),
    'causal not bool': (lambda: _call(causal='yes'), 'causal'),
    'decoder positions': (lambda: _model(positions='alibi'), 'model.positions'),
    'decoder kv heads': (lambda: _model(num_kv_heads=3), 'model.num_kv_heads'),
    'decoder d_model': (lambda: _model(d_model=18), 'model.d_model'),
    'decoder variant name': (lambda: _model(**{'attention.name': 'nope'}), 'name'),
    'decoder layers': (lambda: _model(num_layers=0), 'model.num_layers'),
    'scalable softmax without causal': (lambda: _model(causal=False, scalable_softmax=True),
                                        'model.scalable_softmax'),
    'sequence too long': (lambda: _model()(jnp.zeros((1, 40), jnp.int32)), 'tokens.shape'),
    'task name': (lambda: _task(name='sorting'), 'task.name'),
    'induction period': (lambda: _task(max_period=16), 'task.max_period'),
    'induction min period': (lambda: _task(min_period=1), 'task.min_period'),
}
if NON_CROSS:
  BAD['T != S without cross'] = (lambda: _call(NON_CROSS[0], kv_shape=(1, 6, 2, 8)), 'S')
if NON_CAUSAL:
  BAD['causal where not capable'] = (lambda: _call(NON_CAUSAL[0], causal=True), 'causal')
  BAD['decoder causal with non-causal variant'] = (
      lambda: _model(**{'attention.name': NON_CAUSAL[0]}), 'model.attention.name')


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_input_raises_value_error_naming_the_field(case):
  fn, field = BAD[case]
  with pytest.raises(ValueError, match=field):
    fn()


def test_unknown_name_lists_known_variants():
  with pytest.raises(ValueError) as err:
    attnzoo.make_attention('nope', rngs=nnx.Rngs(0))
  for name in attnzoo.variant_names():
    assert name in str(err.value)


def test_mqar_too_many_pairs():
  cfg = ml_collections.ConfigDict(dict(name='mqar', seq_len=16, vocab_size=64, num_pairs=8))
  with pytest.raises(ValueError, match='task.num_pairs'):
    tasks.make_batch(cfg, seed=0, step=0, batch_size=2, vocab_size=64)
