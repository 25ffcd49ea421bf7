"""Longformer: equals dense when the window covers everything, equals a dense reference with the
explicit band + global mask otherwise, stays O(T·w) (no [T, T] intermediate), finite gradients."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnzoo
from attnzoo.attention import base, dense, longformer


def _inputs(B=2, T=23, H=4, G=2, D=8, seed=0, mask=True):
  """NumPy inputs (no eager JAX ops to compile); the last batch row has every key masked."""
  rng = np.random.default_rng(seed)
  q, k, v = (rng.standard_normal(s, np.float32) for s in ((B, T, H, D), (B, T, G, D),
                                                          (B, T, G, D)))
  km = None
  if mask:
    km = rng.random((B, T)) < 0.75
    km[:, 0] = True
    km[-1] = False
  return q, k, v, km


def _module(**options):
  return attnzoo.make_attention('longformer', rngs=nnx.Rngs(0), **options)


def _reference_mask(T, window, global_tokens, causal):
  """The Longformer pattern written out position by position: [T, T] bool, True = attend."""
  m = np.zeros((T, T), bool)
  for i, j in itertools.product(range(T), range(T)):
    in_band = abs(i - j) <= window
    is_global = i < global_tokens or j < global_tokens
    m[i, j] = (in_band or is_global) and (not causal or j <= i)
  return m


def _reference(q, k, v, km, mask):
  full = jnp.asarray(mask)[None, None, None]
  if km is not None:
    full = full & km[:, None, None, None, :]
  probs = base.masked_softmax(dense.scores(q, k), full)  # [B, G, R, T, S]
  probs = probs.reshape(probs.shape[0], -1, *probs.shape[3:])  # [B, H, T, S]
  return attnzoo.apply_matrix(probs, v)


def _longformer(causal, km, **options):
  """Jitted longformer call (one compile beats dispatching each small op eagerly)."""
  module = _module(**options)
  return jax.jit(lambda q, k, v: module(q, k, v, causal=causal, key_mask=km))


# (causal, global_tokens, kv heads G, key mask, window as a function of T)
COVERING = [(False, 0, 4, False, lambda T: T - 1), (False, 3, 2, True, lambda T: T),
            (True, 0, 1, True, lambda T: 2 * T), (True, 3, 2, True, lambda T: T - 1),
            (False, 2, 1, False, lambda T: 2 * T)]


@pytest.mark.parametrize('causal,global_tokens,G,masked,window', COVERING)
def test_window_covering_sequence_equals_dense(causal, global_tokens, G, masked, window):
  q, k, v, km = _inputs(G=G, mask=masked)
  out = _longformer(causal, km, window=window(q.shape[1]), global_tokens=global_tokens)(q, k, v)
  ref = jax.jit(lambda q, k, v: dense.dot_product_attention(q, k, v, causal=causal,
                                                            key_mask=km))(q, k, v)
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('window,global_tokens,T', [(1, 0, 9), (3, 2, 23), (5, 30, 16)])
def test_small_window_equals_masked_dense(causal, window, global_tokens, T):
  q, k, v, km = _inputs(T=T)
  mask = _reference_mask(T, window, global_tokens, causal)
  out = _longformer(causal, km, window=window, global_tokens=global_tokens)(q, k, v)
  ref = jax.jit(lambda q, k, v: _reference(q, k, v, km, mask))(q, k, v)
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)
  np.testing.assert_array_equal(out[-1], 0.0)  # the fully masked batch row


@pytest.mark.parametrize('causal', [False, True])
def test_attention_matrix_follows_the_pattern(causal):
  q, k, v, km = _inputs(T=13)
  mask = _reference_mask(13, 2, 2, causal)
  module = _module(window=2, global_tokens=2)
  A = jax.jit(lambda q, k: module.attention_matrix(q, k, v, causal=causal, key_mask=km))(q, k)
  out = _longformer(causal, km, window=2, global_tokens=2)(q, k, v)
  np.testing.assert_allclose(attnzoo.apply_matrix(A, v), out, atol=2e-5, rtol=2e-5)
  assert not np.any(np.asarray(A)[:, :, ~mask])  # nothing outside the pattern


@pytest.mark.parametrize('causal', [False, True])
def test_gradients_finite_and_match_reference(causal):
  q, k, v, km = _inputs(T=19)
  mask = _reference_mask(19, 3, 2, causal)
  module = _module(window=3, global_tokens=2)
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))
  grad = lambda f: jax.jit(jax.grad(loss(f), argnums=(0, 1, 2)))(q, k, v)
  grads = grad(lambda q, k, v: module(q, k, v, causal=causal, key_mask=km))
  refs = grad(lambda q, k, v: _reference(q, k, v, km, mask))
  for g, r in zip(grads, refs):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, r, atol=5e-5, rtol=5e-5)


def _largest_intermediate(jaxpr):
  """Size of the largest array any equation produces, searching nested jaxprs too."""
  best = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      best = max(best, int(np.prod(getattr(var.aval, 'shape', ()))))
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (tuple, list)) else (param,)):
        inner = getattr(sub, 'jaxpr', None)
        if inner is not None:
          best = max(best, _largest_intermediate(getattr(inner, 'jaxpr', inner)))
  return best


def test_forward_and_backward_have_no_quadratic_intermediate():
  B, T, H, D, window = 1, 512, 1, 4, 8
  q, k, v, km = _inputs(B=B, T=T, H=H, G=1, D=D)
  module = _module(window=window, global_tokens=2)
  f = lambda q, k, v: jnp.sum(module(q, k, v, causal=False, key_mask=km))
  jaxpr = jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2)))(q, k, v).jaxpr
  # Band scores are T x 3w (+ global columns); a [T, T] array would be 262144.
  assert _largest_intermediate(jaxpr) <= T * (3 * window + 2)


def test_bad_options_raise():
  with pytest.raises(ValueError, match='longformer.window'):
    _module(window=0)
  with pytest.raises(ValueError, match='longformer.global_tokens'):
    _module(global_tokens=-1)


def test_cross_attention_is_refused():
  q, _, _, _ = _inputs(T=8, mask=False)
  _, k, v, _ = _inputs(T=9, mask=False)
  with pytest.raises(ValueError, match='cross'):
    _module()(q, k, v)


def test_defaults_and_pure_function():
  assert attnzoo.default_options('longformer') == {'window': 16, 'global_tokens': 1}
  caps = attnzoo.capabilities('longformer')
  assert caps.causal and caps.key_mask and not caps.cross and not caps.exact
  assert callable(longformer.longformer_attention)
