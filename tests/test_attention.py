"""Contract tests parameterized over the whole registry, so every new variant is covered."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnzoo
from attnzoo.attention import apply_matrix
from helpers import make, qkv

NAMES = attnzoo.variant_names()
EXACT = [n for n in NAMES if attnzoo.capabilities(n).exact]
CAUSAL = [n for n in NAMES if attnzoo.capabilities(n).causal]
MASKABLE = [n for n in NAMES if attnzoo.capabilities(n).key_mask]


def reference(q, k, v, causal, key_mask):
  mask = None if key_mask is None else key_mask[:, None, None, :]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)


# (B, T, S, H, G, D, causal, masked): lengths not powers of two, GQA G in {H, H/2, 1}.
CASES = [(2, 13, 13, 4, 4, 8, False, False), (1, 37, 37, 4, 2, 16, True, True),
         (2, 20, 20, 6, 1, 8, True, False), (2, 19, 45, 4, 2, 8, False, True),
         (1, 33, 33, 2, 2, 12, False, True), (2, 29, 17, 4, 1, 8, True, True)]


@pytest.mark.parametrize('name', EXACT)
@pytest.mark.parametrize('case', CASES, ids=lambda c: 'B{}T{}S{}H{}G{}D{}c{:d}m{:d}'.format(*c))
def test_exact_variant_matches_softmax_reference(name, case):
  B, T, S, H, G, D, causal, masked = case
  caps = attnzoo.capabilities(name)
  if T != S and not caps.cross:
    pytest.skip('no cross capability')
  q, k, v = qkv(1, B, T, S, H, G, D)
  key_mask = None
  if masked:
    key_mask = jax.random.bernoulli(jax.random.key(2), 0.6, (B, S)).at[:, 0].set(True)
  module = make(name)
  f = jax.jit(lambda q, k, v: module(q, k, v, causal=causal, key_mask=key_mask))
  r = jax.jit(lambda q, k, v: reference(q, k, v, causal, key_mask))
  np.testing.assert_allclose(f(q, k, v), r(q, k, v), atol=2e-5, rtol=2e-5)
  w = jax.random.normal(jax.random.key(3), (B, T, H, D))  # a generic cotangent
  grads = jax.jit(jax.grad(lambda *a: (f(*a) * w).sum(), argnums=(0, 1, 2)))(q, k, v)
  ref_grads = jax.jit(jax.grad(lambda *a: (r(*a) * w).sum(), argnums=(0, 1, 2)))(q, k, v)
  for g, rg, what in zip(grads, ref_grads, 'qkv'):
    np.testing.assert_allclose(g, rg, atol=5e-5, rtol=5e-5, err_msg=f'd{what}')


@pytest.mark.parametrize('name', CAUSAL)
def test_causal_variants_do_not_leak_the_future(name):
  q, k, v = qkv(4, T=24)
  module = make(name)
  f = jax.jit(lambda q, k, v: module(q, k, v, causal=True))
  out = f(q, k, v)
  for t in (0, 7, 16):
    q2, k2, v2 = qkv(5, T=24)  # fresh values for every position > t
    later = jnp.arange(24)[None, :, None, None] > t
    q2, k2, v2 = (jnp.where(later, b, a) for a, b in zip((q, k, v), (q2, k2, v2)))
    out2 = f(q2, k2, v2)
    np.testing.assert_allclose(out2[:, :t + 1], out[:, :t + 1], atol=1e-5, rtol=1e-5,
                               err_msg=f'positions <= {t} changed when only the future changed')
    assert not np.allclose(out2[:, t + 1:], out[:, t + 1:])  # the test can fail


@pytest.mark.parametrize('name', MASKABLE)
def test_fully_masked_rows_give_zeros_not_nan(name):
  q, k, v = qkv(6, T=16)
  key_mask = jnp.ones((2, 16), bool).at[1].set(False)  # batch row 1 has no key at all
  module = make(name)
  causal = module.default_causal
  f = jax.jit(lambda q, k, v: module(q, k, v, causal=causal, key_mask=key_mask))
  out = f(q, k, v)
  np.testing.assert_array_equal(out[1], 0.0)
  assert np.isfinite(out).all() and np.abs(out[0]).sum() > 0
  grads = jax.jit(jax.grad(lambda *a: (f(*a) ** 2).sum() + f(*a).sum(), argnums=(0, 1, 2)))(
      q, k, v)
  for g in grads:
    assert np.isfinite(g).all()
    np.testing.assert_array_equal(g[1], 0.0)


@pytest.mark.parametrize('name', NAMES)
def test_attention_matrix_reproduces_output(name):
  caps = attnzoo.capabilities(name)
  q, k, v = qkv(7, T=20)
  key_mask = (jax.random.bernoulli(jax.random.key(8), 0.7, (2, 20)).at[:, 0].set(True)
              if caps.key_mask else None)
  module = make(name)
  for causal in sorted({False, module.default_causal} if caps.causal else {False}):
    A = module.attention_matrix(q, k, v, causal=causal, key_mask=key_mask)
    assert A.shape == (2, 4, 20, 20)
    out = module(q, k, v, causal=causal, key_mask=key_mask)
    np.testing.assert_allclose(apply_matrix(A, v), out, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('name', NAMES)
def test_eval_mode_is_deterministic(name):
  q, k, v = qkv(9, T=16)
  module = make(name)
  np.testing.assert_array_equal(module(q, k, v), module(q, k, v))


@pytest.mark.parametrize('name', NAMES)
def test_capability_flags_are_enforced(name):
  caps = attnzoo.capabilities(name)
  module = make(name)
  if not caps.causal:
    with pytest.raises(ValueError, match='causal'):
      module(*qkv(0, T=16), causal=True)
  if not caps.cross:
    with pytest.raises(ValueError, match='S'):
      module(*qkv(0, T=16, S=12))


def test_registry_lists_every_variant_named_in_the_design():
  expected = {'dense', 'causal', 'cross', 'mqa', 'gqa', 'blockwise'}
  assert expected <= set(NAMES) and list(NAMES) == sorted(NAMES)
  assert attnzoo.capabilities('causal').exact and attnzoo.capabilities('dense').cost == 'N^2'
  assert make('causal').default_causal and not make('dense').default_causal
