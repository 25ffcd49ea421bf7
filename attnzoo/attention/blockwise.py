"""Blockwise exact attention in pure JAX: online softmax over key blocks (Rabe & Staats 2021;
Dao et al. 2022), the fast exact path on CPU.

The forward scans key blocks of `block_k`, keeping a running max, running sum and accumulator,
so the [T, S] score matrix never exists; only the output and the logsumexp are saved. The
backward (custom_vjp) scans the blocks again, recomputing probabilities from the saved
logsumexp. Peak memory O(T·block_k + (T + S)·D) instead of O(T·S); time O(T·S·D).

The per-block math (`forward_blocks`, `finish`, `backward_blocks`) takes explicit query and key
positions, so ring attention (`ring.py`) runs the same updates on the blocks visiting a device.
"""
from __future__ import annotations

import dataclasses
import functools

import einops
import jax
import jax.numpy as jnp

from attnzoo.attention import base, dense


def group_queries(q, G: int):
  """q [B, T, H, D] -> float32 [B, G, R, T, D], pre-scaled by 1/sqrt(D)."""
  qs = einops.rearrange(q, 'b t (g r) d -> b g r t d', g=G).astype(jnp.float32)
  return qs / jnp.sqrt(q.shape[-1])


def ungroup(x):
  """[B, G, R, T, D] -> [B, T, H, D]."""
  return einops.rearrange(x, 'b g r t d -> b t (g r) d')


def key_blocks(k, v, valid, k_pos, bk: int):
  """k, v [B, S, G, D], valid [B, S], k_pos [S] -> float32 [n, B, bk, ...] blocks, k_pos [n, bk].

  S is zero-padded up to n * bk; padded keys have valid 0, so they are never attended.
  """
  def blocks(x):
    n = -(-x.shape[1] // bk)
    x = jnp.pad(x, [(0, 0), (0, n * bk - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(x.shape[0], n, bk, *x.shape[2:]), 1, 0)
  return (*(blocks(x.astype(jnp.float32)) for x in (k, v, valid)), blocks(k_pos[None])[:, 0])


def unblock(x, S: int):
  """[n, B, bk, ...] -> [B, S, ...] (padding dropped)."""
  return jnp.moveaxis(x, 0, 1).reshape(x.shape[1], -1, *x.shape[3:])[:, :S]


def _block_scores(qs, q_pos, kb, valid_b, k_pos, causal, window):
  """qs [B, G, R, T, D] (pre-scaled), kb [B, bk, G, D] -> masked scores, mask [B,G,R,T,bk]."""
  s = jnp.einsum('bgrtd,bsgd->bgrts', qs, kb)
  mask = valid_b[:, None, None, None, :] > 0
  rel = k_pos[None, :] - q_pos[:, None]  # [T, bk]
  if causal:
    mask = mask & (rel <= 0)[None, None, None]
  if window is not None:
    mask = mask & (jnp.abs(rel) <= window)[None, None, None]
  return jnp.where(mask, s, base.NEG_INF), mask


def init_carry(qs, Dv: int):
  """Empty online-softmax state (running max, running sum, accumulator) for qs [B,G,R,T,D]."""
  shape = qs.shape[:4]
  return jnp.full(shape, base.NEG_INF), jnp.zeros(shape), jnp.zeros((*shape, Dv))


def forward_blocks(carry, qs, q_pos, blocks, *, causal, window=None):
  """Online-softmax update of carry (m, l, acc) over key `blocks` from `key_blocks`."""
  def step(carry, xs):
    m, l, acc = carry
    k_i, v_i, valid_i, k_pos = xs
    s, mask = _block_scores(qs, q_pos, k_i, valid_i, k_pos, causal, window)
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
    corr = jnp.exp(m - m_new)
    l = l * corr + p.sum(-1)
    acc = acc * corr[..., None] + jnp.einsum('bgrts,bsgd->bgrtd', p, v_i)
    return (m_new, l, acc), None
  return jax.lax.scan(step, carry, blocks)[0]


def finish(carry):
  """(m, l, acc) -> out [B, G, R, T, D] and logsumexp [B, G, R, T]; rows that saw no key -> 0."""
  m, l, acc = carry
  seen = l > 0
  out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
  lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
  return out, lse


def backward_blocks(dqs, qs, q_pos, do, lse, delta, blocks, *, causal, window=None):
  """Adds the key `blocks`' part of d(loss)/d(qs) to dqs; returns it and dk, dv blocks.

  do [B, G, R, T, D] is the output cotangent, delta = rowsum(do * out) [B, G, R, T].
  """
  def step(dqs, xs):
    k_i, v_i, valid_i, k_pos = xs
    s, mask = _block_scores(qs, q_pos, k_i, valid_i, k_pos, causal, window)
    p = jnp.where(mask, jnp.exp(s - lse[..., None]), 0.0)
    dv_i = jnp.einsum('bgrts,bgrtd->bsgd', p, do)
    ds = p * (jnp.einsum('bgrtd,bsgd->bgrts', do, v_i) - delta[..., None])
    dk_i = jnp.einsum('bgrts,bgrtd->bsgd', ds, qs)
    return dqs + jnp.einsum('bgrts,bsgd->bgrtd', ds, k_i), (dk_i, dv_i)
  dqs, (dk, dv) = jax.lax.scan(step, dqs, blocks)
  return dqs, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _attention(q, k, v, valid, causal, block_k, window):
  return _forward(q, k, v, valid, causal, block_k, window)[0]


def _setup(q, k, v, valid, block_k):
  qs = group_queries(q, k.shape[2])
  S = k.shape[1]
  return qs, jnp.arange(q.shape[1]), key_blocks(k, v, valid, jnp.arange(S), min(block_k, S))


def _forward(q, k, v, valid, causal, block_k, window):
  qs, q_pos, blocks = _setup(q, k, v, valid, block_k)
  carry = forward_blocks(init_carry(qs, v.shape[-1]), qs, q_pos, blocks, causal=causal,
                         window=window)
  out, lse = finish(carry)
  return ungroup(out).astype(q.dtype), (q, k, v, valid, out, lse)


def _backward(causal, block_k, window, res, d_out):
  q, k, v, valid, out, lse = res
  qs, q_pos, blocks = _setup(q, k, v, valid, block_k)
  do = einops.rearrange(d_out, 'b t (g r) d -> b g r t d', g=k.shape[2]).astype(jnp.float32)
  dqs, dk, dv = backward_blocks(jnp.zeros_like(qs), qs, q_pos, do, lse, (do * out).sum(-1),
                                blocks, causal=causal, window=window)
  S = k.shape[1]
  return (ungroup(dqs / jnp.sqrt(q.shape[-1])).astype(q.dtype), unblock(dk, S).astype(k.dtype),
          unblock(dv, S).astype(v.dtype), jnp.zeros_like(valid))


_attention.defvjp(_forward, _backward)


def blockwise_attention(q, k, v, *, causal: bool = False, key_mask=None, block_k: int = 512,
                        window: int | None = None):
  """Exact softmax attention by key blocks: q [B, T, H, D], k, v [B, S, G, D] -> [B, T, H, D].

  `window`: a query at i sees only keys j with |i - j| <= window (None: all).
  """
  valid = (jnp.ones(k.shape[:2]) if key_mask is None else key_mask).astype(jnp.float32)
  return _attention(q, k, v, valid, causal, block_k, window)


@base.register('blockwise', capabilities=base.Capabilities(
    causal=True, cross=True, key_mask=True, exact=True, cost='N^2'))
class Blockwise(base.Attention):
  """Exact attention by key blocks with an online softmax; never materializes [T, S]."""

  @dataclasses.dataclass(frozen=True)
  class Options:
    block_k: int = 512

    def __post_init__(self):
      base.check(isinstance(self.block_k, int) and self.block_k > 0, 'blockwise.block_k',
                 self.block_k, 'must be a positive int')

  @classmethod
  def decodable(cls, options) -> bool:
    return True  # exact softmax: attention over the cache is the same math

  def forward(self, q, k, v, *, causal, key_mask):
    return blockwise_attention(q, k, v, causal=causal, key_mask=key_mask,
                               block_k=self.options.block_k)

  def matrix(self, q, k, v, *, causal, key_mask):
    return dense.attention_probs(q, k, causal=causal, key_mask=key_mask)
