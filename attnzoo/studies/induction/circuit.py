"""Path-specific ablations of an attention-only Decoder (Elhage et al. 2021's Q-, K- and
V-composition), built from the model's own submodules.

`forward(model, tokens, paths=..., heads=..., mode=...)` recomputes the Decoder's forward pass
with (a) the output of block `src` removed from one input (`'q'`, `'k'` or `'v'`) of a later
block `dst` only, every other path intact, and/or (b) single heads' outputs removed. Removed
means replaced by zero (`mode='zero'`) or by its mean over the batch at each position
(`mode='mean'`, which keeps what the signal says on average, e.g. about positions). Without
ablations it is the model's own forward pass, operation for operation.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from attnzoo import attention

INPUTS = ('q', 'k', 'v')
MODES = ('mean', 'zero')


def _keep(x, keep, mode: str):
  """x [B, T, ...] where keep (a 0/1 scalar) is 1, else its replacement: zero or its mean over
  the batch at each position. keep == 1 returns x exactly."""
  removed = 0.0 if mode == 'zero' else jnp.broadcast_to(x.mean(0), x.shape)
  return keep * x + (1 - keep) * removed


def _attend(attn, xq, xk, xv, causal: bool):
  """MultiHeadAttention's self-attention with separate inputs for q, k and v (each [B, T, d])
  -> per-head outputs z [B, T, H, D] before o_proj, and the attention matrix [B, H, T, T]."""
  B, T, _ = xq.shape
  H, G, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
  q = attn.q_proj(xq).reshape(B, T, H, D)
  v = attn.v_proj(xv).reshape(B, T, G, D)
  k = (attn.q_proj if attn.shared_qk else attn.k_proj)(xk).reshape(B, T, -1, D)
  q, k = attn.place(q, k, jnp.arange(T))
  if attn.smear is not None:
    a = jax.nn.sigmoid(attn.smear[...])[None, None, :, None]  # [1, 1, K/V heads, 1]
    prev = jnp.pad(k, [(0, 0), (1, 0), (0, 0), (0, 0)])[:, :-1]
    k = a * k + (1 - a) * prev
  z = attn.core(q, k, v, causal=causal)  # [B, T, H, D]
  return z, attn.core.attention_matrix(q, k, v, causal=causal)


def masks(model, paths: Sequence[tuple[int, int, str]] = (),
          heads: Sequence[tuple[int, int]] = ()):
  """(paths, heads) as `forward_masked`'s keep_paths [L, L, 3] and keep_heads [L, H] (1 = kept).

  paths: (src, dst, input) triples, 0-based layers src < dst, input in 'q' | 'k' | 'v': block
  src's attention output is removed from that input of block dst only. heads: (layer, head)
  pairs whose output (before o_proj) is removed everywhere downstream."""
  L, H = len(model.blocks), model.blocks[0].attn.num_heads
  keep_paths, keep_heads = np.ones((L, L, len(INPUTS)), np.float32), np.ones((L, H), np.float32)
  for src, dst, kind in paths:
    attention.base.check(0 <= src < dst < L and kind in INPUTS, 'path', (src, dst, kind),
                         f'expected (src, dst, input) with 0 <= src < dst < {L}, input in '
                         f'{INPUTS}')
    keep_paths[src, dst, INPUTS.index(kind)] = 0.0
  for layer, head in heads:
    attention.base.check(0 <= layer < L and 0 <= head < H, 'head', (layer, head),
                         f'outside the model\'s {L} layers of {H} heads')
    keep_heads[layer, head] = 0.0
  return keep_paths, keep_heads


def forward(model, tokens, *, paths=(), heads=(), mode: str = 'zero'):
  """tokens [B, T] -> (logits [B, T, V], [A [B, H, T, T] per layer]) with `paths` and `heads`
  (see `masks`) removed."""
  return forward_masked(model, tokens, *masks(model, paths, heads), mode=mode)


def forward_masked(model, tokens, keep_paths, keep_heads, *, mode: str = 'zero'):
  """`forward` with the ablations as arrays (so one compiled program serves them all):
  keep_paths [L, L, 3] (src, dst, q|k|v), keep_heads [L, H]; 1 keeps, 0 removes."""
  attention.base.check(mode in MODES, 'mode', mode, f'expected one of {MODES}')
  for block in model.blocks:
    attention.base.check(block.mlp is None and block.cross is None, 'model', 'with MLP or '
                         'cross-attention', 'path ablations need an attention-only decoder')
  B, T = tokens.shape
  x0 = model.embed_tokens(tokens)  # [B, T, d]
  outs = []  # each block's attention output [B, T, d]: the residual stream is x0 + sum(outs)

  def stream(dst, kind):
    x = x0
    for src, y in enumerate(outs):  # added in the model's order, so the sums are identical
      x = x + _keep(y, keep_paths[src, dst, kind], mode)
    return x

  attns = []
  for i, block in enumerate(model.blocks):
    xs = [block.norm1(stream(i, kind)) for kind in range(len(INPUTS))]
    z, A = _attend(block.attn, *xs, causal=model.causal)  # z [B, T, H, D]
    z = _keep(z, keep_heads[i][None, None, :, None], mode)
    outs.append(block.attn.o_proj(z.reshape(B, T, -1)))
    attns.append(A)
  x = x0
  for y in outs:
    x = x + y
  return model.head(model.norm(x)), attns
