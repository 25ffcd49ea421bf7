"""The flash kernel on every backend, from a CPU: lowering, on-chip memory, interpret modes, mesh.

- Lowering: `jax.export` for `cuda` (Mosaic GPU, Triton) and for `tpu` (under an abstract mesh of
  a TPU v5e / v5p / v6e device) over T x D x G x {causal, window, neither} x {fwd, fwd+bwd}:
  each case lowers, or is refused up front with a ValueError naming the backend (Mosaic GPU has
  no backward). The covering subset runs by default, the full matrix with `-m slow`. The Mosaic
  GPU lowering itself rejects a kernel that exceeds SMEM, so "lowers" there also means "fits".
- On-chip memory per program, from the block shapes, fits each device and does not grow with T.
- Correctness in TPU interpret mode (`pltpu.InterpretParams`: simulated VMEM, DMAs, semaphores)
  against `jax.nn.dot_product_attention`, outputs and gradients, on odd shapes.
- Under an 8-device mesh the kernel runs per shard (`shard_map`) and matches one device.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractDevice, AbstractMesh

from helpers import ROOT
from kernels import flash_attention as fa
from test_flash import TOL, _inputs, _out_and_grads, _reference, _rel

TPUS = ('TPU v5e', 'TPU v5p', 'TPU v6e')
TARGETS = (('mosaic_gpu', None), ('triton', None), *(('mosaic_tpu', t) for t in TPUS))
LENGTHS, DIMS, GROUPS = (128, 1000, 4096, 32768), (64, 128, 256), ('H', 'H/4', '1')
MASKS, MODES = ('causal', 'window', 'neither'), ('fwd', 'fwd+bwd')
H, WINDOW = 8, 256


def refusal(backend: str, mode: str) -> str | None:
  """The documented reason a case is refused up front, or None when it must lower."""
  if backend == 'mosaic_gpu' and mode == 'fwd+bwd':
    return "backend='mosaic_gpu': no backward kernel"
  return None


def lower(backend, device, T, D, G, mask, mode, dtype=jnp.bfloat16):
  """Exports the flash call (and its VJP for fwd+bwd) for the backend's platform."""
  q = jax.ShapeDtypeStruct((1, T, H, D), dtype)
  kv = jax.ShapeDtypeStruct((1, T, G, D), dtype)
  attend = functools.partial(fa.flash_attention, causal=mask == 'causal',
                             window=WINDOW if mask == 'window' else 0, backend=backend,
                             interpret=False)
  f = attend
  if mode == 'fwd+bwd':
    f = jax.grad(lambda q, k, v: attend(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2))
  if backend == 'mosaic_tpu':
    mesh = AbstractMesh((1,), ('x',), abstract_device=AbstractDevice(
        device_kind=device, num_cores=1, platform='tpu'))
    with jax.sharding.use_abstract_mesh(mesh):
      return jax.export.export(jax.jit(f), platforms=['tpu'])(q, kv, kv)
  # The Triton custom call has no serialization guarantee; lowering is what we check.
  triton = jax.export.DisabledSafetyCheck.custom_call('__gpu$xla.gpu.triton')
  return jax.export.export(jax.jit(f), platforms=['cuda'], disabled_checks=[triton])(q, kv, kv)


KERNEL_CALL = {'mosaic_gpu': 'mosaic_gpu', 'triton': '__gpu$xla.gpu.triton',
               'mosaic_tpu': 'tpu_custom_call'}


def _check_lowering(backend, device, T, D, G, mask, mode):
  G = {'H': H, 'H/4': H // 4, '1': 1}[G]
  reason = refusal(backend, mode)
  if reason:
    with pytest.raises(ValueError, match=reason):
      lower(backend, device, T, D, G, mask, mode)
    return
  text = lower(backend, device, T, D, G, mask, mode).mlir_module()
  calls = text.count(KERNEL_CALL[backend])
  assert calls >= (3 if mode == 'fwd+bwd' else 1), (backend, calls)  # fwd (+ dq, dkdv)


def _case_id(c):
  return '-'.join(str(x) for x in (c[0] if c[1] is None else c[1].replace(' ', ''), *c[2:]))


FULL = [(b, d, *rest) for (b, d), *rest in itertools.product(
    TARGETS, LENGTHS, DIMS, GROUPS, MASKS, MODES)]
# Covering subset: every target meets every T, D, G, mask and mode at least once.
SUBSET = [(b, d, LENGTHS[i % 4], DIMS[i % 3], GROUPS[(i + 1) % 3], MASKS[(i + 2) % 3],
           MODES[i % 2]) for b, d in TARGETS for i in range(6)]


@pytest.mark.parametrize('case', SUBSET, ids=_case_id)
def test_lowers_or_is_refused(case):
  _check_lowering(*case)


@pytest.mark.slow
@pytest.mark.parametrize('case', FULL, ids=_case_id)
def test_full_lowering_matrix(case):
  _check_lowering(*case)


def test_subset_covers_every_value():
  for b, d in TARGETS:
    rows = [c[2:] for c in SUBSET if c[:2] == (b, d)]
    for axis, values in enumerate((LENGTHS, DIMS, GROUPS, MASKS, MODES)):
      assert {r[axis] for r in rows} == set(values), (b, d, axis)


def test_mosaic_gpu_lowering_rejects_what_exceeds_smem():
  """The check above is real: Mosaic GPU's lowering refuses a kernel whose tiles overflow SMEM
  (here K/V tiles of 1024 rows, which `flash_attention` never picks)."""
  cfg = fa._Config(backend='mosaic_gpu', grad_backend='mosaic_gpu', interpret=False,
                   causal=True, window=0, block_q=64, block_k=1024, scale=1.0, num_warps=4,
                   num_stages=2, poison=False)
  x = jax.ShapeDtypeStruct((1, 2, 2048, 256), jnp.bfloat16)
  with pytest.raises(Exception, match='exceeds available shared memory'):
    jax.export.export(jax.jit(lambda q, k, v: fa._mgpu_forward(q, k, v, cfg, 2048)),
                      platforms=['cuda'])(x, x, x)


# ---- on-chip memory ---------------------------------------------------------------------------

LIMITS = {'mosaic_gpu': fa.SMEM_BYTES['H100'], 'triton': fa.SMEM_BYTES['H100'],
          **{t: fa.VMEM_BYTES[t] for t in TPUS}}


@pytest.mark.parametrize('backend,device', TARGETS, ids=lambda x: str(x))
@pytest.mark.parametrize('D', DIMS)
def test_onchip_memory_fits_and_does_not_grow_with_length(backend, device, D):
  limit = LIMITS[device or backend]
  backward = backend != 'mosaic_gpu'
  sizes = set()
  for T in LENGTHS:
    bq, bk = fa.plan_blocks(backend, T=T, S=T, D=D, dtype=jnp.bfloat16)
    sizes.add(fa.onchip_bytes(backend, head_dim=D, dtype=jnp.bfloat16, block_q=bq, block_k=bk,
                              backward=backward))
  # Short sequences shrink the blocks; from T >= 128 the tiles are the same.
  assert len(sizes) == 1, sizes
  assert sizes.pop() <= limit


def test_onchip_memory_figures():
  """The T=4096, D=128, bf16 figures (bytes), as block shapes give them."""
  tpu = fa.onchip_bytes('mosaic_tpu', head_dim=128, dtype=jnp.bfloat16)
  mgpu = fa.onchip_bytes('mosaic_gpu', head_dim=128, dtype=jnp.bfloat16, block_q=64,
                         block_k=128, backward=False)
  triton = fa.onchip_bytes('triton', head_dim=128, dtype=jnp.bfloat16)
  # TPU dK/dV: 2 x (q, dO 32 KiB + k, v, dk, dv 32 KiB each + valid 4 KiB + lse, delta 64 KiB
  # each, lane-padded) + dk, dv float32 scratch 64 KiB each.
  assert tpu == 2 * (2 * 32 + 4 * 32 + 4 + 2 * 64) * 1024 + 2 * 64 * 1024
  assert mgpu == (2 * 16 + 4 * 32) * 1024 + 32  # q, o tiles; 2 x (k, v) tiles; barriers
  assert triton == (2 * 2 * 32 + 2 * 32) * 1024  # dK/dV: 2 stages x (q, dO); k, v


# ---- interpret modes --------------------------------------------------------------------------

# (T, S, H, G, D, causal, window, masked, dtype, block_q, block_k): odd lengths, T != S.
TPU_CASES = [
    (40, 72, 4, 2, 24, True, 0, True, jnp.float32, 16, 32),
    (40, 72, 2, 1, 16, False, 9, False, jnp.bfloat16, 32, 16),
]


@pytest.mark.parametrize('case', TPU_CASES, ids=lambda c: 'T{}S{}H{}G{}D{}c{}w{}m{}{}'.format(
    *c[:8], jnp.dtype(c[8]).name))
def test_tpu_interpret_matches_dot_product_attention(case):
  T, S, Hq, G, D, causal, window, masked, dtype, bq, bk = case
  (q, k, v), ct, key_mask = _inputs(sum(case[:7]), 1, T, S, Hq, G, D, dtype, masked)
  opts = tuple(sorted(dict(backend='mosaic_tpu', interpret=True, block_q=bq,
                           block_k=bk).items()))
  out, grads = _out_and_grads(q, k, v, ct, key_mask, fn=fa.flash_attention, causal=causal,
                              window=window, opts=opts)
  ref, ref_grads = _out_and_grads(q, k, v, ct, key_mask, fn=_reference, causal=causal,
                                  window=window)
  for name, x, r in zip(('out', 'dq', 'dk', 'dv'), (out, *grads), (ref, *ref_grads)):
    assert x.dtype == dtype, name
    assert _rel(x, r) <= TOL[dtype], (name, _rel(x, r))


def test_tpu_kernels_skip_blocks_outside_the_band():
  """Causal + window: the clamped index maps fetch only the band's key blocks."""
  lo_hi = [tuple(int(x) for x in fa.key_block_range(i, block_q=128, block_k=128,
                                                    num_k_blocks=32, causal=True, window=256))
           for i in range(32)]
  fetched = {(i, int(fa._clamp(j, lo, hi, 32))) for i, (lo, hi) in enumerate(lo_hi)
             for j in range(32)}
  assert len(fetched) == sum(hi - lo for lo, hi in lo_hi) < 32 * 4


@pytest.mark.parametrize('kwargs,match', [
    (dict(backend='mosaic_gpu', interpret=True), "mosaic_gpu.*no interpret mode"),
    (dict(backend='mosaic_gpu', interpret=False, dtype=jnp.float32),
     "mosaic_gpu.*dtype float32"),
    (dict(backend='mosaic_gpu', interpret=False, masked=True), "mosaic_gpu.*key_mask"),
    (dict(backend='mosaic_tpu', interpret=False, block_k=64), "mosaic_tpu.*block_k=64"),
    (dict(backend='cuda'), "flash.backend='cuda'"),
])
def test_unsupported_requests_are_refused_before_tracing(kwargs, match):
  kwargs = dict(kwargs)
  dtype, masked = kwargs.pop('dtype', jnp.bfloat16), kwargs.pop('masked', False)
  (q, k, v), _, key_mask = _inputs(0, 1, 300, 300, 2, 1, 64, dtype, masked)
  with pytest.raises(ValueError, match=match):
    fa.flash_attention(q, k, v, key_mask=key_mask, **kwargs)


def test_auto_backend_on_cpu_is_the_interpreter():
  assert fa.resolve_backend('auto') == 'interpret'
  assert fa.resolve_backend('triton') == 'triton'


# ---- multi-device mesh ------------------------------------------------------------------------

MESH_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from kernels import flash_attention as fa
ks = jax.random.split(jax.random.key(0), 3)
q = jax.random.normal(ks[0], (8, 24, 2, 16))
k, v = (jax.random.normal(s, (8, 40, 1, 16)) for s in ks[1:])
mask = jnp.arange(40)[None, :] < jnp.arange(8)[:, None] * 5 + 3
f = jax.jit(lambda q, k, v, m: fa.flash_attention(q, k, v, key_mask=m, causal=True,
                                                  block_q=16, block_k=16))
one = f(q, k, v, mask)
mesh = jax.make_mesh((8,), ('data',))
with jax.set_mesh(mesh):
  args = [jax.device_put(x, NamedSharding(mesh, P('data'))) for x in (q, k, v, mask)]
  text = str(jax.make_jaxpr(f)(*args))
  eight = f(*args)
print(json.dumps({{'devices': jax.device_count(), 'shard_map': 'shard_map' in text,
                  'shards': len(eight.addressable_shards),
                  'err': float(np.abs(np.asarray(eight) - np.asarray(one)).max())}}))
"""


def test_runs_per_shard_under_an_eight_device_mesh():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', MESH_SCRIPT.format(root=ROOT)], env=env,
                       check=True, capture_output=True, text=True).stdout
  result = json.loads(out.strip().splitlines()[-1])
  assert result['devices'] == 8 and result['shard_map'] and result['shards'] == 8
  assert result['err'] <= 1e-5
