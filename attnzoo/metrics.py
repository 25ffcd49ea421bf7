"""Induction-head measurements: pure functions of attention matrices and tokens.

Attention matrices are `A [B, H, T, T]` (a layer's `Decoder(..., return_attention=True)`
output, query rows i, key columns j, causal so j <= i). Every score is per head, `[H]`, and is
1 for an ideal pattern of its kind (Olsson et al. 2022, "In-context Learning and Induction
Heads"; Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"):

  induction_score        prefix matching: from token A at i, mass on keys j whose previous
                         token x[j-1] is A (the token that followed an earlier A)
  stripe_score           on `[BOS] + r + r` (see `repeated_tokens`), the mean of the diagonal
                         at offset -(L-1) over the second copy's queries (TransformerLens'
                         induction stripe)
  previous_token_score   mean of A[i, i-1]
  argmax_offsets         per head, the histogram of i - argmax_j A[i, j]: heads that implement
                         induction one position off the stripe show up here
  icl_score              in-context learning: loss on the first period minus loss on the rest
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

BOS = 0


def prefix_matches(tokens):
  """tokens [B, T] int -> bool [B, T, T]: key j (1 <= j <= i) follows a copy of x[i]."""
  T = tokens.shape[1]
  prev = tokens[:, :-1]  # x[j-1] for j = 1 .. T-1
  same = tokens[:, :, None] == prev[:, None, :]  # [B, T(i), T-1(j-1)]
  same = jnp.pad(same, [(0, 0), (0, 0), (1, 0)])  # key 0 has no previous token
  i, j = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
  return same & (j <= i)[None]


def induction_score(A, tokens):
  """A [B, H, T, T], tokens [B, T] -> [H]: attention mass on prefix-matching keys, averaged
  over the queries that have at least one such key (uniform attention scores about
  matches / (i + 1); a previous-token head about 0)."""
  match = prefix_matches(tokens)[:, None].astype(A.dtype)  # [B, 1, T, T]
  mass = (A * match).sum(-1)  # [B, H, T]
  has = match.max(-1)  # [B, 1, T]
  return (mass * has).sum((0, 2)) / jnp.maximum(has.sum((0, 2)), 1.0)


def repeated_tokens(rng: np.random.Generator, batch_size: int, length: int, vocab_size: int):
  """[B, 2L+1] int32 probe sequences `[BOS] + r + r`, r of L distinct tokens from 1..V-1 (so
  each query of the second copy has exactly one prefix match; training data is alike)."""
  if not 1 <= length < vocab_size:
    raise ValueError(f'length={length!r}: need 1 <= length < vocab_size={vocab_size}')
  r = np.argsort(rng.random((batch_size, vocab_size - 1)), axis=1)[:, :length] + 1
  bos = np.full((batch_size, 1), BOS)
  return np.concatenate([bos, r, r], axis=1).astype(np.int32)


def diagonal_score(A, distance: int, first_query: int = 0):
  """A [B, H, T, T] -> [H]: mean of A[i, i - distance] over queries i >= first_query."""
  T = A.shape[-1]
  i = jnp.arange(max(first_query, distance), T)
  return A[:, :, i, i - distance].mean((0, 2))


def stripe_score(A, length: int):
  """A [B, H, 2L+1, 2L+1] on `repeated_tokens(..., length=L)` -> [H]: mean attention from
  each second-copy query (positions L+1 .. 2L) to the token after its first occurrence, the
  diagonal at offset -(L-1). (TransformerLens also averages two first-copy rows; we do not.)"""
  T = A.shape[-1]
  if T != 2 * length + 1:
    raise ValueError(f'A.shape[-1]={T}: expected 2 * length + 1 = {2 * length + 1}')
  return diagonal_score(A, length - 1, first_query=length + 1)


def previous_token_score(A):
  """A [B, H, T, T] -> [H]: mean of A[i, i-1] over queries i >= 1."""
  return diagonal_score(A, 1, first_query=1)


def argmax_offsets(A, first_query: int = 0):
  """A [B, H, T, T] -> [H, T] fraction of queries i >= first_query whose most-attended key is
  at distance d = i - argmax_j A[i, j] (column d). On `repeated_tokens` with length L an
  induction head peaks at d = L-1, a duplicate-token head at L, a previous-token head at 1."""
  T = A.shape[-1]
  i = jnp.arange(first_query, T)
  d = i[None, None, :] - A[:, :, first_query:].argmax(-1)  # [B, H, Tq]
  onehot = d[..., None] == jnp.arange(T)[None, None, None, :]  # [B, H, Tq, T]
  return onehot.astype(jnp.float32).mean((0, 2))


def near_offset_score(offsets, distance: int, tolerance: int = 1):
  """offsets [H, T] from `argmax_offsets` -> [H]: fraction of queries whose argmax key lies
  within `tolerance` positions of `distance` (catches stripes shifted by one)."""
  lo, hi = max(distance - tolerance, 0), distance + tolerance + 1
  return offsets[:, lo:hi].sum(-1)


def icl_score(loss_first, loss_repeat):
  """In-context learning score (nats): loss on the unpredictable first period minus loss on
  the repeated part; ~0 without in-context learning, ~loss_first with perfect copying."""
  return loss_first - loss_repeat
