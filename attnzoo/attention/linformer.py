"""Linformer attention (Wang et al. 2020): low-rank attention by projecting the sequence axis.

Learned E, F [proj_dim, max_len] project keys and values along the sequence: K' = E·K and
V' = F·V are [B, proj_dim, G, D], and out = softmax(q K'^T / sqrt(D)) V'. Sequences shorter than
max_len use the first S columns of E and F. Masked keys are zeroed before projecting, so their
contents reach no output. Not causal: every projected key mixes all positions, the future
included. The effective mixing matrix is A = softmax(q K'^T / sqrt(D)) · F, [B, H, T, S].

`share`: 'none' (separate E and F), 'kv' (F = E) or 'layer-wise' (F = E here, and `layer_shared`
tells the model to reuse one instance in every layer). `fit_options` sets max_len to the
sequence length, so E and F cover exactly the sequences a study runs. Cost: O(T·proj_dim) time and memory for
fixed proj_dim; supports cross-attention (projects over S).
"""
from __future__ import annotations

import dataclasses

import einops
import jax.numpy as jnp
from flax import nnx

from attnzoo.attention import base

SHARE = ('none', 'kv', 'layer-wise')


def _masked(x, key_mask):
  """x [B, S, G, D] in float32 with masked positions zeroed, so they reach no projection."""
  x = x.astype(jnp.float32)
  return x if key_mask is None else jnp.where(key_mask[:, :, None, None], x, 0.0)


def _probs(q, k, e, key_mask):
  """Softmax over the projected keys: [B, G, R, T, P] (float32)."""
  kp = jnp.einsum('ps,bsgd->bpgd', e[:, :k.shape[1]], _masked(k, key_mask))  # [B, P, G, D]
  qg = base.group_heads(q, k.shape[2]).astype(jnp.float32)  # [B, T, G, R, D]
  return base.masked_softmax(jnp.einsum('btgrd,bpgd->bgrtp', qg, kp) / jnp.sqrt(q.shape[-1]),
                             None)


def linformer_attention(q, k, v, e, f, *, key_mask=None):
  """q [B, T, H, D], k, v [B, S, G, D], e, f [P, max_len >= S] -> [B, T, H, D]."""
  vp = jnp.einsum('ps,bsgd->bpgd', f[:, :v.shape[1]], _masked(v, key_mask))  # [B, P, G, D]
  out = jnp.einsum('bgrtp,bpgd->btgrd', _probs(q, k, e, key_mask), vp)
  return einops.rearrange(out, 'b t g r d -> b t (g r) d').astype(q.dtype)


def linformer_matrix(q, k, e, f, *, key_mask=None):
  """Effective mixing matrix A = softmax(q (E K)^T / sqrt(D)) F: [B, H, T, S] (float32).

  Masked key columns are zero, matching the values zeroed before projecting.
  """
  A = jnp.einsum('bgrtp,ps->bgrts', _probs(q, k, e, key_mask), f[:, :k.shape[1]])
  if key_mask is not None:
    A = jnp.where(key_mask[:, None, None, None, :], A, 0.0)
  return einops.rearrange(A, 'b g r t s -> b (g r) t s')


@base.register('linformer', capabilities=base.Capabilities(
    causal=False, cross=True, key_mask=True, exact=False, cost='N*k'))
class Linformer(base.Attention):
  """Low-rank attention with learned sequence projections E, F (Wang et al. 2020); not causal."""

  @dataclasses.dataclass(frozen=True)
  class Options:
    proj_dim: int = 32  # P, the projected key/value length
    max_len: int = 1024  # longest key sequence S the projections cover
    share: str = 'none'  # 'none' | 'kv' (F = E) | 'layer-wise' (F = E, shared across layers)

    def __post_init__(self):
      base.check(isinstance(self.proj_dim, int) and self.proj_dim > 0, 'linformer.proj_dim',
                 self.proj_dim, 'must be a positive int')
      base.check(isinstance(self.max_len, int) and self.max_len > 0, 'linformer.max_len',
                 self.max_len, 'must be a positive int')
      base.check(self.share in SHARE, 'linformer.share', self.share,
                 f'must be one of {", ".join(SHARE)}')

  def __init__(self, options, *, rngs: nnx.Rngs, entry):
    super().__init__(options, rngs=rngs, entry=entry)
    init = nnx.initializers.normal(stddev=options.proj_dim ** -0.5)
    shape = (options.proj_dim, options.max_len)
    self.E = nnx.Param(init(rngs.params(), shape, jnp.float32))
    self.F = (nnx.Param(init(rngs.params(), shape, jnp.float32)) if options.share == 'none'
              else None)

  @classmethod
  def layer_shared(cls, options) -> bool:
    return options.share == 'layer-wise'

  @classmethod
  def fit_options(cls, options, seq_len):
    return {**options, 'max_len': seq_len}

  def _projections(self):
    e = self.E[...]
    return e, (e if self.F is None else self.F[...])

  def validate(self, q, k, v, causal, key_mask) -> bool:
    if (self.default_causal if causal is None else causal) is True:
      raise ValueError(
          f'{self.name}: causal=True: linformer is not causal-capable: E and F project the whole '
          'key/value sequence, so every projected key mixes all positions, future ones included. '
          'Use a causal-capable variant (e.g. dense, blockwise, longformer).')
    causal = super().validate(q, k, v, causal, key_mask)
    S = k.shape[1]
    base.check(S <= self.options.max_len, f'{self.name}: key length S', S,
               f'exceeds linformer.max_len={self.options.max_len}, the length E and F '
               'project; raise max_len')
    return causal

  def forward(self, q, k, v, *, causal, key_mask):
    e, f = self._projections()
    return linformer_attention(q, k, v, e, f, key_mask=key_mask)

  def matrix(self, q, k, v, *, causal, key_mask):
    e, f = self._projections()
    return linformer_matrix(q, k, e, f, key_mask=key_mask)
