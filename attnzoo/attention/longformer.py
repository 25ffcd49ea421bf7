"""Longformer attention (Beltagy et al. 2020): a sliding window plus a few global tokens.

Query i attends to key j when |i - j| <= window (only i - window <= j <= i when causal), and the
first `global_tokens` positions are global: every query attends to them and they attend to every
key (when causal they still see no later key, so a global query only ever sees earlier global
keys).

Computed by bands, never with a [T, T] mask: queries are cut into blocks of `window` rows, each
block scores its own key block and its neighbours (the previous one when causal, both when not),
gathered as [B, T/window, 3·window] views, plus the global key columns [B, T, k]; one softmax runs
jointly over both, with global keys removed from the band so no key is counted twice. The global
rows are computed densely over all keys, O(T·k). Cost: O(T·(window + k)) time and memory.
"""
from __future__ import annotations

import dataclasses

import einops
import jax.numpy as jnp
import numpy as np

from attnzoo.attention import base, dense


def _neighbours(x, offsets, bs, nb):
  """[B, T, ...] -> [B, nb, len(offsets)·bs, ...]: for block n, blocks n + o for o in offsets.

  Positions before 0 or past T are zero padding (masked by the caller through `valid`).
  """
  lo, hi = -min(offsets), max(offsets)
  T = x.shape[1]
  pad = [(0, 0), (lo * bs, nb * bs - T + hi * bs)] + [(0, 0)] * (x.ndim - 2)
  xb = jnp.pad(x, pad).reshape(x.shape[0], nb + lo + hi, bs, *x.shape[2:])
  return jnp.concatenate([xb[:, lo + o:lo + o + nb] for o in offsets], axis=2)


def longformer_mask(T: int, *, window: int, global_tokens: int, causal: bool, key_mask=None):
  """The pattern as a dense bool mask [B or 1, 1, 1, T, T] (True = attend); for analysis only."""
  qi, kj = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
  allowed = (jnp.abs(qi - kj) <= window) | (kj < global_tokens) | (qi < global_tokens)
  if causal:
    allowed &= kj <= qi
  allowed = allowed[None, None, None]
  if key_mask is not None:
    allowed = allowed & key_mask[:, None, None, None, :]
  return allowed


def longformer_attention(q, k, v, *, causal: bool = False, key_mask=None, window: int = 16,
                         global_tokens: int = 1):
  """Sliding-window + global attention: q [B, T, H, D], k, v [B, T, G, D] -> [B, T, H, D]."""
  B, T, H, D = q.shape
  G = k.shape[2]
  g = min(global_tokens, T)
  bs = min(window, T)  # query block size: one neighbour block on each side covers the window
  nb = -(-T // bs)
  offsets = (0,) if nb == 1 else (-1, 0) if causal else (-1, 0, 1)
  valid = jnp.ones((B, T), bool) if key_mask is None else key_mask

  qs = base.group_heads(q, G).astype(jnp.float32) / jnp.sqrt(D)  # [B, T, G, R, D]
  k32, v32 = k.astype(jnp.float32), v.astype(jnp.float32)
  qb = jnp.pad(qs, [(0, 0), (0, nb * bs - T), (0, 0), (0, 0), (0, 0)])
  qb = qb.reshape(B, nb, bs, *qs.shape[2:])  # [B, n, c, G, R, D]
  kn = _neighbours(k32, offsets, bs, nb)  # [B, n, K, G, D], K = len(offsets) * bs
  vn = _neighbours(v32, offsets, bs, nb)
  # Band keys: valid and not global (global keys come from the global columns below, so no key
  # is counted twice); padding before 0 and past T is False.
  valid_n = _neighbours(valid & (jnp.arange(T) >= g)[None, :], offsets, bs, nb)  # [B, n, K]

  # Within the window: depends only on the offset inside the block, a small NumPy constant.
  dist = np.arange(bs)[:, None] - np.concatenate([o * bs + np.arange(bs) for o in offsets])
  band = np.abs(dist) <= window  # [c, K]
  if causal:
    band &= dist >= 0
  band_mask = band[None, None] & valid_n[:, :, None, :]  # [B, n, c, K]
  scores = jnp.einsum('bncgrd,bnkgd->bgrnck', qb, kn)  # [B, G, R, n, c, K]
  mask = band_mask[:, None, None]
  if g > 0:
    # Global key columns, seen by every query (earlier ones only when causal).
    glob = jnp.broadcast_to(valid[:, None, None, :g], (B, nb, bs, g))  # [B, n, c, k]
    if causal:
      q_pos = np.arange(nb * bs).reshape(nb, bs)  # [n, c]
      glob = glob & (np.arange(g)[None, None, None, :] <= q_pos[None, :, :, None])
    scores = jnp.concatenate(
        [scores, jnp.einsum('bncgrd,bjgd->bgrncj', qb, k32[:, :g])], axis=-1)
    mask = jnp.concatenate([mask, glob[:, None, None]], axis=-1)
  p = base.masked_softmax(scores, mask)  # [B, G, R, n, c, K (+ k)]
  K = kn.shape[2]
  out = jnp.einsum('bgrnck,bnkgd->bncgrd', p[..., :K], vn)
  if g > 0:
    out = out + jnp.einsum('bgrncj,bjgd->bncgrd', p[..., K:], v32[:, :g])
  out = out.reshape(B, nb * bs, *out.shape[3:])[:, :T]  # [B, T, G, R, D]

  if g > 0:
    # Global rows attend to every key: dense over the k global queries only, O(T·k).
    s_rows = jnp.einsum('btgrd,bsgd->bgrts', qs[:, :g], k32)  # [B, G, R, k, T]
    rows_mask = base.mask_bias(g, T, causal=causal, key_mask=key_mask)
    rows = jnp.einsum('bgrts,bsgd->btgrd', base.masked_softmax(s_rows, rows_mask), v32)
    out = jnp.concatenate([rows, out[:, g:]], axis=1)
  return einops.rearrange(out, 'b t g r d -> b t (g r) d').astype(q.dtype)


@base.register('longformer', capabilities=base.Capabilities(
    causal=True, cross=False, key_mask=True, exact=False, cost='N*w'))
class Longformer(base.Attention):
  """Sliding-window attention with global tokens (Beltagy et al. 2020); O(T·w) by bands."""

  @dataclasses.dataclass(frozen=True)
  class Options:
    window: int = 16  # keys at distance <= window (backwards only when causal)
    global_tokens: int = 1  # the first k positions attend to and are attended by everything

    def __post_init__(self):
      base.check(isinstance(self.window, int) and self.window > 0, 'longformer.window',
                 self.window, 'must be a positive int')
      base.check(isinstance(self.global_tokens, int) and self.global_tokens >= 0,
                 'longformer.global_tokens', self.global_tokens, 'must be an int >= 0')

  def forward(self, q, k, v, *, causal, key_mask):
    return longformer_attention(q, k, v, causal=causal, key_mask=key_mask,
                                window=self.options.window,
                                global_tokens=self.options.global_tokens)

  def matrix(self, q, k, v, *, causal, key_mask):
    mask = longformer_mask(q.shape[1], window=self.options.window,
                           global_tokens=self.options.global_tokens, causal=causal,
                           key_mask=key_mask)
    A = base.masked_softmax(dense.scores(q, k), mask)  # [B, G, R, T, S]
    return einops.rearrange(A, 'b g r t s -> b (g r) t s')
