"""Ring (context-parallel) attention (Liu et al. 2023), load-balanced by striping (Brandon et
al. 2023, "Striped Attention").

The sequence is sharded over the mesh axis `seq` (n devices). Each device keeps its query block;
the K/V blocks travel around the ring with `ppermute`, n - 1 hops, and each visiting block is
folded into the query block's online softmax with the blockwise math (`blockwise.py`). The
backward (custom_vjp) sends K/V around again together with the dK/dV accumulated for them, which
arrive back at their owner after the n-th hop. A device holds its own share of Q/K/V (and of
dQ/dK/dV) plus one visiting K/V (and dK/dV) block: per-device memory O((T + S)·D / n +
(T/n)·block_k), time O(T·S·D / n) per device, n - 1 (backward: n) neighbour transfers of S/n keys.

Causal load balance: with contiguous shards, device 0's queries see almost nothing of the keys
visiting it while the last device sees everything. Striping puts token p on device p mod n, so
every (query shard, key shard) pair is about half visible and every device does the same work at
every step. The layout change is one all-to-all per array on entry and exit.

The mesh is the ambient one (`jax.set_mesh`); with no mesh, or a `seq` axis of size 1, this is
the single-device blockwise computation. The batch is split over `data` when the mesh has it.
Cost: O(T·S) compute, exact.
"""
from __future__ import annotations

import dataclasses
import functools

import einops
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from attnzoo.attention import base, blockwise, dense


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def _stripe(x, axis: str, n: int):
  """Local contiguous shard [b, L, ...] (L % n == 0) -> local striped shard: slot s of device i
  holds global position n * s + i."""
  b, L = x.shape[:2]
  x = jnp.moveaxis(x.reshape(b, L // n, n, *x.shape[2:]), 2, 1)  # [b, n (to device), L/n, ...]
  return jax.lax.all_to_all(x, axis, 1, 1, tiled=True).reshape(x.shape[0], L, *x.shape[3:])


def _unstripe(x, axis: str, n: int):
  """Inverse of `_stripe`."""
  b, L = x.shape[:2]
  x = jax.lax.all_to_all(x.reshape(b, n, L // n, *x.shape[2:]), axis, 1, 1, tiled=True)
  return jnp.moveaxis(x, 1, 2).reshape(b, L, *x.shape[3:])


@dataclasses.dataclass(frozen=True)
class _Layout:
  axis: str  # mesh axis the sequence is split over
  n: int  # its size
  batch_axis: str | None  # mesh axis the batch is split over
  bk: int  # key block within a visiting shard
  causal: bool
  window: int | None


def _setup(k, v, valid, qs, lay: _Layout):
  """Query positions, the key blocks after j hops, and one hop, for striped local shards."""
  n, i = lay.n, jax.lax.axis_index(lay.axis)
  q_pos = n * jnp.arange(qs.shape[3]) + i
  # After j hops a device holds the K/V shard of device (i - j) mod n.
  k_pos = lambda j: n * jnp.arange(k.shape[1]) + (i - j) % n
  blocks = lambda kv, j: blockwise.key_blocks(*kv, k_pos(j), lay.bk)
  rotate = lambda x: jax.lax.ppermute(x, lay.axis, [(d, (d + 1) % n) for d in range(n)])
  return q_pos, blocks, rotate


def _local_forward(q, k, v, valid, *, lay: _Layout):
  q, k, v, valid = (_stripe(x, lay.axis, lay.n) for x in (q, k, v, valid))
  qs = blockwise.group_queries(q, k.shape[2])
  q_pos, blocks, rotate = _setup(k, v, valid, qs, lay)
  fwd = functools.partial(blockwise.forward_blocks, qs=qs, q_pos=q_pos, causal=lay.causal,
                          window=lay.window)
  carry = fwd(blockwise.init_carry(qs, v.shape[-1]), blocks=blocks((k, v, valid), 0))

  def hop(state, j):
    carry, kv = state
    kv = rotate(kv)
    return (fwd(carry, blocks=blocks(kv, j)), kv), None

  (carry, _), _ = jax.lax.scan(hop, (carry, (k, v, valid)), jnp.arange(1, lay.n))
  out, lse = blockwise.finish(carry)
  y = _unstripe(blockwise.ungroup(out).astype(q.dtype), lay.axis, lay.n)
  return y, (q, k, v, valid, out, lse)  # residuals stay striped


def _local_backward(q, k, v, valid, out, lse, d_out, *, lay: _Layout):
  qs = blockwise.group_queries(q, k.shape[2])
  q_pos, blocks, rotate = _setup(k, v, valid, qs, lay)
  do = einops.rearrange(_stripe(d_out, lay.axis, lay.n), 'b t (g r) d -> b g r t d',
                        g=k.shape[2]).astype(jnp.float32)
  bwd = functools.partial(blockwise.backward_blocks, qs=qs, q_pos=q_pos, do=do, lse=lse,
                          delta=(do * out).sum(-1), causal=lay.causal, window=lay.window)
  dqs, dk, dv = bwd(jnp.zeros_like(qs), blocks=blocks((k, v, valid), 0))

  def hop(state, j):
    dqs, kv, dk, dv = state
    kv, dk, dv = rotate((kv, dk, dv))
    dqs, dk_j, dv_j = bwd(dqs, blocks=blocks(kv, j))
    return (dqs, kv, dk + dk_j, dv + dv_j), None

  (dqs, _, dk, dv), _ = jax.lax.scan(hop, (dqs, (k, v, valid), dk, dv), jnp.arange(1, lay.n))
  dk, dv = rotate((dk, dv))  # the n-th hop brings each shard's dK/dV home
  S = k.shape[1]
  grads = (blockwise.ungroup(dqs / jnp.sqrt(q.shape[-1])).astype(q.dtype),
           blockwise.unblock(dk, S).astype(k.dtype), blockwise.unblock(dv, S).astype(v.dtype))
  return tuple(_unstripe(x, lay.axis, lay.n) for x in grads)


def _specs(lay: _Layout):
  """Specs of [B, T, ...] arrays and of grouped [B, G, R, T, ...] residuals."""
  return P(lay.batch_axis, lay.axis), P(lay.batch_axis, None, None, lay.axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ring(q, k, v, valid, lay: _Layout):
  return _ring_fwd(q, k, v, valid, lay)[0]


def _ring_fwd(q, k, v, valid, lay: _Layout):
  x, g = _specs(lay)
  # check_vma=False: the online-softmax carries start replicated and become per-device.
  return jax.shard_map(functools.partial(_local_forward, lay=lay), in_specs=(x,) * 4,
                       out_specs=(x, (x,) * 4 + (g, g)), check_vma=False)(q, k, v, valid)


def _ring_bwd(lay: _Layout, res, d_out):
  x, g = _specs(lay)
  grads = jax.shard_map(functools.partial(_local_backward, lay=lay),
                        in_specs=(x,) * 4 + (g, g, x), out_specs=(x,) * 3,
                        check_vma=False)(*res, d_out)
  return (*grads, jnp.zeros_like(res[3]))


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_attention(q, k, v, *, causal: bool = False, key_mask=None, block_k: int = 512,
                   window: int | None = None, axis: str = 'seq'):
  """Exact attention with the sequence split over mesh axis `axis` of the ambient mesh.

  q [B, T, H, D], k, v [B, S, G, D] -> [B, T, H, D]. T and S need not divide the axis size:
  both are zero-padded (padded keys masked, padded queries dropped).
  """
  mesh = jax.sharding.get_abstract_mesh()
  n = 1 if mesh.empty else dict(mesh.shape).get(axis, 1)
  if n == 1:
    return blockwise.blockwise_attention(q, k, v, causal=causal, key_mask=key_mask,
                                         block_k=block_k, window=window)
  (B, T), S = q.shape[:2], k.shape[1]
  data = dict(mesh.shape).get('data', 1)
  valid = (jnp.ones((B, S)) if key_mask is None else key_mask).astype(jnp.float32)
  # Local lengths are multiples of n so that striping is one all-to-all.
  Tl, Sl = (_round_up(-(-L // n), n) for L in (T, S))
  pad = lambda x, L: jnp.pad(x, [(0, 0), (0, n * L - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
  lay = _Layout(axis, n, 'data' if data > 1 and B % data == 0 else None, min(block_k, Sl),
                causal, window)
  return _ring(pad(q, Tl), pad(k, Sl), pad(v, Sl), pad(valid, Sl), lay)[:, :T]


@base.register('ring', capabilities=base.Capabilities(
    causal=True, cross=True, key_mask=True, exact=True, cost='N^2'))
class Ring(base.Attention):
  """Ring attention: sequence split over the mesh axis `seq`, K/V blocks passed around the ring."""

  @dataclasses.dataclass(frozen=True)
  class Options:
    block_k: int = 512  # key block within each visiting shard
    window: int | None = None  # |i - j| <= window (None: unlimited)
    axis: str = 'seq'

    def __post_init__(self):
      base.check(isinstance(self.block_k, int) and self.block_k > 0, 'ring.block_k',
                 self.block_k, 'must be a positive int')
      base.check(self.window is None or (isinstance(self.window, int) and self.window >= 0),
                 'ring.window', self.window, 'must be None or an int >= 0')

  def forward(self, q, k, v, *, causal, key_mask):
    o = self.options
    return ring_attention(q, k, v, causal=causal, key_mask=key_mask, block_k=o.block_k,
                          window=o.window, axis=o.axis)

  def matrix(self, q, k, v, *, causal, key_mask):
    s = dense.scores(q, k)
    mask = base.mask_bias(q.shape[1], k.shape[1], causal=causal, key_mask=key_mask,
                          window=self.options.window)
    A = base.masked_softmax(s, mask)
    return einops.rearrange(A, 'b g r t s -> b (g r) t s')
