"""Blockwise exact attention in pure JAX: online softmax over key blocks (Rabe & Staats 2021;
Dao et al. 2022), the fast exact path on CPU.

The forward scans key blocks of `block_k`, keeping a running max, running sum and accumulator,
so the [T, S] score matrix never exists; only the output and the logsumexp are saved. The
backward (custom_vjp) scans the blocks again, recomputing probabilities from the saved
logsumexp. Peak memory O(T·block_k + (T + S)·D) instead of O(T·S); time O(T·S·D).
"""
from __future__ import annotations

import dataclasses
import functools

import einops
import jax
import jax.numpy as jnp

from attnzoo.attention import base, dense


def _blocks(x, n, bk):
  """[B, S, ...] -> [n, B, bk, ...] (S already padded to n * bk)."""
  return jnp.moveaxis(x.reshape(x.shape[0], n, bk, *x.shape[2:]), 1, 0)


def _block_scores(qs, kb, valid_b, start, causal):
  """qs [B, G, R, T, D] (pre-scaled), kb [B, bk, G, D] -> masked scores, mask [B,G,R,T,bk]."""
  s = jnp.einsum('bgrtd,bsgd->bgrts', qs, kb)
  mask = valid_b[:, None, None, None, :] > 0
  if causal:
    kpos = start + jnp.arange(kb.shape[1])
    mask = mask & (kpos[None, :] <= jnp.arange(qs.shape[3])[:, None])[None, None, None]
  return jnp.where(mask, s, base.NEG_INF), mask


def _prepare(q, k, v, valid, block_k):
  G, S = k.shape[2], k.shape[1]
  bk = min(block_k, S)
  n = -(-S // bk)
  pad = n * bk - S
  padded = [jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) for x in (k, v, valid)]
  kb, vb, valid_b = (_blocks(x.astype(jnp.float32), n, bk) for x in padded)
  qs = einops.rearrange(q, 'b t (g r) d -> b g r t d', g=G).astype(jnp.float32)
  qs = qs / jnp.sqrt(q.shape[-1])
  return qs, kb, vb, valid_b, jnp.arange(n) * bk


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q, k, v, valid, causal, block_k):
  return _forward(q, k, v, valid, causal, block_k)[0]


def _forward(q, k, v, valid, causal, block_k):
  qs, kb, vb, valid_b, starts = _prepare(q, k, v, valid, block_k)
  B, G, R, T, D = qs.shape

  def step(carry, xs):
    m, l, acc = carry
    k_i, v_i, valid_i, start = xs
    s, mask = _block_scores(qs, k_i, valid_i, start, causal)
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
    corr = jnp.exp(m - m_new)
    l = l * corr + p.sum(-1)
    acc = acc * corr[..., None] + jnp.einsum('bgrts,bsgd->bgrtd', p, v_i)
    return (m_new, l, acc), None

  init = (jnp.full((B, G, R, T), base.NEG_INF), jnp.zeros((B, G, R, T)),
          jnp.zeros((B, G, R, T, v.shape[-1])))
  (m, l, acc), _ = jax.lax.scan(step, init, (kb, vb, valid_b, starts))
  seen = l > 0  # rows with at least one allowed key; the rest give zeros
  out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
  lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
  out_bthd = einops.rearrange(out, 'b g r t d -> b t (g r) d').astype(q.dtype)
  return out_bthd, (q, k, v, valid, out, lse)


def _backward(causal, block_k, res, d_out):
  q, k, v, valid, out, lse = res
  qs, kb, vb, valid_b, starts = _prepare(q, k, v, valid, block_k)
  G, S = k.shape[2], k.shape[1]
  do = einops.rearrange(d_out, 'b t (g r) d -> b g r t d', g=G).astype(jnp.float32)
  delta = (do * out).sum(-1)  # rowsum(dO * O) [B, G, R, T]

  def step(dq, xs):
    k_i, v_i, valid_i, start = xs
    s, mask = _block_scores(qs, k_i, valid_i, start, causal)
    p = jnp.where(mask, jnp.exp(s - lse[..., None]), 0.0)
    dv_i = jnp.einsum('bgrts,bgrtd->bsgd', p, do)
    ds = p * (jnp.einsum('bgrtd,bsgd->bgrts', do, v_i) - delta[..., None])
    dk_i = jnp.einsum('bgrts,bgrtd->bsgd', ds, qs)
    return dq + jnp.einsum('bgrts,bsgd->bgrtd', ds, k_i), (dk_i, dv_i)

  dq, (dk, dv) = jax.lax.scan(step, jnp.zeros_like(qs), (kb, vb, valid_b, starts))
  dq = einops.rearrange(dq / jnp.sqrt(q.shape[-1]), 'b g r t d -> b t (g r) d')
  unblock = lambda x: jnp.moveaxis(x, 0, 1).reshape(x.shape[1], -1, G, x.shape[-1])[:, :S]
  return (dq.astype(q.dtype), unblock(dk).astype(k.dtype), unblock(dv).astype(v.dtype),
          jnp.zeros_like(valid))


_attention.defvjp(_forward, _backward)


def blockwise_attention(q, k, v, *, causal: bool = False, key_mask=None, block_k: int = 512):
  """Exact softmax attention by key blocks: q [B, T, H, D], k, v [B, S, G, D] -> [B, T, H, D]."""
  valid = (jnp.ones(k.shape[:2]) if key_mask is None else key_mask).astype(jnp.float32)
  return _attention(q, k, v, valid, causal, block_k)


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
