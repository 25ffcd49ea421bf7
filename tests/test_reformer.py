"""Reformer LSH attention: reductions to dense attention, the chunk semantics against a dense
reference, real causality, rng handling, masks, gradients, options, memory."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnzoo
from attnzoo.attention import base, dense, reformer

# Shared shapes, so the jitted functions compile once per (causal, heads) and are reused.
T, CHUNK, N, NB, D = 21, 4, 3, 4, 8  # several chunks, T not a multiple of CHUNK (padded slots)


def _inputs(B=2, T=16, H=4, D=8, Gk=4, Gv=2, seed=0):
  rng = np.random.default_rng(seed)  # numpy: no per-shape compiles of jax.random in eager mode
  return tuple(jnp.asarray(rng.standard_normal((B, T, g, D)), jnp.float32) for g in (H, Gk, Gv))


def _key_mask(B, T):
  km = np.ones((B, T), bool)
  km[0, 3:6] = False
  if B > 1:
    km[1, :] = False  # a fully masked batch row: every query row has no key
  return jnp.asarray(km)


def _rotations(N, D, nb, seed=1):
  return reformer.random_rotations(jax.random.key(seed), N, D, nb)


def _visible(buckets, chunk, causal):
  """The keys each query may see in one round (before key mask and self rule), from buckets
  [L]: bool [L, L]. Written out from the documented semantics, independently of the layout."""
  L = len(buckets)
  c = min(chunk, L)
  i, j = np.arange(L)[:, None], np.arange(L)[None, :]
  if causal:  # chunks restart at every bucket; own bucket, own or previous chunk, j <= i
    rank = np.array([(buckets[:p] == buckets[p]).sum() for p in range(L)])
    ci = rank // c
    return (buckets[:, None] == buckets[None, :]) & (j <= i) & (ci[None, :] >= ci[:, None] - 1)
  sorted_pos = np.empty(L, int)
  sorted_pos[np.lexsort((np.arange(L), buckets))] = np.arange(L)
  ci, n = sorted_pos // c, -(-L // c)
  same = ci[:, None] == ci[None, :]
  return same | ((ci[None, :] == (ci[:, None] - 1) % n) if n > 1 else False)


@functools.partial(jax.jit, static_argnames=('causal',))
def _reference_matrix(q, k, *, visible, causal, key_mask):
  """Dense shared-QK attention with the self rule, per round restricted to visible [B,Gk,N,T,T],
  rounds combined by logsumexp. Returns A [B, H, T, T]."""
  B, T, H, _ = q.shape
  kn = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  s = dense.scores(q, kn)  # [B, Gk, R, T, S]
  allowed = base.mask_bias(T, T, causal=causal, key_mask=key_mask)
  allowed = jnp.ones((1, 1, 1, T, T), bool) if allowed is None else allowed
  eye = jnp.eye(T, dtype=bool)[None, None, None]
  probs, lses = [], []
  for n in range(visible.shape[2]):
    ok = allowed & visible[:, :, n][:, :, None]
    others = ok & ~eye
    has_other = others.any(-1, keepdims=True)
    probs.append(base.masked_softmax(s, jnp.where(has_other, others, ok & eye)))
    lse = jax.nn.logsumexp(jnp.where(others, s, base.NEG_INF), axis=-1)
    lses.append(jnp.where(has_other[..., 0], lse, base.NEG_INF))
  w = jax.nn.softmax(jnp.stack(lses), axis=0)[..., None]
  A = (w * jnp.stack(probs)).sum(0)  # [B, Gk, R, T, S]
  return A.reshape(B, H, T, T)


def _dense_shared_qk(q, k, *, causal, key_mask):
  B, T = q.shape[:2]
  everything = jnp.ones((B, k.shape[2], 1, T, T), bool)
  return _reference_matrix(q, k, visible=everything, causal=causal, key_mask=key_mask)


def _multi_chunk_reference(q, k, rot, *, causal, key_mask, chunk=CHUNK):
  buckets = np.asarray(reformer.hash_buckets(k, rot))  # [B, Gk, N, T]
  B, Gk, rounds, _ = buckets.shape
  vis = np.stack([np.stack([np.stack([_visible(buckets[b, g, n], chunk, causal)
                                      for n in range(rounds)]) for g in range(Gk)])
                  for b in range(B)])
  return _reference_matrix(q, k, visible=jnp.asarray(vis), causal=causal,
                           key_mask=key_mask), vis


# ---- reductions to dense attention -------------------------------------------------------------

@pytest.mark.parametrize('causal,heads', [(False, (1, 2)), (True, (2, 2))])  # (Gk, Gv), H = 4
def test_one_chunk_equals_dense_shared_qk(causal, heads):
  """chunk_size >= T: one chunk holds the whole sorted sequence, so any rotations give dense
  shared-QK attention with the self rule. Causal chunks restart at each bucket, so there all
  keys are put in one bucket (zero rotations)."""
  q, k, v = _inputs(T=T, Gk=heads[0], Gv=heads[1])
  km = _key_mask(2, T)
  rot = _rotations(N, D, NB) * (0.0 if causal else 1.0)
  ref = _dense_shared_qk(q, k, causal=causal, key_mask=km)
  out = reformer.reformer_attention(q, k, v, rotations=rot, causal=causal, key_mask=km,
                                    chunk_size=32)
  np.testing.assert_allclose(out, base.apply_matrix(ref, v), atol=1e-5)
  A = reformer.reformer_matrix(q, k, rotations=rot, causal=causal, key_mask=km, chunk_size=32)
  np.testing.assert_allclose(A, ref, atol=1e-5)
  diag = jnp.diagonal(A[0], axis1=-2, axis2=-1)  # self only when nothing else: causal row 0
  assert float(jnp.abs(diag[:, 1:]).max()) == 0.0
  assert bool((diag[:, 0] == 1.0).all()) == causal


# ---- several chunks and rounds -----------------------------------------------------------------

@pytest.mark.parametrize('causal', [False, True])
def test_chunks_and_rounds_match_reference(causal):
  """Chunk windows, self rule, key mask, causal mask and the logsumexp combination of rounds,
  against a dense reference that applies the documented visibility per round. Non-causal runs
  as MultiHeadAttention calls it (k = q with H heads, v with G < H heads), causal with GQA k."""
  q, k, v = _inputs(T=T, Gk=2, Gv=2, seed=3)
  k = k if causal else q
  km = _key_mask(2, T)
  rot = _rotations(N, D, NB)
  ref, vis = _multi_chunk_reference(q, k, rot, causal=causal, key_mask=km)
  assert not vis.all()  # several chunks: the window really restricts
  A = reformer.reformer_matrix(q, k, rotations=rot, causal=causal, key_mask=km,
                               chunk_size=CHUNK)
  np.testing.assert_allclose(A, ref, atol=1e-5)
  out = reformer.reformer_attention(q, k, v, rotations=rot, causal=causal, key_mask=km,
                                    chunk_size=CHUNK)
  np.testing.assert_allclose(out, base.apply_matrix(A, v), atol=1e-5)
  # Keys met in several rounds (duplicates) still leave each row a convex combination.
  assert (vis & ~np.eye(T, dtype=bool)).sum(2).max() >= 2
  assert float(A.min()) >= 0.0
  np.testing.assert_allclose(A[0].sum(-1), 1.0, atol=1e-5)  # every row of batch 0 has a key
  np.testing.assert_array_equal(A[1], 0.0)  # batch 1 is fully masked
  np.testing.assert_array_equal(A[0][..., 3:6], 0.0)  # masked keys are never attended


# ---- causality -----------------------------------------------------------------------------------

def test_causal_no_leak_from_future():
  """Changing q/k/v after t leaves outputs <= t unchanged, although the future positions change
  buckets and so the global sorted order (several chunks and rounds)."""
  t = 9
  q, k, v = _inputs(T=T, Gk=2, Gv=2, seed=11)
  q2, k2, v2 = _inputs(T=T, Gk=2, Gv=2, seed=12)
  future = (jnp.arange(T) > t)[None, :, None, None]
  qp, kp, vp = (jnp.where(future, b, a) for a, b in ((q, q2), (k, k2), (v, v2)))
  km = _key_mask(2, T)
  rot = _rotations(N, D, NB, seed=5)
  b1, b2 = reformer.hash_buckets(k, rot), reformer.hash_buckets(kp, rot)
  assert bool((b1[..., t + 1:] != b2[..., t + 1:]).any())  # the perturbation moves buckets
  run = functools.partial(reformer.reformer_attention, rotations=rot, causal=True, key_mask=km,
                          chunk_size=CHUNK)
  out, out_p = run(q, k, v), run(qp, kp, vp)
  np.testing.assert_allclose(out[:, :t + 1], out_p[:, :t + 1], atol=1e-6)
  assert not np.allclose(out[0, t + 1:], out_p[0, t + 1:])
  A = reformer.reformer_matrix(q, k, rotations=rot, causal=True, key_mask=km, chunk_size=CHUNK)
  assert float(jnp.abs(jnp.triu(A, 1)).max()) == 0.0


# ---- rng handling -----------------------------------------------------------------------------

def test_eval_deterministic_train_redraws():
  q, _, v = _inputs(T=T, Gk=2, Gv=2, seed=3)
  km = _key_mask(2, T)
  opts = dict(num_hashes=N, num_buckets=NB, chunk_size=CHUNK)
  m = attnzoo.make_attention('reformer', rngs=nnx.Rngs(params=3, attention=4), **opts)
  assert not np.allclose(m(q, q, v, key_mask=km), m(q, q, v, key_mask=km))  # training: redraws
  step = nnx.jit(lambda m, q, v: m(q, q, v, key_mask=km))  # the rng state advances under jit
  assert not np.allclose(step(m, q, v), step(m, q, v))
  m.eval()
  a = m(q, q, v, key_mask=km)
  np.testing.assert_array_equal(a, m(q, q, v, key_mask=km))
  other = attnzoo.make_attention('reformer', rngs=nnx.Rngs(params=3, attention=4), **opts)
  other.eval()
  np.testing.assert_array_equal(a, other(q, q, v, key_mask=km))  # same seed, same rotations
  A = m.attention_matrix(q, q, v, key_mask=km)
  np.testing.assert_allclose(base.apply_matrix(A, v), a, atol=1e-5)
  # the fixed key is state but not a trainable parameter
  assert not jax.tree.leaves(nnx.state(m, nnx.Param))
  assert jax.tree.leaves(nnx.state(m, reformer.RotationKey))


# ---- masks and gradients ------------------------------------------------------------------------

def test_masked_rows_zero_and_gradients_finite():
  q, k, v = _inputs(T=T, Gk=2, Gv=2)
  km = _key_mask(2, T)
  rot = _rotations(N, D, NB)

  def loss(q, k, v):
    out = reformer.reformer_attention(q, k, v, rotations=rot, causal=True, key_mask=km,
                                      chunk_size=CHUNK)
    return jnp.sum(out ** 2), out

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
  (_, out), grads = grad(q, k, v)
  np.testing.assert_array_equal(out[1], 0.0)
  assert bool(jnp.isfinite(out).all())
  for g in grads:
    assert bool(jnp.isfinite(g).all())
  np.testing.assert_array_equal(grads[2][1], 0.0)  # masked values get no gradient
  np.testing.assert_array_equal(grads[2][0, 3:6], 0.0)


def test_forward_never_builds_a_T_by_T_array():
  """Neither the forward nor the backward has an intermediate as large as [B, H, L, L] / 2."""
  B, L, H, Dh, chunk = 1, 128, 2, 4, 8
  q, k, v = _inputs(B=B, T=L, H=H, D=Dh, Gk=H, Gv=1)
  rot = _rotations(2, Dh, 4)

  def sizes(jaxpr):
    for eqn in jaxpr.eqns:
      yield from (int(np.prod(x.aval.shape)) for x in eqn.outvars)
      for p in eqn.params.values():
        for sub in (p if isinstance(p, (tuple, list)) else (p,)):
          sub = getattr(sub, 'jaxpr', sub)
          if hasattr(sub, 'eqns'):
            yield from sizes(sub)

  for causal in (False, True):
    def loss(q, k, v):
      return reformer.reformer_attention(q, k, v, rotations=rot, causal=causal,
                                         chunk_size=chunk).sum()
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v).jaxpr
    assert max(sizes(jaxpr)) < B * H * L * L // 2


# ---- options -------------------------------------------------------------------------------------

def test_defaults_and_capabilities():
  assert base.default_options('reformer') == dict(num_hashes=2, num_buckets=8, chunk_size=32)
  caps = attnzoo.capabilities('reformer')
  assert caps.shared_qk and caps.causal and caps.key_mask and not caps.cross and not caps.exact


@pytest.mark.parametrize('field,value', [
    ('num_hashes', 0), ('num_hashes', -1), ('num_hashes', 1.5), ('num_buckets', 3),
    ('num_buckets', 0), ('num_buckets', 1), ('num_buckets', True), ('chunk_size', 0),
    ('chunk_size', -4)])
def test_bad_options(field, value):
  with pytest.raises(ValueError, match=f'reformer.{field}'):
    attnzoo.make_attention('reformer', rngs=nnx.Rngs(0), **{field: value})


def test_options_are_frozen_and_cross_is_refused():
  m = attnzoo.make_attention('reformer', rngs=nnx.Rngs(0))
  with pytest.raises(dataclasses.FrozenInstanceError):
    m.options.chunk_size = 3
  q, k, v = _inputs(T=T)
  with pytest.raises(ValueError, match='cross'):
    m(q, k[:, :6], v[:, :6])
