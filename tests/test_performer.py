"""Performer (FAVOR+): error against softmax attention falls as features grow, the chunked causal
path equals the naive masked linear-attention form, no causal leakage, key masks, eval
determinism and training redraw, the relu kernel, finite gradients, bad options."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnzoo
from attnzoo.attention import base, dense, performer


@pytest.fixture(autouse=True)
def _strict():
  with jax.numpy_rank_promotion('raise'):
    yield


def _inputs(B=2, T=19, S=None, H=4, G=2, D=8, seed=0, scale=1.0):
  # NumPy draws: nothing to compile.
  S = T if S is None else S
  rng = np.random.default_rng(seed)
  q = scale * rng.standard_normal((B, T, H, D), np.float32)
  k = scale * rng.standard_normal((B, S, G, D), np.float32)
  v = rng.standard_normal((B, S, G, D), np.float32)
  return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


# One compile per configuration instead of one per primitive in eager mode.
_attend = jax.jit(performer.performer_attention,
                  static_argnames=('causal', 'kernel', 'chunk_size', 'eps'))
_matrix = jax.jit(performer.performer_matrix, static_argnames=('causal', 'kernel', 'eps'))


@functools.cache
def _features(m=32, D=8, seed=1):
  return performer.orthogonal_features(jax.random.key(seed), m, D)


def _module(**options):
  return attnzoo.make_attention('performer', rngs=nnx.Rngs(params=0, attention=1), **options)


@functools.partial(nnx.jit, static_argnames=('causal',))
def _call(attn, q, k, v, causal=False, key_mask=None):
  return attn(q, k, v, causal=causal, key_mask=key_mask)


@functools.partial(nnx.jit, static_argnames=('causal',))
def _call_matrix(attn, q, k, v, causal=False, key_mask=None):
  return attn.attention_matrix(q, k, v, causal=causal, key_mask=key_mask)


@functools.partial(jax.jit, static_argnames=('causal', 'kernel'))
def _naive(q, k, v, W, *, causal, key_mask=None, kernel='softmax'):
  """O(T·S) masked linear attention with the same feature maps, written out directly."""
  G = k.shape[2]
  qf = performer.query_features(base.group_heads(q, G), W, kernel=kernel)  # [B, T, G, R, m]
  kf = performer.key_features(k, W, key_mask, kernel=kernel)  # [B, S, G, m]
  T, S = q.shape[1], k.shape[1]
  allowed = np.tril(np.ones((T, S), bool)) if causal else np.ones((T, S), bool)
  a = jnp.einsum('btgrm,bsgm->btgrs', qf, kf) * allowed[None, :, None, None, :]
  num = jnp.einsum('btgrs,bsgd->btgrd', a, v)
  den = a.sum(-1, keepdims=True)
  out = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
  return out.reshape(q.shape[:3] + (v.shape[-1],))


@functools.partial(jax.jit, static_argnames=('causal',))
def _relative_errors(q, k, v, features, *, causal):
  """Relative L2 error of performer vs softmax attention per seed (leading axis of all args)."""
  def one(q, k, v, W):
    out = performer.performer_attention(q, k, v, causal=causal, features=W)
    ref = dense.dot_product_attention(q, k, v, causal=causal)
    return jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)
  return jax.vmap(one)(q, k, v, features)


@functools.cache
def _orf_per_seed(num_seeds=8, m=1024, D=16):
  keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(7), s))(jnp.arange(num_seeds))
  return jax.jit(jax.vmap(lambda key: performer.orthogonal_features(key, m, D)))(keys)


@pytest.mark.parametrize('causal', [False, True])
def test_error_against_softmax_falls_with_num_features(causal):
  # Logits q·k/sqrt(D) with std ~0.25, like trained attention; the FAVOR+ error ~ 1/sqrt(m).
  W = _orf_per_seed()  # [seeds, 1024, D]
  q, k, v = (jnp.stack(x) for x in zip(*[
      _inputs(B=1, T=64, H=2, G=2, D=16, seed=s, scale=0.5) for s in range(W.shape[0])]))
  # The first m rows of an ORF draw (m a multiple of D) are themselves an ORF draw of m.
  errors = [float(_relative_errors(q, k, v, W[:, :m], causal=causal).mean())
            for m in (16, 64, 256, 1024)]
  print(f'performer causal={causal} relative error for m=16,64,256,1024: '
        + ', '.join(f'{e:.4f}' for e in errors))
  for coarse, fine in zip(errors, errors[1:]):
    assert fine < 0.8 * coarse, errors  # 4x the features: expect about half the error
  assert errors[-1] < 0.15, errors


# scale 3: key scales spread widely, so the running max moves and the carried sums rescale.
@pytest.mark.parametrize('T,S,chunk,masked,kernel,scale', [
    (19, 19, 4, True, 'softmax', 1.0), (19, 19, 64, False, 'softmax', 1.0),
    (12, 19, 5, True, 'softmax', 1.0), (19, 12, 5, True, 'softmax', 1.0),
    (37, 37, 3, False, 'softmax', 3.0),
    (12, 19, 5, True, 'relu', 1.0)])
def test_causal_chunked_equals_naive(T, S, chunk, masked, kernel, scale):
  q, k, v = _inputs(T=T, S=S, scale=scale)
  km = None
  if masked:
    km = jnp.asarray(np.random.default_rng(5).random((2, S)) < 0.7).at[1].set(False)
  W = _features()
  out = _attend(q, k, v, causal=True, key_mask=km, features=W, kernel=kernel,
                chunk_size=chunk)
  ref = _naive(q, k, v, W, causal=True, key_mask=km, kernel=kernel)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  A = _matrix(q, k, causal=True, key_mask=km, features=W, kernel=kernel)
  np.testing.assert_allclose(attnzoo.apply_matrix(A, v), ref, rtol=1e-5, atol=1e-6)


def test_module_matrix_reproduces_output():
  # Causal here; bidirectional is covered by the registry-wide contract tests.
  causal = True
  q, k, v = _inputs()
  km = jnp.ones((2, 19), bool).at[0, 3:7].set(False)
  attn = _module(num_features=16)
  attn.eval()
  out = _call(attn, q, k, v, causal=causal, key_mask=km)
  A = _call_matrix(attn, q, k, v, causal=causal, key_mask=km)
  assert A.shape == (2, 4, 19, 19)
  np.testing.assert_allclose(attnzoo.apply_matrix(A, v), out, rtol=1e-5, atol=1e-6)
  assert not np.any(np.triu(np.asarray(A), 1))


def test_gqa_equals_repeated_heads():
  q, k, v = _inputs(H=4, G=2)
  W = _features()
  for causal in (False, True):
    grouped = _attend(q, k, v, causal=causal, features=W, chunk_size=4)
    # Reference only: the same computation with K/V written out per query head.
    rep = _attend(q, jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2), causal=causal,
                  features=W, chunk_size=4)
    np.testing.assert_allclose(grouped, rep, rtol=1e-5, atol=1e-6)


def test_no_causal_leakage():
  q, k, v = _inputs(T=24, scale=2.0)
  attn = _module(num_features=32, chunk_size=8)
  attn.eval()
  t = 10
  out = _call(attn, q, k, v, causal=True)
  noise = jnp.asarray(np.random.default_rng(9).standard_normal(k.shape, np.float32))
  k2 = k.at[:, t + 1:].set(5.0 * noise[:, t + 1:])  # large future keys move the key max
  v2 = v.at[:, t + 1:].set(noise[:, t + 1:])
  out2 = _call(attn, q, k2, v2, causal=True)
  np.testing.assert_allclose(out2[:, :t + 1], out[:, :t + 1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out2[:, t + 1:], out[:, t + 1:])
  # And no gradient reaches a future key or value.
  W = _features()
  f = lambda k, v: performer.performer_attention(q, k, v, causal=True, features=W,
                                                 chunk_size=8)[:, :t + 1].sum()
  dk, dv = jax.jit(jax.grad(f, argnums=(0, 1)))(k, v)
  assert np.all(np.asarray(dk[:, t + 1:]) == 0) and np.all(np.asarray(dv[:, t + 1:]) == 0)
  assert np.any(np.asarray(dk[:, :t + 1]) != 0)


def test_causal_stabilization_never_looks_ahead():
  # Early keys with huge norms (log scales down to ~ -110), later ones small (up to ~ +5):
  # measured against one global max, key 1 would underflow and change row 1 (and give NaN
  # gradients). Against the running max, the first 12 rows equal a run on the first 12
  # positions alone.
  q, k, v = _inputs(T=24)
  k = k.at[:, :12].multiply(8.0)
  W = _features()
  f = lambda q, k, v: _attend(q, k, v, causal=True, features=W, chunk_size=8)
  np.testing.assert_allclose(f(q, k, v)[:, :12], f(q[:, :12], k[:, :12], v[:, :12]),
                             rtol=1e-5, atol=1e-6)
  grads = jax.jit(jax.grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2)))(q, k, v)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize('causal', [False, True])
def test_masked_keys_contribute_nothing(causal):
  q, k, v = _inputs()
  W = _features()
  km = jnp.ones((2, 19), bool).at[:, 12:].set(False).at[0, 4].set(False)
  out = _attend(q, k, v, causal=causal, key_mask=km, features=W, chunk_size=4)
  noise = 5.0 * jnp.asarray(np.random.default_rng(3).standard_normal(k.shape, np.float32))
  k2, v2 = jnp.where(km[:, :, None, None], k, noise), jnp.where(km[:, :, None, None], v, noise)
  out2 = _attend(q, k2, v2, causal=causal, key_mask=km, features=W, chunk_size=4)
  np.testing.assert_allclose(out2, out, rtol=1e-5, atol=1e-6)
  if not causal:  # masking a suffix equals dropping those keys
    cut = _attend(q, k[:, :12], v[:, :12], key_mask=km[:, :12], features=W)
    np.testing.assert_allclose(out, cut, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('causal,kernel', [(False, 'softmax'), (True, 'softmax'), (True, 'relu')])
def test_fully_masked_rows_zero_with_finite_gradients(causal, kernel):
  q, k, v = _inputs()
  # Batch 1 has no key at all; in batch 0 the first 5 keys are masked, so causally the first
  # 5 query rows have no allowed key.
  km = jnp.ones((2, 19), bool).at[0, :5].set(False).at[1].set(False)
  W = _features()
  f = lambda q, k, v: performer.performer_attention(q, k, v, causal=causal, key_mask=km,
                                                    features=W, kernel=kernel, chunk_size=4)
  loss = lambda *a: ((f(*a) ** 2).sum(), f(*a))
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  assert np.all(np.asarray(out[1]) == 0)
  if causal:
    assert np.all(np.asarray(out[0, :5]) == 0)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))
  assert np.all(np.asarray(grads[0][1]) == 0)


@pytest.mark.parametrize('causal', [False, True])
def test_finite_outputs_and_gradients_with_large_logits(causal):
  # |q|, |k| ~ 14 with widely varying norms: exp(W x) alone would overflow float32 and the
  # key log scales span ~65; the max shifts keep everything finite.
  q, k, v = _inputs(scale=5.0)
  W = _features()
  f = lambda q, k, v: _attend(q, k, v, causal=causal, features=W, chunk_size=8)
  loss = lambda *a: (f(*a).sum(), f(*a))
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  assert np.all(np.isfinite(np.asarray(out)))
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))
    assert np.any(np.asarray(g) != 0)


def test_relu_kernel_runs_causal_cross():
  q, k, v = _inputs(T=7, S=13)  # causal with T != S: top-left aligned
  out = _call(_module(kernel='relu', num_features=16), q, k, v, causal=True)
  assert out.shape == q.shape and np.all(np.isfinite(np.asarray(out)))


def test_eval_is_deterministic_and_training_redraws():
  q, k, v = _inputs()
  attn = _module(num_features=16)  # redraw=True
  train1, train2 = _call(attn, q, k, v), _call(attn, q, k, v)
  assert not np.allclose(train1, train2)  # new features every training call
  attn.eval()
  eval1, eval2 = _call(attn, q, k, v), _call(attn, q, k, v)
  np.testing.assert_array_equal(eval1, eval2)
  # Fixed features are the ones drawn at construction: the same as a redraw=False module
  # built from the same seeds, in training or in eval.
  fixed = _module(num_features=16, redraw=False)
  np.testing.assert_array_equal(_call(fixed, q, k, v), eval1)
  np.testing.assert_array_equal(_call(fixed, q, k, v), eval1)
  attn.train()
  assert not np.allclose(_call(attn, q, k, v), eval1)


def test_fixed_features_are_not_params():
  attn = _module()
  assert not jax.tree.leaves(nnx.state(attn, nnx.Param))
  assert jax.tree.leaves(nnx.state(attn, performer.FeatureSeed))


def test_orthogonal_features():
  W = _features()  # m=32, D=8: four blocks of 8 rows
  assert W.shape == (32, 8)
  for block in jnp.split(W, 4):
    unit = block / jnp.linalg.norm(block, axis=-1, keepdims=True)
    np.testing.assert_allclose(unit @ unit.T, jnp.eye(len(block)), atol=1e-5)


def test_capabilities():
  caps = attnzoo.capabilities('performer')
  assert (caps.causal, caps.cross, caps.key_mask, caps.exact, caps.cost) == (
      True, True, True, False, 'N*m')


@pytest.mark.parametrize('options', [
    dict(num_features=0), dict(num_features=-4), dict(num_features=2.5),
    dict(kernel='exp'), dict(redraw=1), dict(redraw='yes'), dict(chunk_size=0),
    dict(eps=-1.0)])
def test_bad_options(options):
  field = next(iter(options))
  with pytest.raises(ValueError, match=f'performer.{field}'):
    _module(**options)
