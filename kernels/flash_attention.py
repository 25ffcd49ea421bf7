"""FlashAttention as a Pallas kernel (Dao et al. 2022, "FlashAttention: Fast and Memory-Efficient
Exact Attention with IO-Awareness"; the backward split follows FlashAttention-2, Dao 2023).

Exact softmax attention that never materializes the [T, S] score matrix in device memory:
- forward: grid (batch, query head, query block); each program keeps its query tile, loops over
  the key blocks it can see with an online softmax in float32 (running max `m`, running sum `l`,
  unnormalized accumulator), normalizes at the end and saves the logsumexp `m + log l`;
- backward (`jax.custom_vjp`): a dK/dV kernel with grid (batch, K/V head, key block) that loops
  over the query heads of its group and the query blocks that see its keys, and a dQ kernel with
  grid (batch, query head, query block) that loops over key blocks; both recompute the
  probabilities from the saved logsumexp and `delta = rowsum(dO * O)` (plain JAX).

Layout inside the kernels is [B, heads, length, D]: the block's last two dims are then
(rows, D), which both Triton (GPU) and Mosaic (TPU) lower. GQA goes through the index maps
(query head h reads K/V head h // R); K/V are never repeated. Arbitrary T and S are padded to
the block size and the tail is masked (a key-validity row doubles as `key_mask`); D is padded to
a power of two >= 16 (zeros change neither q.k nor the output). With `causal` and/or `window`
the key loop's bounds come from the block index (`key_block_range`), so blocks outside the band
are skipped, not only masked. Rows with no visible key give zeros and zero gradients.

Cost: O(T·S·D) time; O((T + S)·D) device memory (plus one [T] logsumexp per head). Each forward
program holds its head's whole K/V ([S, D]) as one block and slices key tiles from it.
On CPU the kernels run with `interpret=True` (the default there).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl

# Finite "minus infinity" for masked logits: a fully masked row stays finite (never NaN).
NEG_INF = -1e30
MIN_BLOCK = 16  # Triton's dot needs every tile dim >= 16


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static (hashable) settings shared by the three kernels."""
  causal: bool
  window: int  # 0 = none; else query i sees keys with |i - j| <= window (and j <= i if causal)
  block_q: int
  block_k: int
  scale: float
  interpret: bool
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


# ---- in-kernel helpers ------------------------------------------------------------------------

def _mm(a, b, contract):
  """2-D matmul with float32 accumulation; `contract` = ((a_dim,), (b_dim,))."""
  return lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


_NT = ((1,), (1,))  # a @ b.T
_NN = ((1,), (0,))  # a @ b
_TN = ((0,), (0,))  # a.T @ b


def _mask(q_start, k_start, valid, shape, cfg: _Config):
  """Bool [bq, bk]: key valid (mask / not padding), and inside the causal / window band."""
  q_pos = q_start + lax.broadcasted_iota(jnp.int32, shape, 0)
  k_pos = k_start + lax.broadcasted_iota(jnp.int32, shape, 1)
  mask = jnp.broadcast_to(valid > 0, shape)  # valid [1, bk]
  if cfg.causal:
    mask = mask & (k_pos <= q_pos)
  if cfg.window:
    mask = mask & (k_pos >= q_pos - cfg.window)
    if not cfg.causal:
      mask = mask & (k_pos <= q_pos + cfg.window)
  return mask


def _fwd_kernel(q_ref, k_ref, v_ref, valid_ref, *refs, cfg: _Config):
  # q [bq, Dp]; k, v [Sp, Dp] (this head's whole K/V); valid [1, Sp]; -> o [bq, Dp], lse [bq, 1]
  o_ref, lse_ref = refs[-2:]  # any refs before them are the aliased poison buffers
  bq, bk = cfg.block_q, cfg.block_k
  i = pl.program_id(2)
  q = q_ref[...]
  lo, hi = key_block_range(i, block_q=bq, block_k=bk, num_k_blocks=k_ref.shape[0] // bk,
                           causal=cfg.causal, window=cfg.window)

  def body(j, carry):
    m, l, acc = carry  # [bq], [bq], [bq, Dp] float32
    keys = pl.ds(j * bk, bk)
    k, v = k_ref[keys, :], v_ref[keys, :]
    mask = _mask(i * bq, j * bk, valid_ref[:, keys], (bq, bk), cfg)
    s = jnp.where(mask, _mm(q, k, _NT) * cfg.scale, NEG_INF)  # [bq, bk]
    m_new = jnp.maximum(m, s.max(axis=1))
    # where(): a row with nothing visible yet has m_new = NEG_INF and must not count exp(0).
    p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
    corr = jnp.exp(m - m_new)
    l = l * corr + p.sum(axis=1)
    acc = acc * corr[:, None] + _mm(p.astype(v.dtype), v, _NN)
    return m_new, l, acc

  init = (jnp.full((bq,), NEG_INF, jnp.float32), jnp.zeros((bq,), jnp.float32),
          jnp.zeros(q.shape, jnp.float32))
  m, l, acc = lax.fori_loop(lo, hi, body, init)
  seen = l > 0  # rows with at least one visible key; the others give zeros
  l_safe = jnp.where(seen, l, 1.0)
  o_ref[...] = jnp.where(seen[:, None], acc / l_safe[:, None], 0.0).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m + jnp.log(l_safe), 0.0)[:, None]


def _dq_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, *refs, cfg: _Config):
  # q, do [bq, Dp]; k, v [Sp, Dp]; valid [1, Sp]; lse, delta [bq, 1] -> dq [bq, Dp]
  dq_ref = refs[-1]
  bq, bk = cfg.block_q, cfg.block_k
  i = pl.program_id(2)
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  lo, hi = key_block_range(i, block_q=bq, block_k=bk, num_k_blocks=k_ref.shape[0] // bk,
                           causal=cfg.causal, window=cfg.window)

  def body(j, dq):
    keys = pl.ds(j * bk, bk)
    k, v = k_ref[keys, :], v_ref[keys, :]
    mask = _mask(i * bq, j * bk, valid_ref[:, keys], (bq, bk), cfg)
    p = jnp.where(mask, jnp.exp(_mm(q, k, _NT) * cfg.scale - lse), 0.0)  # [bq, bk]
    ds = p * (_mm(do, v, _NT) - delta)
    return dq + _mm(ds.astype(k.dtype), k, _NN)

  dq = lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def _dkdv_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, *refs,
                 cfg: _Config):
  # q, do [R, Tp, Dp] (the group's query heads); k, v [bk, Dp]; valid [1, Sp];
  # lse, delta [R, Tp, 1] -> dk, dv [bk, Dp]
  dk_ref, dv_ref = refs[-2:]
  bq, bk = cfg.block_q, cfg.block_k
  j = pl.program_id(2)
  k, v = k_ref[...], v_ref[...]
  valid = valid_ref[:, pl.ds(j * bk, bk)]
  lo, hi = query_block_range(j, block_q=bq, block_k=bk, num_q_blocks=q_ref.shape[1] // bq,
                             causal=cfg.causal, window=cfg.window)

  def head(r, carry):
    def body(i, carry):
      dk, dv = carry
      rows = pl.ds(i * bq, bq)
      q, do = q_ref[r, rows, :], do_ref[r, rows, :]
      lse, delta = lse_ref[r, rows, :], delta_ref[r, rows, :]
      mask = _mask(i * bq, j * bk, valid, (bq, bk), cfg)
      p = jnp.where(mask, jnp.exp(_mm(q, k, _NT) * cfg.scale - lse), 0.0)  # [bq, bk]
      dv = dv + _mm(p.astype(do.dtype), do, _TN)
      ds = p * (_mm(do, v, _NT) - delta)
      dk = dk + _mm(ds.astype(q.dtype), q, _TN)
      return dk, dv
    return lax.fori_loop(lo, hi, body, carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, q_ref.shape[0], head, (zeros, zeros))
  dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# ---- pallas_calls -----------------------------------------------------------------------------

def _call(kernel, name, cfg: _Config, grid, args, in_specs, out_shapes, out_specs):
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
      in_specs=tuple(in_specs), out_specs=tuple(out_specs), input_output_aliases=aliases,
      interpret=cfg.interpret, name=name)(*args)


def _forward(q, k, v, valid, cfg: _Config):
  """q [B, H, Tp, Dp], k, v [B, G, Sp, Dp], valid [B, 1, Sp] -> o like q, lse [B, H, Tp, 1]."""
  B, H, Tp, Dp = q.shape
  G, Sp = k.shape[1], k.shape[2]
  R, bq = H // G, cfg.block_q
  kv_spec = pl.BlockSpec((None, None, Sp, Dp), lambda b, h, i: (b, h // R, 0, 0))
  o, lse = _call(
      _fwd_kernel, 'flash_fwd', cfg, (B, H, Tp // bq), (q, k, v, valid),
      [pl.BlockSpec((None, None, bq, Dp), lambda b, h, i: (b, h, i, 0)), kv_spec, kv_spec,
       pl.BlockSpec((None, 1, Sp), lambda b, h, i: (b, 0, 0))],
      [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((B, H, Tp, 1), jnp.float32)],
      [pl.BlockSpec((None, None, bq, Dp), lambda b, h, i: (b, h, i, 0)),
       pl.BlockSpec((None, None, bq, 1), lambda b, h, i: (b, h, i, 0))])
  return o, lse


def _backward(q, k, v, valid, o, lse, do, cfg: _Config):
  B, H, Tp, Dp = q.shape
  G, Sp = k.shape[1], k.shape[2]
  R, bq, bk = H // G, cfg.block_q, cfg.block_k
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
  args = (q, k, v, valid, do, lse, delta)

  row = lambda b, h, i: (b, h, i, 0)
  kv_all = pl.BlockSpec((None, None, Sp, Dp), lambda b, h, i: (b, h // R, 0, 0))
  valid_spec = pl.BlockSpec((None, 1, Sp), lambda b, h, i: (b, 0, 0))
  (dq,) = _call(
      _dq_kernel, 'flash_dq', cfg, (B, H, Tp // bq), args,
      [pl.BlockSpec((None, None, bq, Dp), row), kv_all, kv_all, valid_spec,
       pl.BlockSpec((None, None, bq, Dp), row), pl.BlockSpec((None, None, bq, 1), row),
       pl.BlockSpec((None, None, bq, 1), row)],
      [jax.ShapeDtypeStruct(q.shape, q.dtype)], [pl.BlockSpec((None, None, bq, Dp), row)])

  # Grid over K/V heads g; the block of query heads [g*R, (g+1)*R) is index g along H.
  group = pl.BlockSpec((None, R, Tp, Dp), lambda b, g, j: (b, g, 0, 0))
  group_rows = pl.BlockSpec((None, R, Tp, 1), lambda b, g, j: (b, g, 0, 0))
  kv_block = pl.BlockSpec((None, None, bk, Dp), lambda b, g, j: (b, g, j, 0))
  dk, dv = _call(
      _dkdv_kernel, 'flash_dkdv', cfg, (B, G, Sp // bk), args,
      [group, kv_block, kv_block, pl.BlockSpec((None, 1, Sp), lambda b, g, j: (b, 0, 0)),
       group, group_rows, group_rows],
      [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      [kv_block, kv_block])
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, valid, cfg):
  return _forward(q, k, v, valid, cfg)[0]


def _flash_fwd(q, k, v, valid, cfg):
  o, lse = _forward(q, k, v, valid, cfg)
  return o, (q, k, v, valid, o, lse)


def _flash_bwd(cfg, res, do):
  q, k, v, valid, o, lse = res
  dq, dk, dv = _backward(q, k, v, valid, o, lse, do, cfg)
  return dq, dk, dv, jnp.zeros_like(valid)


_flash.defvjp(_flash_fwd, _flash_bwd)


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


def _pad_heads_first(x, length: int, dim: int):
  """[B, L, N, D] -> [B, N, length, dim], zero padded."""
  x = jnp.swapaxes(x, 1, 2)
  return jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, dim - x.shape[3])))


@functools.partial(jax.jit, static_argnames=('causal', 'window', 'block_q', 'block_k',
                                             'interpret', 'poison_outputs'))
def flash_attention(q, k, v, *, causal: bool = False, key_mask=None, window: int = 0,
                    block_q: int = 128, block_k: int = 128,
                    interpret: bool | str | None = None, poison_outputs: bool = False):
  """Exact softmax attention by the Pallas flash kernel.

  Args:
    q: [B, T, H, D] queries; k, v: [B, S, G, D] keys and values, H % G == 0 (GQA by index maps).
      float32, bfloat16 or float16; softmax and accumulation are float32.
    causal: query i sees keys j <= i (top-left aligned).
    key_mask: optional bool [B, S], True = may attend (any pattern, not only lengths).
    window: 0 = no window; else query i sees keys j with |i - j| <= window (with causal:
      i - window <= j <= i), as `jax.nn.dot_product_attention(local_window_size=window)`.
    block_q, block_k: tile sizes, powers of two >= 16 (shrunk for short inputs).
    interpret: None / 'auto' (interpret on CPU only), True / 'true', False / 'false'.
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
  k, v = k.astype(q.dtype), v.astype(q.dtype)  # the kernels' dots take one operand dtype
  bq, bk = block_size(block_q, T), block_size(block_k, S)
  Tp, Sp = pl.cdiv(T, bq) * bq, pl.cdiv(S, bk) * bk
  Dp = max(MIN_BLOCK, pl.next_power_of_2(D))
  cfg = _Config(causal=causal, window=window, block_q=bq, block_k=bk, scale=1.0 / math.sqrt(D),
                interpret=resolve_interpret(interpret), poison=poison_outputs)
  valid = jnp.ones((B, S), jnp.float32) if key_mask is None else key_mask.astype(jnp.float32)
  valid = jnp.pad(valid, ((0, 0), (0, Sp - S)))[:, None, :]  # padded keys are invalid
  out = _flash(_pad_heads_first(q, Tp, Dp), _pad_heads_first(k, Sp, Dp),
               _pad_heads_first(v, Sp, Dp), valid, cfg)  # [B, H, Tp, Dp]
  return jnp.swapaxes(out[:, :, :T, :D], 1, 2)
