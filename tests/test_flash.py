"""Tests of the Pallas flash-attention kernel and the `flash` variant.

As in JAX's own Pallas tests, the checks live in a class with `INTERPRET = False` (compiled
kernels; skipped on CPU, where Pallas only interprets) and a subclass with `INTERPRET = True`
that runs them on CPU. Reference: `jax.nn.dot_product_attention` in float32, with rows that see
no key set to zero (the contract; the reference would average them uniformly).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnzoo
from attnzoo.attention import base
from kernels import flash_attention as fa

# Relative error ||out - ref|| / ||ref||, keyed by input dtype (reference always float32).
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2, jnp.float16: 1e-2}


def _rel(x, ref):
  x, ref = np.asarray(x, np.float32), np.asarray(ref, np.float32)
  return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def _inputs(seed, B, T, S, H, G, D, dtype, masked):
  kq, kk, kv, km, kc = jax.random.split(jax.random.key(seed), 5)
  q = jax.random.normal(kq, (B, T, H, D), jnp.float32)
  k = jax.random.normal(kk, (B, S, G, D), jnp.float32)
  v = jax.random.normal(kv, (B, S, G, D), jnp.float32)
  ct = jax.random.normal(kc, (B, T, H, D), jnp.float32)  # cotangent for the VJP
  key_mask = jax.random.bernoulli(km, 0.75, (B, S)) if masked else None
  return [x.astype(dtype) for x in (q, k, v)], ct, key_mask


def _reference(q, k, v, *, causal, key_mask, window):
  """Float32 softmax attention; rows with no visible key are zeros."""
  T, S = q.shape[1], k.shape[1]
  q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  mask = None if key_mask is None else key_mask[:, None, None, :]
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                     local_window_size=window or None)
  allowed = base.mask_bias(T, S, causal=causal, key_mask=key_mask, window=window or None)
  if allowed is None:
    return out
  seen = jnp.broadcast_to(allowed, (q.shape[0], 1, 1, T, S)).any(-1)  # [B, 1, 1, T]
  return out * jnp.moveaxis(seen[:, 0], 1, 2)[..., None].astype(out.dtype)


@functools.partial(jax.jit, static_argnames=('fn', 'causal', 'window', 'opts'))
def _out_and_grads(q, k, v, ct, key_mask, *, fn, causal, window, opts=()):
  """Output and (dq, dk, dv) = VJP of the cotangent `ct`, all in one compiled program."""
  f = lambda q, k, v: fn(q, k, v, causal=causal, key_mask=key_mask, window=window,
                         **dict(opts))
  out, vjp = jax.vjp(f, q, k, v)
  return out, vjp(ct.astype(out.dtype))


# (B, T, S, H, G, D, causal, window, masked, dtype, block_q, block_k): T and S never multiples of
# the block, G in {H, 2, 1}, T != S, D not a power of two.
CASES = [
    (2, 37, 37, 2, 2, 16, False, 0, True, jnp.float32, 16, 16),
    (1, 45, 70, 4, 2, 24, True, 0, True, jnp.float32, 16, 32),
    (1, 79, 77, 2, 1, 16, True, 9, False, jnp.float32, 16, 16),
    (2, 33, 50, 4, 1, 24, False, 5, True, jnp.float32, 32, 16),
    (1, 70, 23, 2, 2, 16, True, 4, True, jnp.float32, 16, 16),  # T > S: rows past S+4 see nothing
    (1, 50, 45, 4, 2, 16, True, 0, True, jnp.bfloat16, 32, 32),
    (1, 29, 29, 2, 1, 24, False, 6, False, jnp.float16, 16, 16),
]


class TestFlash:
  INTERPRET = False

  @pytest.fixture(autouse=True)
  def _backend(self):
    if not self.INTERPRET and jax.default_backend() == 'cpu':
      pytest.skip('compiled Pallas kernels need a GPU or TPU; CPU runs the interpret subclass')

  def _opts(self, **kw):
    return tuple(sorted({'interpret': self.INTERPRET, **kw}.items()))

  def _tol(self, dtype):
    # Compiled f32 dots may use TF32 / bf16 passes on device; interpret mode is exact f32.
    return TOL[dtype] if self.INTERPRET or dtype != jnp.float32 else 5e-3

  @pytest.mark.parametrize('case', CASES, ids=lambda c: 'B{}T{}S{}H{}G{}D{}c{}w{}m{}{}'.format(
      *c[:9], jnp.dtype(c[9]).name))
  def test_matches_dot_product_attention(self, case):
    B, T, S, H, G, D, causal, window, masked, dtype, bq, bk = case
    (q, k, v), ct, key_mask = _inputs(hash(case[:9]) % 1000, B, T, S, H, G, D, dtype, masked)
    out, grads = _out_and_grads(q, k, v, ct, key_mask, fn=fa.flash_attention, causal=causal,
                                window=window, opts=self._opts(block_q=bq, block_k=bk))
    ref, ref_grads = _out_and_grads(q, k, v, ct, key_mask, fn=_reference, causal=causal,
                                    window=window)
    assert out.shape == q.shape and out.dtype == q.dtype
    tol = self._tol(dtype)
    for name, x, r in zip(('out', 'dq', 'dk', 'dv'), (out, *grads), (ref, *ref_grads)):
      assert x.dtype == dtype, name
      assert _rel(x, r) <= tol, (name, _rel(x, r))

  def test_every_output_element_written(self):
    """Each kernel output starts as a NaN-filled aliased buffer; all must come back finite."""
    (q, k, v), ct, key_mask = _inputs(7, 1, 37, 21, 2, 1, 16, jnp.float32, True)
    run = functools.partial(_out_and_grads, q, k, v, ct, key_mask, causal=True, window=3)
    opts = self._opts(block_q=16, block_k=16, poison_outputs=True)
    out, grads = run(fn=fa.flash_attention, opts=opts)
    for x in (out, *grads):
      assert np.isfinite(np.asarray(x)).all()
    ref, ref_grads = run(fn=_reference, opts=())
    for x, r in zip((out, *grads), (ref, *ref_grads)):
      assert _rel(x, r) <= self._tol(jnp.float32)
    # The poison is really wired in: each of the three pallas_calls aliases its outputs.
    jaxpr = str(jax.make_jaxpr(functools.partial(
        _out_and_grads, fn=fa.flash_attention, causal=True, window=3, opts=opts))(
            q, k, v, ct, key_mask))
    assert jaxpr.count('input_output_aliases=((4, 0), (5, 1))') == 1  # forward: o, lse
    assert jaxpr.count('input_output_aliases=((7, 0),)') == 1  # dq
    assert jaxpr.count('input_output_aliases=((7, 0), (8, 1))') == 1  # dk, dv

  def test_fully_masked_rows_are_zero(self):
    (q, k, v), ct, key_mask = _inputs(3, 2, 37, 37, 2, 2, 16, jnp.float32, True)
    key_mask = key_mask.at[0].set(False)  # batch 0: no key at all
    out, (dq, dk, dv) = _out_and_grads(q, k, v, ct, key_mask, fn=fa.flash_attention,
                                       causal=False, window=0,
                                       opts=self._opts(block_q=16, block_k=16))
    for x in (out, dq, dk, dv):
      assert np.isfinite(np.asarray(x)).all()
    for x in (out[0], dq[0], dk[0], dv[0]):
      np.testing.assert_array_equal(x, 0.0)
    assert np.abs(np.asarray(out[1])).max() > 0
    # Masked keys get no gradient.
    np.testing.assert_array_equal(dk[1][~key_mask[1]], 0.0)
    np.testing.assert_array_equal(dv[1][~key_mask[1]], 0.0)

  def test_variant_matches_its_matrix(self):
    (q, k, v), _, key_mask = _inputs(5, 1, 40, 40, 4, 2, 16, jnp.float32, True)
    interpret = 'true' if self.INTERPRET else 'false'
    module = attnzoo.make_attention('flash', rngs=nnx.Rngs(0), block_q=16, block_k=16,
                                    window=6, interpret=interpret)
    out = module(q, k, v, causal=True, key_mask=key_mask)
    A = module.attention_matrix(q, k, v, causal=True, key_mask=key_mask)
    assert A.shape == (1, 4, 40, 40)
    direct = fa.flash_attention(q, k, v, causal=True, key_mask=key_mask, window=6, block_q=16,
                                block_k=16, interpret=self.INTERPRET)
    np.testing.assert_array_equal(out, direct)
    assert _rel(attnzoo.apply_matrix(A, v), out) <= self._tol(jnp.float32)


class TestFlashInterpret(TestFlash):
  INTERPRET = True


@pytest.mark.parametrize('bq,bk,T,S', [(16, 16, 80, 80), (16, 32, 45, 96), (32, 16, 96, 40)])
@pytest.mark.parametrize('causal,window', [(False, 0), (True, 0), (True, 5), (False, 7),
                                           (True, 40)])
def test_block_ranges_are_the_band(bq, bk, T, S, causal, window):
  """Loop bounds = exactly the key (query) blocks holding an allowed pair; the rest are skipped."""
  nq, nk = -(-T // bq), -(-S // bk)
  qi, kj = np.arange(nq * bq)[:, None], np.arange(nk * bk)[None, :]
  band = np.ones((nq * bq, nk * bk), bool)
  if causal:
    band &= kj <= qi
  if window:
    band &= np.abs(qi - kj) <= window
  blocks = band.reshape(nq, bq, nk, bk).any(axis=(1, 3))  # [nq, nk]: block pair has work
  kw = dict(block_q=bq, block_k=bk, causal=causal, window=window)

  def expect(row):
    idx = np.flatnonzero(row)
    return (idx[0], idx[-1] + 1) if idx.size else None

  for i in range(nq):
    lo, hi = (int(x) for x in fa.key_block_range(i, num_k_blocks=nk, **kw))
    want = expect(blocks[i])
    assert (lo, hi) == want if want else lo == hi, (i, lo, hi, want)
    # The band is contiguous, so [lo, hi) holds no block without work.
    assert blocks[i, lo:hi].all()
  for j in range(nk):
    lo, hi = (int(x) for x in fa.query_block_range(j, num_q_blocks=nq, **kw))
    want = expect(blocks[:, j])
    assert (lo, hi) == want if want else lo == hi, (j, lo, hi, want)
  if causal or window:
    assert blocks.sum() < nq * nk  # something is skipped


def test_options_are_validated():
  for bad in ({'block_q': 24}, {'block_k': 8}, {'window': -1}, {'interpret': 'yes'},
              {'backend': 'cuda'}):
    with pytest.raises(ValueError, match='flash'):
      attnzoo.make_attention('flash', rngs=nnx.Rngs(0), **bad)
  assert attnzoo.capabilities('flash').exact
