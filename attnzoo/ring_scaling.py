"""Ring attention vs blockwise: per-device compiled peak memory and step time (forward +
backward of one attention call) against the number of devices n on the `seq` axis, and the
longest sequence that fits a per-device memory budget.

Numbers come from XLA's compiled memory analysis (`cost.compiled_stats`), per device. On fake
CPU devices all n share the same cores, so step times show overhead, not speed-up.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from attnzoo import cost
from attnzoo.attention import blockwise, ring

SHAPE = dict(B=1, H=4, G=1, D=32)  # MQA keeps K/V small next to Q, as long-context models do


def seq_mesh(n: int):
  """A mesh of the first n devices on one `seq` axis."""
  return jax.make_mesh((n,), ('seq',), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def _loss(variant: str, block_k: int):
  attend = ring.ring_attention if variant == 'ring' else blockwise.blockwise_attention
  def loss(q, k, v):
    out = attend(q, k, v, causal=True, block_k=block_k)
    return (out.astype(jnp.float32) ** 2).sum()
  return jax.grad(loss, argnums=(0, 1, 2))


def measure(variant: str, n: int, T: int, *, block_k: int = 128, time: bool = False,
            B=SHAPE['B'], H=SHAPE['H'], G=SHAPE['G'], D=SHAPE['D']) -> dict:
  """Per-device peak bytes (and median step seconds if `time`) of d(loss)/d(q, k, v).

  `ring` runs with the sequence split over n devices; `blockwise` on one device (n ignored).
  """
  n = n if variant == 'ring' else 1
  mesh = seq_mesh(n)
  sharding = NamedSharding(mesh, P(None, 'seq'))
  shapes = [(B, T, H, D), (B, T, G, D), (B, T, G, D)]
  with jax.set_mesh(mesh):
    args = [jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding) for s in shapes]
    stats = cost.compiled_stats(_loss(variant, block_k), *args)
    row = {'variant': variant, 'n': n, 'T': T, 'peak_bytes': stats['peak_bytes']}
    if time:
      keys = jax.random.split(jax.random.key(0), 3)
      arrays = [jax.device_put(jax.random.normal(kk, s), sharding) for kk, s in zip(keys, shapes)]
      row['step_s'] = cost.median_time(stats['compiled'], *arrays, repeats=3)
  return row


def longest_fitting(variant: str, n: int, budget: int, *, T0: int = 512, **kw) -> int:
  """Largest T = T0 * 2^k (a multiple of n) whose per-device peak stays within `budget` bytes."""
  T, best = T0, 0
  while measure(variant, n, T, **kw)['peak_bytes'] <= budget:
    best, T = T, 2 * T
  return best


def table(T: int = 4096, ns=(1, 2, 4, 8), budget: int = 8 << 20, **kw) -> list[dict]:
  """One row per n: ring's peak and step time at T, blockwise's (1 device), and the longest
  T each fits in `budget` bytes per device."""
  block = measure('blockwise', 1, T, time=True, **kw)
  block_T = longest_fitting('blockwise', 1, budget, **kw)
  rows = []
  for n in ns:
    r = measure('ring', n, T, time=True, **kw)
    rows.append({'n': n, 'T': T, 'ring_peak_MiB': r['peak_bytes'] / 2**20,
                 'ring_step_ms': 1e3 * r['step_s'],
                 'blockwise_peak_MiB': block['peak_bytes'] / 2**20,
                 'blockwise_step_ms': 1e3 * block['step_s'],
                 'budget_MiB': budget / 2**20,
                 'ring_longest_T': longest_fitting('ring', n, budget, **kw),
                 'blockwise_longest_T': block_T})
  return rows


def markdown(rows: list[dict]) -> str:
  keys = list(rows[0])
  fmt = lambda x: f'{x:.2f}' if isinstance(x, float) else str(x)
  lines = ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
  return '\n'.join(lines + ['| ' + ' | '.join(fmt(r[k]) for k in keys) + ' |' for r in rows])
