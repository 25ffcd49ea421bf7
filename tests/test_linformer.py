"""Linformer: identity projections give dense attention, masked keys reach no output, clear
errors for causal use and S > max_len, projections shared per `share`, finite gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnzoo
from attnzoo.attention import dense


def _inputs(B=2, T=12, S=12, H=4, G=2, D=8, seed=0):
  """NumPy inputs (no eager JAX ops to compile)."""
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((B, T, H, D), np.float32),
          rng.standard_normal((B, S, G, D), np.float32),
          rng.standard_normal((B, S, G, D), np.float32))


def _module(**options):
  return attnzoo.make_attention('linformer', rngs=nnx.Rngs(0), **options)


def _call(module, km=None):
  return jax.jit(lambda q, k, v: module(q, k, v, key_mask=km))


@pytest.mark.parametrize('share', ['none', 'kv'])
@pytest.mark.parametrize('G', [4, 1])
def test_identity_projections_equal_dense(share, G):
  q, k, v = _inputs(T=12, S=12, G=G)
  module = _module(proj_dim=12, max_len=12, share=share)
  module.E[...] = jnp.eye(12)
  if module.F is not None:
    module.F[...] = jnp.eye(12)
  out = _call(module)(q, k, v)
  np.testing.assert_allclose(out, dense.dot_product_attention(q, k, v), atol=2e-5, rtol=2e-5)


def test_masked_keys_do_not_affect_output():
  q, k, v = _inputs(T=7, S=10)  # cross-attention, projected over S
  km = np.ones((2, 10), bool)
  km[0, 3:6] = False
  km[1] = False  # every key masked: the row's output is zeros
  module = _module(proj_dim=4, max_len=16)
  call = _call(module, km)
  out = call(q, k, v)
  k2, v2 = k.copy(), v.copy()
  k2[~km], v2[~km] = 100.0, -50.0
  np.testing.assert_allclose(call(q, k2, v2), out, atol=1e-6)
  np.testing.assert_array_equal(out[1], 0.0)
  # ... while changing a key that is not masked does change the output.
  k2[0, 0] += 1.0
  assert not np.allclose(call(q, k2, v2)[0], out[0])


def test_attention_matrix_reproduces_output():
  q, k, v = _inputs(T=6, S=9, G=1)
  km = np.ones((2, 9), bool)
  km[0, ::3] = False
  module = _module(proj_dim=5, max_len=9)
  A = jax.jit(lambda q, k: module.attention_matrix(q, k, v, key_mask=km))(q, k)
  assert A.shape == (2, 4, 6, 9)
  np.testing.assert_array_equal(np.asarray(A)[0][..., ~km[0]], 0.0)
  np.testing.assert_allclose(attnzoo.apply_matrix(A, v), _call(module, km)(q, k, v),
                             atol=2e-5, rtol=2e-5)


def test_causal_use_raises_saying_why():
  q, k, v = _inputs()
  with pytest.raises(ValueError, match='linformer: causal=True.*not causal-capable.*future'):
    _module()(q, k, v, causal=True)


def test_key_length_beyond_max_len_raises():
  q, k, v = _inputs(T=4, S=12)
  with pytest.raises(ValueError, match='S.*12.*max_len=8'):
    _module(max_len=8)(q, k, v)


def test_share_options():
  unshared, kv, layer = _module(), _module(share='kv'), _module(share='layer-wise')
  assert unshared.F is not None and kv.F is None and layer.F is None
  assert unshared.E.shape == (32, 1024)  # defaults proj_dim=32, max_len=1024
  params = lambda m: jax.tree.leaves(nnx.state(m, nnx.Param))
  assert len(params(unshared)) == 2 and len(params(kv)) == 1
  std = float(jnp.std(unshared.E[...]))
  assert abs(std - 32 ** -0.5) < 0.01


@pytest.mark.parametrize('options,field', [({'proj_dim': 0}, 'proj_dim'),
                                           ({'max_len': -1}, 'max_len'),
                                           ({'share': 'all'}, 'share')])
def test_bad_options_raise(options, field):
  with pytest.raises(ValueError, match=f'linformer.{field}'):
    _module(**options)


def test_gradients_finite():
  q, k, v = _inputs(T=8, S=8)
  km = np.ones((2, 8), bool)
  km[1] = False
  module = _module(proj_dim=4, max_len=8)
  graphdef, params = nnx.split(module)

  def loss(params, q, k, v):
    return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(q, k, v, key_mask=km)))

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(params, q, k, v)
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g))
  assert float(jnp.abs(grads[0]['E'][...]).sum()) > 0


def test_fit_options_sets_max_len_to_the_sequence_length():
  options = {'proj_dim': 8, 'max_len': 1024, 'share': 'kv'}
  fitted = attnzoo.attention.fit_options('linformer', options, 48)
  assert fitted == {'proj_dim': 8, 'max_len': 48, 'share': 'kv'}
  assert options['max_len'] == 1024  # the caller's dict is not changed
  assert _module(**fitted).E.shape == (8, 48)
  # Variants whose options do not depend on the length keep them.
  assert attnzoo.attention.fit_options('longformer', {'window': 4}, 48) == {'window': 4}


def test_layer_wise_share_is_declared_and_the_model_builds_one_core():
  from attnzoo.config import base_config
  assert attnzoo.attention.layer_shared('linformer', {'share': 'layer-wise'})
  assert not attnzoo.attention.layer_shared('linformer', {'share': 'kv'})
  assert not attnzoo.attention.layer_shared('dense', {})
  for share, cores in (('layer-wise', 1), ('kv', 3)):
    c = base_config().model
    c.vocab_size, c.d_model, c.num_layers, c.max_len, c.causal = 16, 16, 3, 16, False
    c.attention.name = 'linformer'
    c.attention.linformer.update(proj_dim=4, max_len=16, share=share)
    model = attnzoo.Decoder(c, rngs=nnx.Rngs(0))
    assert len({id(b.attn.core) for b in model.blocks}) == cores
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))  # a shared core appears once
    assert sum(path[-1] == 'E' for path, _ in params) == cores
