"""Decode cost of MHA / GQA / MQA: per-token latency of KV-cache decoding (`attnzoo.decode`) and
the cache's bytes against num_kv_heads at a long context (Shazeer 2019; Ainslie et al. 2023).

What is left here once the quality-vs-cost study moved to attnzoo/studies/quality_vs_cost; the
decode benchmark moves to its own study.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import attnzoo
from attnzoo import cost, decode
from attnzoo.attention import base
from attnzoo.config import base_config


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  length: int = 4096  # context T: the cache holds T positions, the timed step is the last one
  batch_size: int = 8
  d_model: int = 512
  num_heads: int = 8
  num_layers: int = 4
  kv_heads: tuple[int, ...] = (8, 4, 2, 1)  # G = H is MHA, G = 1 is MQA
  vocab_size: int = 256
  positions: str = 'rope'
  repeats: int = 10

  def __post_init__(self):
    for f in ('length', 'batch_size', 'd_model', 'num_heads', 'num_layers', 'repeats'):
      base.check(getattr(self, f) > 0, f'decode.{f}', getattr(self, f), 'must be positive')
    for g in self.kv_heads:
      base.check(g > 0 and self.num_heads % g == 0, 'decode.kv_heads', self.kv_heads,
                 f'each must divide num_heads={self.num_heads}')


def decode_model(spec: dict[str, Any]):
  c = base_config().model
  c.vocab_size, c.d_model, c.num_heads = spec['vocab_size'], spec['d_model'], spec['num_heads']
  c.num_kv_heads, c.num_layers, c.mlp = spec['num_kv_heads'], spec['num_layers'], True
  c.positions, c.max_len = spec['positions'], spec['length']
  c.attention.name = spec['variant']
  model = attnzoo.Decoder(c, rngs=nnx.Rngs(params=0, attention=1))
  model.eval()
  return model


def execute_decode(spec: dict[str, Any], workdir: str) -> dict[str, Any]:
  """Per-token latency of one decode step at position T - 1 with a full cache of T positions
  (random contents: the values do not change the work), and the cache's bytes."""
  del workdir
  model = decode_model(spec)
  B, T = spec['batch_size'], spec['length']
  cache = decode.init_cache(model, batch_size=B, max_len=T)
  keys = iter(jax.random.split(jax.random.key(1), 2 * len(cache.k)))
  cache = cache._replace(k=tuple(jax.random.normal(next(keys), x.shape) for x in cache.k),
                         v=tuple(jax.random.normal(next(keys), x.shape) for x in cache.v))
  fns = decode.decoding(model)
  token = jnp.zeros((B,), jnp.int32)
  at = lambda: jnp.asarray(T - 1, jnp.int32)  # a fresh array: the cache (with it) is donated
  cache = cache._replace(length=at())
  stats = cost.compiled_stats(fns.attend_step, fns.state, cache, token)  # reads the cache
  attend_step = stats.pop('compiled')
  _, new = attend_step(fns.state, cache, token)
  t0 = time.perf_counter()
  write = fns.write.lower(cache, new).compile()  # appends in place (donated)
  compile_s = stats['compile_s'] + time.perf_counter() - t0
  times = []
  for i in range(spec['repeats'] + 1):
    cache = cache._replace(length=at())  # the same step every time: position T - 1
    t0 = time.perf_counter()
    logits, new = attend_step(fns.state, cache, token)
    cache = write(cache, new)
    jax.block_until_ready((logits, cache))
    if i:  # the first call is warm-up
      times.append(time.perf_counter() - t0)
  attn = model.blocks[0].attn
  return {'token_s': statistics.median(times), 'token_s_min': min(times),
          'compile_s': compile_s, 'flops': stats['flops'], 'peak_bytes': stats['peak_bytes'],
          'kv_bytes': cache.nbytes(),
          'kv_bytes_formula': decode.kv_cache_bytes(
              num_layers=spec['num_layers'], batch_size=B, length=T,
              num_kv_heads=attn.num_kv_heads, head_dim=attn.head_dim),
          'params': cost.param_count(nnx.state(model, nnx.Param)), 'head_dim': attn.head_dim}


def _fmt(x, fmt):
  return '–' if x is None else fmt.format(x)


def decode_table(rows: list[dict[str, Any]]) -> list[str]:
  ok = sorted((r for r in rows if r.get('status') == 'ok'), key=lambda r: -r['num_kv_heads'])
  mha = next((r for r in ok if r['num_kv_heads'] == r['num_heads']), None)
  lines = ['| variant | G (K/V heads) | KV cache MiB | MHA / this KV bytes | H / G | '
           'ms/token | speed-up vs MHA | GFLOP/token | compile s |', '|' + '---|' * 9]
  for r in ok:
    kv_ratio = mha['kv_bytes'] / r['kv_bytes'] if mha else None
    speed = mha['token_s'] / r['token_s'] if mha else None
    lines.append(
        f'| {r["variant"]} | {r["num_kv_heads"]} | {r["kv_bytes"] / 2**20:.1f} | '
        f'{_fmt(kv_ratio, "{:.2f}")} | {r["num_heads"] / r["num_kv_heads"]:g} | '
        f'{r["token_s"] * 1e3:.2f} | {_fmt(speed, "{:.2f}x")} | '
        f'{_fmt(r.get("flops") and r["flops"] / 1e9, "{:.3f}")} | {r["compile_s"]:.1f} |')
  for r in rows:
    if r.get('status') != 'ok':
      lines.append(f'| {r["variant"]} | {r["num_kv_heads"]} | {r.get("status")}: '
                   f'{r.get("reason", "")[:80]} |' + ' |' * 6)
  return lines


def _plt():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def decode_plot(rows: list[dict[str, Any]], path: str):
  plt = _plt()
  rows = sorted(rows, key=lambda r: r['num_kv_heads'])
  if not rows:
    return
  G = [r['num_kv_heads'] for r in rows]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  axes[0].plot(G, [r['token_s'] * 1e3 for r in rows], marker='o')
  axes[0].set_ylabel('decode latency (ms / token)')
  axes[1].plot(G, [r['kv_bytes'] / 2**20 for r in rows], marker='o', color='tab:orange')
  axes[1].set_ylabel('KV cache (MiB)')
  r0 = rows[0]
  for ax in axes:
    ax.set_xscale('log', base=2)
    ax.set_xticks(G, [f'{g}\n{r["variant"]}' for g, r in zip(G, rows)])
    ax.set_xlabel(f'K/V heads G (H={r0["num_heads"]}; T={r0["length"]}, B={r0["batch_size"]})')
    ax.grid(True, alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
