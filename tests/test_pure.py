"""Every registered variant is a pure function under plain jax.jit, jax.grad and jax.vmap: built
outside and called inside with an explicit `rng` (random variants draw from it, the others
ignore it), or built inside from a seed. Random variants really use the key they are given."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnzoo
from attnzoo import attention

from helpers import SMALL_OPTIONS, make, qkv

NAMES = attention.variant_names()
RANDOM = [n for n in NAMES if attention.get(n).module.random]
TOL = dict(atol=1e-5, rtol=1e-5)


def test_the_random_variants_say_so():
  assert RANDOM == ['performer', 'reformer']


@pytest.mark.parametrize('name', NAMES)
def test_built_outside_called_under_jit_grad_vmap(name):
  module = make(name, eval_mode=False)  # training mode: random variants redraw per call
  q, k, v = qkv(0, B=1, T=16)
  rng = jax.random.key(7)
  call = lambda q, k, v, rng: module(q, k, v, rng=rng)
  np.testing.assert_allclose(jax.jit(call)(q, k, v, rng), call(q, k, v, rng), **TOL)

  loss = lambda q, k, v, rng: jnp.sum(call(q, k, v, rng) ** 2)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v, rng)
  for g, want in zip(grads, jax.grad(loss, argnums=(0, 1, 2))(q, k, v, rng)):
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(g, want, atol=1e-4, rtol=1e-4)

  stack = [qkv(s, B=1, T=16) for s in (1, 2)]
  rngs = jax.random.split(rng, 2)
  batched = jax.vmap(call)(*(jnp.stack(x) for x in zip(*stack)), rngs)
  for i, (qi, ki, vi) in enumerate(stack):
    np.testing.assert_allclose(batched[i], call(qi, ki, vi, rngs[i]), **TOL)


@pytest.mark.parametrize('name', NAMES)
def test_built_inside_jit_equals_built_outside(name):
  q, k, v = qkv(0, B=1, T=16)

  def fresh(q, k, v):  # a new module each call: its first draw from the 'attention' stream
    return attnzoo.make_attention(name, rngs=nnx.Rngs(0), **SMALL_OPTIONS.get(name, {}))(q, k, v)

  np.testing.assert_allclose(jax.jit(fresh)(q, k, v), fresh(q, k, v), **TOL)
  # Eval mode needs no key either: the fixed draw, the same inside and outside.
  module = make(name)
  np.testing.assert_allclose(jax.jit(lambda q, k, v: module(q, k, v))(q, k, v),
                             module(q, k, v), **TOL)


@pytest.mark.parametrize('name', RANDOM)
def test_random_variants_draw_from_the_given_key(name):
  module = make(name, eval_mode=False)
  q, k, v = qkv(0, B=1, T=16)
  call = jax.jit(lambda q, k, v, rng: module(q, k, v, rng=rng))
  a, b = call(q, k, v, jax.random.key(1)), call(q, k, v, jax.random.key(2))
  np.testing.assert_array_equal(a, call(q, k, v, jax.random.key(1)))
  assert not np.allclose(a, b)
  matrix = jax.jit(lambda q, k, rng: module.attention_matrix(q, k, v, rng=rng))
  np.testing.assert_allclose(attention.apply_matrix(matrix(q, k, jax.random.key(1)), v), a,
                             atol=1e-5)
  module.eval()  # eval mode: the fixed draw, whatever the key (a new trace: mode is static)
  call = jax.jit(lambda q, k, v, rng: module(q, k, v, rng=rng))
  np.testing.assert_array_equal(call(q, k, v, jax.random.key(1)),
                                call(q, k, v, jax.random.key(2)))


@pytest.mark.parametrize('name', RANDOM)
def test_decoder_with_a_random_variant_is_pure_given_rng(name):
  from attnzoo.config import base_config
  c = base_config().model
  c.vocab_size, c.d_model, c.num_layers, c.max_len = 16, 16, 2, 16
  c.attention.name = name
  c.attention[name].update(SMALL_OPTIONS[name])
  model = attnzoo.Decoder(c, rngs=nnx.Rngs(params=0, attention=1))
  tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 16)
  call = lambda tokens, rng: model(tokens, rng=rng)
  np.testing.assert_allclose(jax.jit(call)(tokens, jax.random.key(3)),
                             call(tokens, jax.random.key(3)), **TOL)
  assert not np.allclose(call(tokens, jax.random.key(3)), call(tokens, jax.random.key(4)))
