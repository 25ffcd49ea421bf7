"""FlashAttention as Pallas kernels, one per backend (Dao et al. 2022, "FlashAttention: Fast and
Memory-Efficient Exact Attention with IO-Awareness"; the backward split follows FlashAttention-2,
Dao 2023).

Exact softmax attention that never materializes the [T, S] score matrix in device memory. The
math is written once (`_mask`, `_softmax_step`, `_finalize`, `_recompute`) and used by every
kernel; the kernels differ only in how key tiles reach the chip:

- `triton` (and `interpret`, the generic Pallas interpreter, which runs the same kernels): grid
  (batch, query head, query block); K/V stay in global memory (`pl.ANY`) and each loop step loads
  one [block_k, D] tile of K and of V. Backward: a dK/dV kernel with grid (batch, K/V head, key
  block) looping over the group's query heads and the query blocks that see its keys, and a dQ
  kernel looping over key blocks; explicit Triton `num_warps` / `num_stages`.
- `mosaic_tpu`: the key loop is a grid axis ("arbitrary" semantics); running max, sum and the
  accumulator live in VMEM scratch, initialised and finalised with `pl.when`. Index maps clamp
  the key (query) block into the causal / window band, so blocks outside it are neither fetched
  (the block index repeats, the pipeline skips the copy) nor computed. Same for dQ and dK/dV.
- `mosaic_gpu` (forward only): grid (batch, query head, query block of 64 rows, one warpgroup);
  the query tile arrives in SMEM through the grid pipeline, K/V tiles are double-buffered from
  global memory with TMA copies (`copy_gmem_to_smem` + barriers) inside a loop bounded by the
  band, both matmuls are `wgmma` with float32 accumulators. Not FlashAttention-3: no warp
  specialisation, no producer/consumer warpgroups, no intra-warpgroup overlap of softmax and
  wgmma. bf16 / fp16 only (16-bit wgmma operands); a backward pass is refused up front
  (`backend='auto'` on Hopper runs the forward with it and differentiates with Triton).

All kernels: GQA through index maps / indexing (query head h reads K/V head h // R, K/V never
repeated); arbitrary T and S padded to the block size with the tail masked (a key-validity row
doubles as `key_mask`); D padded to a power of two (>= 16; >= 64 on Mosaic GPU); causal and
sliding-window block skipping from `key_block_range` / `query_block_range`; softmax and
accumulation in float32; rows with no visible key give zeros and zero gradients. The logsumexp
`m + log l` is saved for the backward, which recomputes the probabilities from it and
`delta = rowsum(dO * O)` (plain JAX).

Cost: O(T·S·D) time (O(T·window·D) with a window); O((T + S)·D) device memory. A program holds
one query tile, at most two K and two V tiles and its float32 state (`onchip_bytes`), whatever T
and S. Under a mesh (`mesh=` or an ambient `jax.set_mesh`) the kernel runs per shard through
`shard_map` over the batch axis (XLA does not partition a pallas_call).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton
from jax.sharding import PartitionSpec as P

# Finite "minus infinity" for masked logits: a fully masked row stays finite (never NaN).
NEG_INF = -1e30
MIN_BLOCK = 16  # Triton's dot needs every tile dim >= 16
BACKENDS = ('auto', 'mosaic_gpu', 'triton', 'mosaic_tpu', 'interpret')
MGPU_BLOCK_Q = 64  # one warpgroup's wgmma tile height
MGPU_MIN = 64  # Mosaic GPU tiles: multiples of 64 (128-byte swizzle of 16-bit rows)
# On-chip memory one program may use: H100 SMEM per block (227 KiB) and TPU scoped-VMEM defaults.
SMEM_BYTES = {'H100': 227 * 1024}
VMEM_BYTES = {'TPU v5e': 16 * 2**20, 'TPU v5p': 32 * 2**20, 'TPU v6e': 32 * 2**20}


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static (hashable) settings shared by the kernels."""
  backend: str  # resolved: 'mosaic_gpu', 'triton', 'mosaic_tpu' or 'interpret'
  grad_backend: str  # the backend that runs the forward and backward when differentiated
  interpret: bool  # run `backend` in its own interpret mode
  causal: bool
  window: int  # 0 = none; else query i sees keys with |i - j| <= window (and j <= i if causal)
  block_q: int
  block_k: int
  scale: float
  num_warps: int  # Triton only
  num_stages: int  # Triton only
  poison: bool  # testing: alias each output to a NaN buffer, so unwritten elements show


def _is_pow2(n: int) -> bool:
  return n > 0 and n & (n - 1) == 0


def block_size(block: int, length: int) -> int:
  """The block used for `length`: `block`, shrunk for short inputs (a power of two >= 16)."""
  return min(block, max(MIN_BLOCK, pl.next_power_of_2(length)))


def key_block_range(q_block, *, block_q: int, block_k: int, num_k_blocks: int, causal: bool,
                    window: int):
  """Key blocks [lo, hi) that query block `q_block` can see (the forward and dQ loop bounds).

  Works on Python ints and on traced int32 (`pl.program_id`). Keys left of `first_query - window`
  and right of `last_query` (causal) or `last_query + window` are outside the band.
  """
  first_q = q_block * block_q
  last_q = first_q + block_q - 1
  lo_key = jnp.maximum(first_q - window, 0) if window else 0
  if causal:
    hi_key = last_q + 1
  elif window:
    hi_key = last_q + window + 1
  else:
    hi_key = num_k_blocks * block_k
  lo = lax.div(jnp.asarray(lo_key, jnp.int32), jnp.int32(block_k))
  hi = jnp.minimum(lax.div(jnp.asarray(hi_key + block_k - 1, jnp.int32), jnp.int32(block_k)),
                   num_k_blocks)
  return lo, jnp.maximum(hi, lo)


def query_block_range(k_block, *, block_q: int, block_k: int, num_q_blocks: int, causal: bool,
                      window: int):
  """Query blocks [lo, hi) that see any key of key block `k_block` (the dK/dV loop bounds)."""
  first_k = k_block * block_k
  last_k = first_k + block_k - 1
  if causal:
    lo_q = first_k
  elif window:
    lo_q = jnp.maximum(first_k - window, 0)
  else:
    lo_q = 0
  hi_q = last_k + window + 1 if window else num_q_blocks * block_q
  lo = jnp.minimum(lax.div(jnp.asarray(lo_q, jnp.int32), jnp.int32(block_q)), num_q_blocks)
  hi = jnp.minimum(lax.div(jnp.asarray(hi_q + block_q - 1, jnp.int32), jnp.int32(block_q)),
                   num_q_blocks)
  return lo, jnp.maximum(hi, lo)


def _clamp(idx, lo, hi, n: int):
  """Block index `idx` clamped into [lo, hi) (and [0, n)): outside the band the previous block
  index repeats, so the TPU pipeline fetches nothing new."""
  return jnp.clip(jnp.clip(idx, lo, jnp.maximum(hi - 1, lo)), 0, n - 1)


# ---- shared math (every kernel) ---------------------------------------------------------------

def _mm(a, b, contract):
  """2-D matmul with float32 accumulation; `contract` = ((a_dim,), (b_dim,))."""
  return lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


_NT = ((1,), (1,))  # a @ b.T
_NN = ((1,), (0,))  # a @ b
_TN = ((0,), (0,))  # a.T @ b


def _rows(x, shape):
  """A per-row value ([bq] or [bq, 1]) broadcast to `shape` [bq, bk]."""
  return lax.broadcast_in_dim(x, shape, (0,)) if x.ndim == 1 else jnp.broadcast_to(x, shape)


def _mask(q_start, k_start, shape, cfg: _Config, *, valid=None, kv_len=None,
          iota=lax.broadcasted_iota):
  """Bool [bq, bk]: key valid (`valid` [1, bk] > 0, or position < kv_len), inside the band."""
  q_pos = q_start + iota(jnp.int32, shape, 0)
  k_pos = k_start + iota(jnp.int32, shape, 1)
  mask = k_pos < kv_len if valid is None else jnp.broadcast_to(valid > 0, shape)
  if cfg.causal:
    mask = mask & (k_pos <= q_pos)
  if cfg.window:
    mask = mask & (k_pos >= q_pos - cfg.window)
    if not cfg.causal:
      mask = mask & (k_pos <= q_pos + cfg.window)
  return mask


def _softmax_step(m, l, s, mask):
  """One key tile of the online softmax; m, l (running max and sum) are [bq] or [bq, 1].

  Returns the new m, l, the tile's probabilities p [bq, bk] (unnormalised) and the factor
  `corr` by which the accumulator must be rescaled before adding p @ v.
  """
  keep = m.ndim == 2
  s = jnp.where(mask, s, NEG_INF)
  m_new = jnp.maximum(m, s.max(axis=1, keepdims=keep))
  # where(): a row with nothing visible yet has m_new = NEG_INF and must not count exp(0).
  p = jnp.where(mask, jnp.exp(s - _rows(m_new, s.shape)), 0.0)
  corr = jnp.exp(m - m_new)
  return m_new, l * corr + p.sum(axis=1, keepdims=keep), p, corr


def _init_state(bq: int, dp: int, keepdims: bool = True):
  shape = (bq, 1) if keepdims else (bq,)
  return (jnp.full(shape, NEG_INF, jnp.float32), jnp.zeros(shape, jnp.float32),
          jnp.zeros((bq, dp), jnp.float32))


def _finalize(m, l, acc):
  """Output rows acc / l and logsumexp m + log l; rows that saw no key give zeros."""
  seen = l > 0
  l_safe = jnp.where(seen, l, 1.0)
  return (jnp.where(_rows(seen, acc.shape), acc / _rows(l_safe, acc.shape), 0.0),
          jnp.where(seen, m + jnp.log(l_safe), 0.0))


def _recompute(q, k, v, do, lse, delta, mask, scale):
  """Backward for one (query tile, key tile): probabilities p and score gradients ds [bq, bk]."""
  p = jnp.where(mask, jnp.exp(_mm(q, k, _NT) * scale - lse), 0.0)
  return p, p * (_mm(do, v, _NT) - delta)


# ---- Triton / generic interpret: key loop inside the program ----------------------------------

def _loop_fwd_kernel(q_ref, k_ref, v_ref, valid_ref, *refs, cfg: _Config, R: int):
  # q [bq, Dp]; k, v [B, G, Sp, Dp], valid [B, 1, Sp] in global memory -> o [bq, Dp], lse [bq, 1]
  o_ref, lse_ref = refs[-2:]  # any refs before them are the aliased poison buffers
  bq, bk = cfg.block_q, cfg.block_k
  b, h, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  g = h // R
  q = q_ref[...]
  lo, hi = key_block_range(i, block_q=bq, block_k=bk, num_k_blocks=k_ref.shape[2] // bk,
                           causal=cfg.causal, window=cfg.window)

  def body(j, carry):
    m, l, acc = carry
    keys = pl.ds(j * bk, bk)
    k, v = k_ref[b, g, keys, :], v_ref[b, g, keys, :]
    mask = _mask(i * bq, j * bk, (bq, bk), cfg, valid=valid_ref[b, :, keys])
    m, l, p, corr = _softmax_step(m, l, _mm(q, k, _NT) * cfg.scale, mask)
    return m, l, acc * corr + _mm(p.astype(v.dtype), v, _NN)

  o, lse = _finalize(*lax.fori_loop(lo, hi, body, _init_state(bq, q.shape[1])))
  o_ref[...] = o.astype(o_ref.dtype)
  lse_ref[...] = lse


def _loop_dq_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, *refs,
                    cfg: _Config, R: int):
  # q, do [bq, Dp]; lse, delta [bq, 1]; k, v, valid in global memory -> dq [bq, Dp]
  dq_ref = refs[-1]
  bq, bk = cfg.block_q, cfg.block_k
  b, h, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  g = h // R
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  lo, hi = key_block_range(i, block_q=bq, block_k=bk, num_k_blocks=k_ref.shape[2] // bk,
                           causal=cfg.causal, window=cfg.window)

  def body(j, dq):
    keys = pl.ds(j * bk, bk)
    k, v = k_ref[b, g, keys, :], v_ref[b, g, keys, :]
    mask = _mask(i * bq, j * bk, (bq, bk), cfg, valid=valid_ref[b, :, keys])
    _, ds = _recompute(q, k, v, do, lse, delta, mask, cfg.scale)
    return dq + _mm(ds.astype(k.dtype), k, _NN)

  dq = lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def _loop_dkdv_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, *refs,
                      cfg: _Config, R: int):
  # k, v [bk, Dp]; valid [1, bk]; q, do [B, H, Tp, Dp], lse, delta [B, H, Tp, 1] in global
  # memory -> dk, dv [bk, Dp]
  dk_ref, dv_ref = refs[-2:]
  bq, bk = cfg.block_q, cfg.block_k
  b, g, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  k, v, valid = k_ref[...], v_ref[...], valid_ref[...]
  lo, hi = query_block_range(j, block_q=bq, block_k=bk, num_q_blocks=q_ref.shape[2] // bq,
                             causal=cfg.causal, window=cfg.window)

  def head(r, carry):
    h = g * R + r

    def body(i, carry):
      dk, dv = carry
      rows = pl.ds(i * bq, bq)
      q, do = q_ref[b, h, rows, :], do_ref[b, h, rows, :]
      mask = _mask(i * bq, j * bk, (bq, bk), cfg, valid=valid)
      p, ds = _recompute(q, k, v, do, lse_ref[b, h, rows, :], delta_ref[b, h, rows, :], mask,
                         cfg.scale)
      return dk + _mm(ds.astype(q.dtype), q, _TN), dv + _mm(p.astype(do.dtype), do, _TN)
    return lax.fori_loop(lo, hi, body, carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, R, head, (zeros, zeros))
  dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# ---- Mosaic TPU: key blocks as an "arbitrary" grid axis, state in VMEM scratch ----------------

def _tpu_fwd_kernel(q_ref, k_ref, v_ref, valid_ref, *refs, cfg: _Config):
  # q [bq, Dp]; k, v [bk, Dp]; valid [1, bk] -> o [bq, Dp], lse [bq, 1]; scratch m, l, acc
  o_ref, lse_ref, m_sc, l_sc, acc_sc = refs[-5:]
  bq, bk = cfg.block_q, cfg.block_k
  i, j, nk = pl.program_id(2), pl.program_id(3), pl.num_programs(3)
  lo, hi = key_block_range(i, block_q=bq, block_k=bk, num_k_blocks=nk, causal=cfg.causal,
                           window=cfg.window)

  @pl.when(j == 0)
  def _():
    m_sc[...], l_sc[...], acc_sc[...] = _init_state(bq, acc_sc.shape[1])

  @pl.when((j >= lo) & (j < hi))
  def _():
    v = v_ref[...]
    mask = _mask(i * bq, j * bk, (bq, bk), cfg, valid=valid_ref[...])
    m, l, p, corr = _softmax_step(m_sc[...], l_sc[...], _mm(q_ref[...], k_ref[...], _NT) *
                                  cfg.scale, mask)
    acc_sc[...] = acc_sc[...] * corr + _mm(p.astype(v.dtype), v, _NN)
    m_sc[...], l_sc[...] = m, l

  @pl.when(j == nk - 1)
  def _():
    o, lse = _finalize(m_sc[...], l_sc[...], acc_sc[...])
    o_ref[...] = o.astype(o_ref.dtype)
    lse_ref[...] = lse


def _tpu_dq_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, *refs,
                   cfg: _Config):
  dq_ref, dq_sc = refs[-2:]
  bq, bk = cfg.block_q, cfg.block_k
  i, j, nk = pl.program_id(2), pl.program_id(3), pl.num_programs(3)
  lo, hi = key_block_range(i, block_q=bq, block_k=bk, num_k_blocks=nk, causal=cfg.causal,
                           window=cfg.window)

  @pl.when(j == 0)
  def _():
    dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

  @pl.when((j >= lo) & (j < hi))
  def _():
    k = k_ref[...]
    mask = _mask(i * bq, j * bk, (bq, bk), cfg, valid=valid_ref[...])
    _, ds = _recompute(q_ref[...], k, v_ref[...], do_ref[...], lse_ref[...], delta_ref[...],
                       mask, cfg.scale)
    dq_sc[...] += _mm(ds.astype(k.dtype), k, _NN)

  @pl.when(j == nk - 1)
  def _():
    dq_ref[...] = (dq_sc[...] * cfg.scale).astype(dq_ref.dtype)


def _tpu_dkdv_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, *refs,
                     cfg: _Config, num_q_blocks: int):
  # grid (B, G, key block j, t = r * nq + query block): q, do [bq, Dp] of head g*R + r
  dk_ref, dv_ref, dk_sc, dv_sc = refs[-4:]
  bq, bk = cfg.block_q, cfg.block_k
  j, t, nt = pl.program_id(2), pl.program_id(3), pl.num_programs(3)
  i = t % num_q_blocks
  lo, hi = query_block_range(j, block_q=bq, block_k=bk, num_q_blocks=num_q_blocks,
                             causal=cfg.causal, window=cfg.window)

  @pl.when(t == 0)
  def _():
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

  @pl.when((i >= lo) & (i < hi))
  def _():
    q, do = q_ref[...], do_ref[...]
    mask = _mask(i * bq, j * bk, (bq, bk), cfg, valid=valid_ref[...])
    p, ds = _recompute(q, k_ref[...], v_ref[...], do, lse_ref[...], delta_ref[...], mask,
                       cfg.scale)
    dk_sc[...] += _mm(ds.astype(q.dtype), q, _TN)
    dv_sc[...] += _mm(p.astype(do.dtype), do, _TN)

  @pl.when(t == nt - 1)
  def _():
    dk_ref[...] = (dk_sc[...] * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


# ---- Mosaic GPU (Hopper): TMA double-buffered K/V tiles, wgmma ---------------------------------

def _mgpu_fwd_kernel(q_ref, k_ref, v_ref, o_ref, *, cfg: _Config, kv_len: int, R: int):
  # q, o [bq, Dp] in SMEM (grid pipeline); k, v [B, G, Sp, Dp] in global memory
  bq, bk = cfg.block_q, cfg.block_k
  b, h, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  g = h // R
  Dp = q_ref.shape[-1]
  lo, hi = key_block_range(i, block_q=bq, block_k=bk, num_k_blocks=k_ref.shape[2] // bk,
                           causal=cfg.causal, window=cfg.window)
  iota = functools.partial(plgpu.broadcasted_iota, layout=plgpu.Layout.WGMMA)

  def scoped(k_smem, v_smem, k_bar, v_bar):  # [2, bk, Dp] tiles, one barrier per slot
    def fetch(j, slot):
      keys = pl.ds(j * bk, bk)
      plgpu.copy_gmem_to_smem(k_ref.at[b, g, keys], k_smem.at[slot], k_bar.at[slot])
      plgpu.copy_gmem_to_smem(v_ref.at[b, g, keys], v_smem.at[slot], v_bar.at[slot])

    @pl.when(lo < hi)
    def _():
      fetch(lo, 0)

    def body(j, carry):
      m, l, acc = carry
      slot = lax.rem(j - lo, 2)

      @pl.when(j + 1 < hi)  # the other slot was consumed by the previous step's wgmmas
      def _():
        fetch(j + 1, 1 - slot)

      plgpu.barrier_wait(k_bar.at[slot])

      def qk(acc_ref):
        plgpu.wgmma(acc_ref, q_ref, plgpu.transpose_ref(k_smem.at[slot], (1, 0)))
        return acc_ref[...]
      s = pl.run_scoped(qk, plgpu.ACC((bq, bk), jnp.float32)) * cfg.scale
      mask = _mask(i * bq, j * bk, (bq, bk), cfg, kv_len=kv_len, iota=iota)
      m, l, p, corr = _softmax_step(m, l, s, mask)
      acc = acc * _rows(corr, acc.shape)
      plgpu.barrier_wait(v_bar.at[slot])

      def pv(acc_ref):
        plgpu.wgmma(acc_ref, p.astype(o_ref.dtype), v_smem.at[slot])
      acc = pl.run_state(pv)(plgpu.ACC.init(acc))
      return m, l, acc

    m, l, acc = _init_state(bq, Dp, keepdims=False)
    m = plgpu.layout_cast(m, plgpu.Layout.WGMMA.reduce(1))
    l = plgpu.layout_cast(l, plgpu.Layout.WGMMA.reduce(1))
    acc = plgpu.layout_cast(acc, plgpu.Layout.WGMMA)
    o, _ = _finalize(*lax.fori_loop(lo, hi, body, (m, l, acc)))
    o_ref[...] = o.astype(o_ref.dtype)

  tile = plgpu.SMEM((2, bk, Dp), k_ref.dtype, transforms=_mgpu_transforms(k_ref.dtype))
  pl.run_scoped(scoped, tile, tile, plgpu.Barrier(num_barriers=2),
                plgpu.Barrier(num_barriers=2))


def _mgpu_transforms(dtype):
  swizzle = 128  # bytes: one row of 64 16-bit elements
  return (plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)),
          plgpu.SwizzleTransform(swizzle))


# ---- pallas_calls -----------------------------------------------------------------------------

def _interpret_mode(cfg: _Config):
  """What pallas_call's `interpret` gets: the backend's own interpreter where JAX has one."""
  if not cfg.interpret:
    return False
  if cfg.backend == 'mosaic_tpu':
    return pltpu.InterpretParams()
  return True


def _compiler_params(cfg: _Config, grid_rank: int):
  if cfg.backend == 'mosaic_tpu':
    return pltpu.CompilerParams(
        dimension_semantics=('parallel',) * (grid_rank - 1) + ('arbitrary',))
  if cfg.backend == 'triton':
    return pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
  if cfg.backend == 'mosaic_gpu':
    return plgpu.CompilerParams(dimension_semantics=('parallel',) * grid_rank)
  return None


def _call(kernel, name, cfg: _Config, grid, args, in_specs, out_shapes, out_specs, scratch=()):
  """pallas_call; with cfg.poison every output starts as an aliased NaN-filled buffer."""
  if cfg.poison:
    n = len(args)
    args = (*args, *(jnp.full(s.shape, jnp.nan, s.dtype) for s in out_shapes))
    in_specs = (*in_specs, *out_specs)
    aliases = {n + o: o for o in range(len(out_shapes))}
  else:
    aliases = {}
  return pl.pallas_call(
      functools.partial(kernel, cfg=cfg), out_shape=tuple(out_shapes), grid=grid,
      in_specs=tuple(in_specs), out_specs=tuple(out_specs), scratch_shapes=tuple(scratch),
      input_output_aliases=aliases, interpret=_interpret_mode(cfg),
      compiler_params=_compiler_params(cfg, len(grid)), name=name)(*args)


_ANY = pl.BlockSpec(memory_space=pl.ANY)


def _row_specs(bq: int, Dp: int, index):
  """BlockSpecs of a [bq, Dp] tile and of its [bq, 1] per-row values at the same index."""
  return (pl.BlockSpec((None, None, bq, Dp), index), pl.BlockSpec((None, None, bq, 1), index))


def _tpu_query_grid_specs(cfg: _Config, R: int, Dp: int, nk: int):
  """Mosaic TPU specs on grid (b, h, query block i, key block j), forward and dQ: the query-side
  [bq, Dp] and [bq, 1] blocks, the K/V block and the key-validity block, with the key block
  clamped into the band of query block i (outside it the block index repeats: no new DMA)."""
  bq, bk = cfg.block_q, cfg.block_k

  def key_block(i, j):
    lo, hi = key_block_range(i, block_q=bq, block_k=bk, num_k_blocks=nk, causal=cfg.causal,
                             window=cfg.window)
    return _clamp(j, lo, hi, nk)
  rows, row1 = _row_specs(bq, Dp, lambda b, h, i, j: (b, h, i, 0))
  kv = pl.BlockSpec((None, None, bk, Dp), lambda b, h, i, j: (b, h // R, key_block(i, j), 0))
  valid = pl.BlockSpec((None, 1, bk), lambda b, h, i, j: (b, 0, key_block(i, j)))
  return rows, row1, kv, valid


def _forward(q, k, v, valid, cfg: _Config):
  """q [B, H, Tp, Dp], k, v [B, G, Sp, Dp], valid [B, 1, Sp] -> o like q, lse [B, H, Tp, 1]."""
  B, H, Tp, Dp = q.shape
  G, Sp = k.shape[1], k.shape[2]
  R, bq, bk = H // G, cfg.block_q, cfg.block_k
  out_shapes = [jax.ShapeDtypeStruct(q.shape, q.dtype),
                jax.ShapeDtypeStruct((B, H, Tp, 1), jnp.float32)]
  if cfg.backend == 'mosaic_tpu':
    rows, row1, kv, valid_spec = _tpu_query_grid_specs(cfg, R, Dp, Sp // bk)
    f32 = jnp.float32
    return _call(_tpu_fwd_kernel, 'flash_fwd', cfg, (B, H, Tp // bq, Sp // bk), (q, k, v, valid),
                 [rows, kv, kv, valid_spec], out_shapes, [rows, row1],
                 [pltpu.VMEM((bq, 1), f32), pltpu.VMEM((bq, 1), f32), pltpu.VMEM((bq, Dp), f32)])
  rows = _row_specs(bq, Dp, lambda b, h, i: (b, h, i, 0))
  return _call(functools.partial(_loop_fwd_kernel, R=R), 'flash_fwd', cfg, (B, H, Tp // bq),
               (q, k, v, valid),
               [rows[0], _ANY, _ANY, _ANY], out_shapes, rows)


def _mgpu_forward(q, k, v, cfg: _Config, kv_len: int):
  """Mosaic GPU forward (no logsumexp: it serves inference only)."""
  B, H, Tp, Dp = q.shape
  gmem = pl.BlockSpec(memory_space=plgpu.GMEM)
  tile = plgpu.BlockSpec((None, None, cfg.block_q, Dp), lambda b, h, i: (b, h, i, 0),
                         transforms=_mgpu_transforms(q.dtype))
  return pl.pallas_call(
      functools.partial(_mgpu_fwd_kernel, cfg=cfg, kv_len=kv_len, R=H // k.shape[1]),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), grid=(B, H, Tp // cfg.block_q),
      in_specs=(tile, gmem, gmem), out_specs=tile, interpret=_interpret_mode(cfg),
      compiler_params=_compiler_params(cfg, 3), name='flash_fwd_mgpu')(q, k, v)


def _backward(q, k, v, valid, o, lse, do, cfg: _Config):
  B, H, Tp, Dp = q.shape
  G, Sp = k.shape[1], k.shape[2]
  R, bq, bk = H // G, cfg.block_q, cfg.block_k
  nq, nk = Tp // bq, Sp // bk
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
  args = (q, k, v, valid, do, lse, delta)
  dq_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
  dkdv_shapes = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
  f32 = jnp.float32

  if cfg.backend == 'mosaic_tpu':
    rows, row1, kv, valid_spec = _tpu_query_grid_specs(cfg, R, Dp, nk)
    (dq,) = _call(_tpu_dq_kernel, 'flash_dq', cfg, (B, H, nq, nk), args,
                  [rows, kv, kv, valid_spec, rows, row1, row1], dq_shape, [rows],
                  [pltpu.VMEM((bq, Dp), f32)])

    # grid (b, g, key block j, t): t walks the group's R heads times nq query blocks.
    def q_index(b, g, j, t):
      lo, hi = query_block_range(j, block_q=bq, block_k=bk, num_q_blocks=nq,
                                 causal=cfg.causal, window=cfg.window)
      return b, g * R + t // nq, _clamp(t % nq, lo, hi, nq), 0
    qs, q1 = _row_specs(bq, Dp, q_index)
    kv_block = pl.BlockSpec((None, None, bk, Dp), lambda b, g, j, t: (b, g, j, 0))
    dk, dv = _call(
        functools.partial(_tpu_dkdv_kernel, num_q_blocks=nq), 'flash_dkdv', cfg,
        (B, G, nk, R * nq), args,
        [qs, kv_block, kv_block, pl.BlockSpec((None, 1, bk), lambda b, g, j, t: (b, 0, j)),
         qs, q1, q1], dkdv_shapes, [kv_block, kv_block],
        [pltpu.VMEM((bk, Dp), f32), pltpu.VMEM((bk, Dp), f32)])
    return dq, dk, dv

  rows, row1 = _row_specs(bq, Dp, lambda b, h, i: (b, h, i, 0))
  (dq,) = _call(functools.partial(_loop_dq_kernel, R=R), 'flash_dq', cfg, (B, H, nq), args,
                [rows, _ANY, _ANY, _ANY, rows, row1, row1], dq_shape, [rows])
  kv_block = pl.BlockSpec((None, None, bk, Dp), lambda b, g, j: (b, g, j, 0))
  dk, dv = _call(
      functools.partial(_loop_dkdv_kernel, R=R), 'flash_dkdv', cfg, (B, G, nk), args,
      [_ANY, kv_block, kv_block, pl.BlockSpec((None, 1, bk), lambda b, g, j: (b, 0, j)),
       _ANY, _ANY, _ANY], dkdv_shapes, [kv_block, kv_block])
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q, k, v, valid, cfg, kv_len):
  if cfg.backend == 'mosaic_gpu':
    return _mgpu_forward(q, k, v, cfg, kv_len)
  return _forward(q, k, v, valid, cfg)[0]


def _flash_fwd(q, k, v, valid, cfg, kv_len):
  if cfg.grad_backend == 'mosaic_gpu':
    raise ValueError("flash.backend='mosaic_gpu': no backward kernel for Mosaic GPU; use "
                     "backend='triton' (or 'auto', which differentiates with Triton)")
  cfg = dataclasses.replace(cfg, backend=cfg.grad_backend)
  o, lse = _forward(q, k, v, valid, cfg)
  return o, (q, k, v, valid, o, lse)


def _flash_bwd(cfg, kv_len, res, do):
  q, k, v, valid, o, lse = res
  cfg = dataclasses.replace(cfg, backend=cfg.grad_backend)
  dq, dk, dv = _backward(q, k, v, valid, o, lse, do, cfg)
  return dq, dk, dv, jnp.zeros_like(valid)


_flash.defvjp(_flash_fwd, _flash_bwd)


# ---- backend choice, checks, on-chip memory ---------------------------------------------------

def resolve_interpret(interpret: bool | str | None) -> bool:
  """None / 'auto': interpret only on CPU (the one way Pallas runs there); else a bool or
  'true' / 'false'."""
  if interpret is None or interpret == 'auto':
    return jax.default_backend() == 'cpu'
  if isinstance(interpret, str):
    if interpret not in ('true', 'false'):
      raise ValueError(f"interpret={interpret!r}: expected 'auto', 'true' or 'false'")
    return interpret == 'true'
  return bool(interpret)


def resolve_backend(backend: str) -> str:
  """'auto': Mosaic TPU on TPU; on GPU Mosaic GPU from Hopper (sm90) on, else Triton; on CPU
  the generic interpreter. Other names are returned as they are (after a check).
  (`flash_attention` then gives Triton what the Mosaic GPU kernel does not take: float32,
  key_mask, and gradients.)"""
  if backend not in BACKENDS:
    raise ValueError(f'flash.backend={backend!r}: expected one of {", ".join(BACKENDS)}')
  if backend != 'auto':
    return backend
  platform = jax.default_backend()
  if platform == 'tpu':
    return 'mosaic_tpu'
  if platform == 'gpu':
    capability = getattr(jax.devices()[0], 'compute_capability', '0')
    return 'mosaic_gpu' if float(capability) >= 9.0 else 'triton'
  return 'interpret'


def _tpu_tile_bytes(shape, dtype) -> int:
  """VMEM bytes of a block: last dim padded to 128 lanes, the one before to 8 sublanes of
  32 bits (16 rows for 16-bit dtypes)."""
  itemsize = jnp.dtype(dtype).itemsize
  *lead, rows, lanes = (1, *shape) if len(shape) == 1 else shape
  rows = -(-rows // (8 * 4 // itemsize)) * (8 * 4 // itemsize)
  return math.prod(lead) * rows * (-(-lanes // 128) * 128) * itemsize


def onchip_bytes(backend: str, *, head_dim: int, dtype, block_q: int = 128, block_k: int = 128,
                 num_stages: int = 2, backward: bool = True) -> int:
  """On-chip memory (bytes) one program of the largest kernel uses, from its block shapes.

  mosaic_tpu: VMEM = every in/out block twice (the pipeline double-buffers) + scratch, tiles
  padded to (8 sublanes, 128 lanes). mosaic_gpu: SMEM = query and output tiles + two K and two
  V tiles + barriers. triton: SMEM = the q tile and `num_stages` copies of the K and V tiles
  its software pipeline keeps in flight (scores and float32 accumulators live in registers:
  (bq·bk + bq·D) floats over num_warps·32 threads). None depends on T or S: K/V are tiled.
  """
  Dp = _padded_dim(backend, head_dim)
  bq, bk, it = block_q, block_k, jnp.dtype(dtype).itemsize
  if backend == 'mosaic_gpu':
    return 2 * bq * Dp * it + 2 * 2 * bk * Dp * it + 2 * 2 * 8
  if backend == 'mosaic_tpu':
    t, f32 = _tpu_tile_bytes, jnp.float32
    fwd = (2 * (2 * t((bq, Dp), dtype) + 2 * t((bk, Dp), dtype) + t((1, bk), f32)
                + t((bq, 1), f32)) + 2 * t((bq, 1), f32) + t((bq, Dp), f32))
    dq = (2 * (3 * t((bq, Dp), dtype) + 2 * t((bk, Dp), dtype) + t((1, bk), f32)
               + 2 * t((bq, 1), f32)) + t((bq, Dp), f32))
    dkdv = (2 * (2 * t((bq, Dp), dtype) + 4 * t((bk, Dp), dtype) + t((1, bk), f32)
                 + 2 * t((bq, 1), f32)) + 2 * t((bk, Dp), f32))
    return max(fwd, dq, dkdv) if backward else fwd
  smem = bq * Dp * it + num_stages * 2 * bk * Dp * it  # q; K, V tiles in flight
  if backward:  # dK/dV: q, dO tiles in flight, k, v held
    smem = max(smem, num_stages * 2 * bq * Dp * it + 2 * bk * Dp * it)
  return smem


def plan_blocks(backend: str, *, T: int, S: int, D: int, dtype, block_q: int = 128,
                block_k: int = 128) -> tuple[int, int]:
  """The (block_q, block_k) a backend runs: shrunk for short inputs; on Mosaic GPU query tiles
  of 64 rows and K/V tiles (>= 64 rows) halved until the program fits SMEM; on Triton tiles
  halved until the software-pipelined loads fit SMEM (D = 256: 64 x 64)."""
  bq, bk = block_size(block_q, T), block_size(block_k, S)
  fits = lambda bq, bk: onchip_bytes(backend, head_dim=D, dtype=dtype, block_q=bq, block_k=bk,
                                     backward=backend != 'mosaic_gpu') <= SMEM_BYTES['H100']
  if backend == 'mosaic_gpu':
    bq, bk = MGPU_BLOCK_Q, max(MGPU_MIN, bk)
    while bk > MGPU_MIN and not fits(bq, bk):
      bk //= 2
  elif backend == 'triton':
    while max(bq, bk) > 32 and not fits(bq, bk):  # halve the larger tile, keys first
      bq, bk = (bq, bk // 2) if bk >= bq else (bq // 2, bk)
  return bq, bk


def _padded_dim(backend: str, D: int) -> int:
  return max(MGPU_MIN if backend == 'mosaic_gpu' else MIN_BLOCK, pl.next_power_of_2(D))


def _check(backend: str, interpret: bool, dtype, D: int, block_q: int, block_k: int,
           T: int, S: int):
  """Up-front refusals, naming the backend and the reason."""
  if backend == 'mosaic_gpu':
    if interpret:
      raise ValueError("flash.backend='mosaic_gpu': no interpret mode (JAX's Mosaic GPU "
                       'interpreter takes neither blocked BlockSpecs nor dynamic ref slices, '
                       'which the key loop needs); run it on a Hopper GPU or lower it')
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
      raise ValueError(f"flash.backend='mosaic_gpu': dtype {jnp.dtype(dtype).name} not "
                       'supported (wgmma here takes bfloat16 / float16 operands)')
    if block_k % MGPU_MIN:
      raise ValueError(f"flash.backend='mosaic_gpu': block_k={block_k} must be a multiple of "
                       f'{MGPU_MIN} (128-byte swizzled tiles)')
    if _padded_dim(backend, D) > 256:
      raise ValueError(f"flash.backend='mosaic_gpu': head_dim {D} > 256 does not fit SMEM")
  if backend == 'mosaic_tpu' and not interpret:
    for field, b, n in (('block_q', block_q, T), ('block_k', block_k, S)):
      # Mosaic tiles are (8, 128); a block smaller than its array must align to them.
      need = 8 if field == 'block_q' else 128
      if b % need and b < n:
        raise ValueError(f"flash.backend='mosaic_tpu': {field}={b} must be a multiple of "
                         f'{need} when shorter than the sequence ({n})')


def _pad_heads_first(x, length: int, dim: int):
  """[B, L, N, D] -> [B, N, length, dim], zero padded."""
  x = jnp.swapaxes(x, 1, 2)
  return jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, dim - x.shape[3])))


def flash_attention(q, k, v, *, causal: bool = False, key_mask=None, window: int = 0,
                    block_q: int = 128, block_k: int = 128, backend: str = 'auto',
                    interpret: bool | str | None = None, num_warps: int | None = None,
                    num_stages: int = 2, mesh=None, batch_axis: str = 'data',
                    poison_outputs: bool = False):
  """Exact softmax attention by the Pallas flash kernels.

  Args:
    q: [B, T, H, D] queries; k, v: [B, S, G, D] keys and values, H % G == 0 (GQA by index maps).
      float32, bfloat16 or float16; softmax and accumulation are float32.
    causal: query i sees keys j <= i (top-left aligned).
    key_mask: optional bool [B, S], True = may attend (any pattern, not only lengths).
    window: 0 = no window; else query i sees keys j with |i - j| <= window (with causal:
      i - window <= j <= i), as `jax.nn.dot_product_attention(local_window_size=window)`.
    block_q, block_k: tile sizes, powers of two >= 16 (shrunk for short inputs). Mosaic GPU
      uses query tiles of 64 rows and shrinks block_k (>= 64) until its tiles fit SMEM.
    backend: 'auto' (by platform, see `resolve_backend`), 'mosaic_gpu', 'triton', 'mosaic_tpu'
      or 'interpret' (the generic Pallas interpreter).
    interpret: None / 'auto' (interpret on CPU only), True / 'true', False / 'false'; True runs
      the backend in its own interpret mode (TPU: `pltpu.InterpretParams`, Triton: the generic
      one; Mosaic GPU has none that runs this kernel and refuses).
    num_warps, num_stages: Triton compiler parameters (num_warps default: 4 for D <= 64,
      else 8, so the float32 accumulator stays in registers).
    mesh: run per shard with `shard_map` over `batch_axis` of this mesh (default: the ambient
      mesh of `jax.set_mesh`, if it has that axis).
    poison_outputs: testing only; every kernel output starts as a NaN-filled aliased buffer.

  Returns:
    [B, T, H, D] in q's dtype. Rows with no visible key are zeros.
  """
  B, T, H, D = q.shape
  S, G = k.shape[1], k.shape[2]
  if H % G or v.shape[2] != G:
    raise ValueError(f'flash: query heads {H} must be a multiple of the K/V heads {G} '
                     f'(k {k.shape}, v {v.shape})')
  for field, b in (('block_q', block_q), ('block_k', block_k)):
    if not (_is_pow2(b) and b >= MIN_BLOCK):
      raise ValueError(f'flash.{field}={b!r}: must be a power of two >= {MIN_BLOCK}')
  if window < 0:
    raise ValueError(f'flash.window={window!r}: must be >= 0 (0 = no window)')
  name = resolve_backend(backend)
  interpret = resolve_interpret(interpret) or name == 'interpret'
  if backend == 'auto' and name == 'mosaic_gpu' and (
      key_mask is not None or poison_outputs or q.dtype == jnp.float32):
    name = 'triton'  # what the Mosaic GPU kernel does not take, 'auto' gives to Triton
  # 'auto' on Hopper: Mosaic GPU forward, Triton when differentiated.
  grad_backend = 'triton' if backend == 'auto' and name == 'mosaic_gpu' else name
  bq, bk = plan_blocks(name, T=T, S=S, D=D, dtype=q.dtype, block_q=block_q, block_k=block_k)
  _check(name, interpret, q.dtype, D, bq, bk, T, S)
  if name == 'mosaic_gpu' and key_mask is not None:
    raise ValueError("flash.backend='mosaic_gpu': key_mask not supported (the kernel masks "
                     "only padding and the band); use backend='triton'")
  cfg = _Config(backend=name, grad_backend=grad_backend, interpret=interpret, causal=causal,
                window=window, block_q=bq, block_k=bk, scale=1.0 / math.sqrt(D),
                num_warps=num_warps or (4 if D <= 64 else 8), num_stages=num_stages,
                poison=poison_outputs)
  mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
  # Inside a shard_map over the batch axis (manual axis) the call is per shard already.
  sharded = (mesh is not None and not mesh.empty and batch_axis in mesh.axis_names
             and batch_axis not in getattr(mesh, 'manual_axes', ()))
  fn = functools.partial(_run, cfg=cfg, Dp=_padded_dim(name, D))
  if not sharded:
    return fn(q, k, v, key_mask)
  args = (q, k, v) if key_mask is None else (q, k, v, key_mask)
  return jax.shard_map(lambda *a: fn(*a) if len(a) == 4 else fn(*a, None), mesh=mesh,
                       in_specs=(P(batch_axis),) * len(args), out_specs=P(batch_axis),
                       check_vma=False)(*args)


@functools.partial(jax.jit, static_argnames=('cfg', 'Dp'))
def _run(q, k, v, key_mask, *, cfg: _Config, Dp: int):
  B, T, H, D = q.shape
  S = k.shape[1]
  k, v = k.astype(q.dtype), v.astype(q.dtype)  # the kernels' dots take one operand dtype
  Tp, Sp = pl.cdiv(T, cfg.block_q) * cfg.block_q, pl.cdiv(S, cfg.block_k) * cfg.block_k
  valid = jnp.ones((B, S), jnp.float32) if key_mask is None else key_mask.astype(jnp.float32)
  valid = jnp.pad(valid, ((0, 0), (0, Sp - S)))[:, None, :]  # padded keys are invalid
  out = _flash(_pad_heads_first(q, Tp, Dp), _pad_heads_first(k, Sp, Dp),
               _pad_heads_first(v, Sp, Dp), valid, cfg, S)  # [B, H, Tp, Dp]
  return jnp.swapaxes(out[:, :, :T, :D], 1, 2)
