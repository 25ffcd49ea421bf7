"""Reformer LSH attention with shared query/key (Kitaev, Kaiser & Levskaya 2020).

Keys are the length-normalized queries (`shared_qk`: MultiHeadAttention skips the K projection
and passes k = q; a caller may also pass its own k, which is then hashed and normalized the same
way). Each of `num_hashes` rounds hashes the keys by angular LSH (random rotation R, bucket =
argmax([xR; -xR]), Andoni et al. 2015), sorts positions by (bucket, position), cuts the sorted
sequence into chunks of `chunk_size`, and lets each chunk attend to itself and the previous chunk.
A position does not attend to itself unless nothing else is available to it in any round. The
rounds are combined by their logsumexp: out = sum_r exp(lse_r - logsumexp_r lse_r) * out_r, so a
key seen in several rounds counts once per round, as in the paper, and each row stays a convex
combination.

Causal mode is really causal. With the paper's global chunking the chunk boundaries depend on the
buckets of later positions (a later key landing in a lower bucket shifts every chunk), so a
position mask alone leaks the future. Causally, each bucket therefore starts a new chunk (buckets
are padded to whole chunks: at most T + num_buckets·(chunk_size - 1) slots) and a query sees only
earlier keys of its own bucket in its own and the previous chunk: that set depends on the hashes
of positions <= t only. Non-causal mode uses
the paper's global chunking (no bucket mask; the first chunk looks back to the last), so with
chunk_size >= T it is exactly dense shared-QK attention.

Query head h uses key head h // (H // Gk) and value head h // (H // G); nothing is repeated.
Cost: O(T log T) time for the sort plus O(T·chunk·D) for the chunks, O(T·chunk) memory per head
and round; the [T, S] matrix is only built by `attention_matrix` (for analysis at small T).
Rotations are redrawn per call in training (from the call's `rng` key if given, so the module is
a pure function under jax.jit / grad / vmap, else from the module's 'attention' RNG stream) and
drawn from a key fixed at construction in eval.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attnzoo.attention import base


def random_rotations(key, num_hashes: int, head_dim: int, num_buckets: int):
  """Gaussian projections [num_hashes, head_dim, num_buckets // 2] for angular LSH."""
  return jax.random.normal(key, (num_hashes, head_dim, num_buckets // 2), jnp.float32)


def hash_buckets(k, rotations):
  """k [B, S, G, D], rotations [N, D, nb/2] -> buckets int32 [B, G, N, S] in [0, nb).

  Only the direction of k matters (argmax is scale-free), so k needs no normalization here.
  """
  x = jax.lax.stop_gradient(k).astype(jnp.float32)
  rot = jnp.einsum('bsgd,ndc->bgnsc', x, rotations)
  return jnp.argmax(jnp.concatenate([rot, -rot], axis=-1), axis=-1).astype(jnp.int32)


def num_chunks(T: int, num_buckets: int, chunk: int, *, causal: bool) -> int:
  """Chunks of the sorted layout: ceil(T / chunk), or causally room for every bucket to be
  padded to whole chunks, floor((T + min(nb, T) * (chunk - 1)) / chunk)."""
  if causal:
    return (T + min(num_buckets, T) * (chunk - 1)) // chunk
  return -(-T // chunk)


def _layout(buckets, num_buckets: int, chunk: int, causal: bool):
  """Sorted layout of each row. buckets [M, T] -> (table [M, L]: the position in each slot, T for
  an empty slot; slot [M, T]: the slot of each position), with L = num_chunks * chunk."""
  M, T = buckets.shape
  pos = jnp.arange(T, dtype=jnp.int32)[None, :]  # [1, T]
  order = jnp.argsort(buckets * T + pos, axis=-1).astype(jnp.int32)  # by bucket, then position
  rows = jnp.arange(M)[:, None]  # [M, 1]
  if causal:
    # Each bucket starts at a chunk boundary: slot = (padded start of bucket) + rank in bucket.
    sorted_b = jnp.take_along_axis(buckets, order, axis=-1)  # [M, T]
    counts = jnp.zeros((M, num_buckets), jnp.int32).at[rows, buckets].add(1)  # [M, nb]
    start = jnp.cumsum(counts, axis=-1) - counts
    padded = -(-counts // chunk) * chunk
    offset = jnp.cumsum(padded, axis=-1) - padded
    rank = pos - jnp.take_along_axis(start, sorted_b, axis=-1)
    sorted_slot = jnp.take_along_axis(offset, sorted_b, axis=-1) + rank  # [M, T]
  else:
    sorted_slot = jnp.broadcast_to(pos, (M, T))
  L = num_chunks(T, num_buckets, chunk, causal=causal) * chunk
  table = jnp.full((M, L), T, jnp.int32).at[rows, sorted_slot].set(order)
  slot = jnp.zeros((M, T), jnp.int32).at[rows, order].set(sorted_slot)
  return table, slot


def _pad_row(x):
  """[B, T, ...] -> [B, T + 1, ...] with a zero (False) row T that empty slots point at."""
  return jnp.concatenate([x, jnp.zeros_like(x[:, :1])], axis=1)


def _window(x, n: int):
  """Chunked [B, G, N, n, c, ...] -> keys of own and previous chunk [B, G, N, n, W, ...]."""
  if n == 1:
    return x  # a single chunk: its "previous chunk" would be itself again
  return jnp.concatenate([x, jnp.roll(x, 1, axis=3)], axis=4)


def _lsh_rounds(q, k, rotations, *, causal: bool, key_mask, chunk_size: int):
  """Per-round chunk softmax weights and the round-combination weights.

  Returns p [B, G, N, n, R, c, W] (each round's weights of the window keys, float32),
  w [B, G, N, T, R] (weight of each round at each query position), table [B, G, N, L],
  slot [B, G, N, T] and the window key positions kpos [B, G, N, n, W].
  """
  B, T, H, D = q.shape
  G = k.shape[2]
  N, nb = rotations.shape[0], 2 * rotations.shape[2]
  c = min(chunk_size, T)
  buckets = hash_buckets(k, rotations)  # [B, G, N, T]
  table, slot = _layout(buckets.reshape(B * G * N, T), nb, c, causal)
  L = table.shape[-1]
  n = L // c
  table, slot = table.reshape(B, G, N, L), slot.reshape(B, G, N, T)

  bi = jnp.arange(B)[:, None, None, None]
  gi = jnp.arange(G)[None, :, None, None]
  kf = k.astype(jnp.float32)
  kn = kf * jax.lax.rsqrt(jnp.maximum(jnp.sum(kf * kf, axis=-1, keepdims=True), 1e-12))
  qs = _pad_row(base.group_heads(q, G).astype(jnp.float32))[bi, table, gi]  # [B,G,N,L,R,D]
  ks = _pad_row(kn)[bi, table, gi]  # [B, G, N, L, D]
  valid = jnp.ones((B, T), bool) if key_mask is None else key_mask
  kvalid = _pad_row(valid)[bi, table]  # [B, G, N, L]
  bpad = jnp.concatenate([buckets, jnp.full((B, G, N, 1), -1, jnp.int32)], axis=-1)
  kbucket = jnp.take_along_axis(bpad, table, axis=-1)  # [B, G, N, L]

  chunked = lambda x: x.reshape(B, G, N, n, c, *x.shape[4:])
  qc, qpos, qb = chunked(qs), chunked(table), chunked(kbucket)  # qpos, qb [B, G, N, n, c]
  kw, kpos, kvw, kbw = (_window(chunked(x), n) for x in (ks, table, kvalid, kbucket))
  s = jnp.einsum('bgnjcrd,bgnjwd->bgnjrcw', qc, kw) / math.sqrt(D)  # [B,G,N,n,R,c,W]

  qp, kp = qpos[..., None, :, None], kpos[..., None, None, :]  # [B,G,N,n,1,c,1], [..,1,1,W]
  allowed = kvw[..., None, None, :]
  if causal:
    allowed = allowed & (kp <= qp) & (kbw[..., None, None, :] == qb[..., None, :, None])
  others = allowed & (kp != qp)
  has_other = others.any(-1, keepdims=True)  # [B, G, N, n, 1, c, 1]
  mask = jnp.where(has_other, others, allowed & (kp == qp))  # self only if nothing else
  has = mask.any(-1)  # [B, G, N, n, 1, c]
  sm = jnp.where(mask, s, base.NEG_INF)
  m = jnp.where(has, sm.max(-1), 0.0)
  e = jnp.where(mask, jnp.exp(sm - m[..., None]), 0.0)
  l = jnp.where(has, e.sum(-1), 1.0)
  p = e / l[..., None]
  # A round whose only key is the query itself gets weight 0 next to a round with others; with
  # no others in any round all rounds tie (uniform weights, each giving v at the query).
  lse = jnp.where(has_other[..., 0], m + jnp.log(l), base.NEG_INF)  # [B, G, N, n, R, c]

  lse = jnp.moveaxis(lse, 4, -1).reshape(B, G, N, L, -1)  # [B, G, N, L, R]
  lse = jnp.take_along_axis(lse, slot[..., None], axis=3)  # [B, G, N, T, R]
  w = jax.nn.softmax(lse, axis=2)
  return p, w, table, slot, kpos


def _value_heads(H: int, G: int, Gv: int):
  """Query heads as [G, U, Rg] blocks, Rg = gcd(H // G, H // Gv): each block has one key head
  and one value head. Returns the value head of each block [G, U] (numpy) and Rg."""
  R, Rv = H // G, H // Gv
  Rg = math.gcd(R, Rv)
  block = np.arange(G)[:, None] * R + np.arange(R // Rg)[None, :] * Rg  # first query head
  return block // Rv, Rg


@functools.partial(jax.jit, static_argnames=('causal', 'chunk_size'))
def reformer_attention(q, k, v, *, rotations, causal: bool = False, key_mask=None,
                       chunk_size: int = 32):
  """LSH attention: q [B, T, H, D], k [B, T, Gk, D] (keys before normalization; k = q for
  shared-QK), v [B, T, G, D], rotations [N, D, nb/2] -> [B, T, H, D]."""
  B, T, H, D = q.shape
  G = k.shape[2]
  p, w, table, slot, _ = _lsh_rounds(q, k, rotations, causal=causal, key_mask=key_mask,
                                     chunk_size=chunk_size)
  N, n, R, c = p.shape[2], p.shape[3], p.shape[4], p.shape[5]
  vh, Rg = _value_heads(H, G, v.shape[2])
  U = vh.shape[1]
  bi = jnp.arange(B)[:, None, None, None, None]
  vs = _pad_row(v.astype(jnp.float32))[bi, table[..., None], vh[None, :, None, None, :]]
  vw = _window(vs.reshape(B, G, N, n, c, U, -1), n)  # [B, G, N, n, W, U, Dv]
  p = p.reshape(B, G, N, n, U, Rg, c, -1)
  o = jnp.einsum('bgnjuscw,bgnjwud->bgnjcusd', p, vw).reshape(B, G, N, n * c, R, -1)
  o = jnp.take_along_axis(o, slot[..., None, None], axis=3)  # [B, G, N, T, R, Dv] by position
  out = jnp.einsum('bgntr,bgntrd->btgrd', w, o)
  return einops.rearrange(out, 'b t g r d -> b t (g r) d').astype(v.dtype)


@functools.partial(jax.jit, static_argnames=('causal', 'chunk_size'))
def reformer_matrix(q, k, *, rotations, causal: bool = False, key_mask=None,
                    chunk_size: int = 32):
  """The effective mixing matrix A [B, H, T, T] (float32) of `reformer_attention`."""
  B, T, H, D = q.shape
  G = k.shape[2]
  p, w, table, _, kpos = _lsh_rounds(q, k, rotations, causal=causal, key_mask=key_mask,
                                     chunk_size=chunk_size)
  N, n, R, c = p.shape[2], p.shape[3], p.shape[4], p.shape[5]
  idx = lambda size, axis: jnp.arange(size).reshape([-1 if a == axis else 1 for a in range(6)])
  qpos = table.reshape(B, G, N, n, c)[..., :, None]  # [B, G, N, n, c, 1]
  A = jnp.zeros((B, G, N, T + 1, T + 1, R), jnp.float32)
  A = A.at[idx(B, 0), idx(G, 1), idx(N, 2), qpos, kpos[..., None, :]].add(
      jnp.moveaxis(p, 4, -1))  # each round's weights scattered to (query, key) positions
  A = jnp.einsum('bgntsr,bgntr->bgrts', A[:, :, :, :T, :T], w)
  return einops.rearrange(A, 'b g r t s -> b (g r) t s')


class RotationKey(nnx.Variable):
  """PRNG key the eval-mode rotations are drawn from (not a Param, so never trained)."""


@base.register('reformer', capabilities=base.Capabilities(
    causal=True, cross=False, key_mask=True, exact=False, cost='N log N', shared_qk=True))
class Reformer(base.Attention):
  """Reformer LSH attention with shared query/key (Kitaev et al. 2020)."""

  random = True

  @dataclasses.dataclass(frozen=True)
  class Options:
    num_hashes: int = 2  # hash rounds
    num_buckets: int = 8  # buckets per round (even: argmax over [xR; -xR])
    chunk_size: int = 32  # sorted positions per chunk; each chunk also sees the previous one

    def __post_init__(self):
      is_int = lambda x: isinstance(x, int) and not isinstance(x, bool)
      base.check(is_int(self.num_hashes) and self.num_hashes > 0, 'reformer.num_hashes',
                 self.num_hashes, 'must be a positive int')
      base.check(is_int(self.num_buckets) and self.num_buckets >= 2 and self.num_buckets % 2 == 0,
                 'reformer.num_buckets', self.num_buckets,
                 'must be an even int >= 2 (angular LSH buckets come in +/- pairs)')
      base.check(is_int(self.chunk_size) and self.chunk_size > 0, 'reformer.chunk_size',
                 self.chunk_size, 'must be a positive int')

  def __init__(self, options, *, rngs: nnx.Rngs, entry):
    super().__init__(options, rngs=rngs, entry=entry)
    self.rngs = rngs
    # head_dim is only known at call time, so the fixed rotations are kept as the key they are
    # drawn from; in eval mode every call draws the same rotations from it.
    self.rotation_key = RotationKey(jax.random.key_data(rngs.params()))

  def rotations(self, head_dim: int, rng=None):
    """[num_hashes, head_dim, num_buckets // 2]: fresh per call in training (from `rng` if
    given), fixed in eval."""
    if self.deterministic:
      key = jax.random.wrap_key_data(self.rotation_key[...])
    else:
      key = self.redraw_key(rng)
    return random_rotations(key, self.options.num_hashes, head_dim, self.options.num_buckets)

  def forward(self, q, k, v, *, causal, key_mask, rng=None):
    return reformer_attention(q, k, v, rotations=self.rotations(q.shape[-1], rng),
                              causal=causal, key_mask=key_mask,
                              chunk_size=self.options.chunk_size)

  def matrix(self, q, k, v, *, causal, key_mask, rng=None):
    return reformer_matrix(q, k, rotations=self.rotations(q.shape[-1], rng), causal=causal,
                           key_mask=key_mask, chunk_size=self.options.chunk_size)
