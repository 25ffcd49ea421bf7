"""Attention kernel throughput: our flash kernel next to cuDNN, XLA and JAX's own Pallas ops.

TFLOP/s of forward and forward+backward at B·T = 16K tokens, T in {1K ... 16K}, H = 16,
D in {64, 128}, bfloat16, causal and not. FLOPs: 4·B·H·T·S·D for the forward (two matmuls),
halved when causal; the backward counts 2.5x the forward, so forward+backward is 3.5x. Each
point: compile, warm up, then the median of `repeats` (>= 20) timed calls. Needs a GPU or TPU:
the kernels only interpret on CPU, which would measure the interpreter.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp

from kernels import flash_attention as fa


@dataclasses.dataclass(frozen=True)
class Settings:
  tokens: int = 16 * 1024  # B * T
  lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384)
  num_heads: int = 16
  head_dims: tuple[int, ...] = (64, 128)
  causal: tuple[bool, ...] = (False, True)
  repeats: int = 20
  warmup: int = 3


def flops(B: int, T: int, S: int, H: int, D: int, *, causal: bool, backward: bool) -> float:
  """Matmul FLOPs of attention: 4·B·H·T·S·D forward (halved causal), backward 2.5x that."""
  forward = 4 * B * H * T * S * D / (2 if causal else 1)
  return forward * (3.5 if backward else 1.0)


def require_accelerator():
  if jax.default_backend() == 'cpu':
    raise RuntimeError('kernel_bench needs a GPU or TPU: on CPU the Pallas kernels only '
                       'interpret, so nothing would be measured')


def implementations(platform: str) -> dict[str, Callable]:
  """name -> f(q, k, v, causal) on [B, T, H, D] inputs, for those that exist on `platform`."""
  impls = {'flash': lambda q, k, v, causal: fa.flash_attention(q, k, v, causal=causal),
           'xla': lambda q, k, v, causal: jax.nn.dot_product_attention(
               q, k, v, is_causal=causal, implementation='xla')}
  if platform == 'gpu':
    from jax.experimental.pallas.ops.gpu import attention, attention_mgpu
    impls['cudnn'] = lambda q, k, v, causal: jax.nn.dot_product_attention(
        q, k, v, is_causal=causal, implementation='cudnn')
    impls['pallas_triton'] = lambda q, k, v, causal: attention.mha(
        q, k, v, None, sm_scale=1 / math.sqrt(q.shape[-1]), causal=causal)
    impls['pallas_mgpu'] = lambda q, k, v, causal: attention_mgpu.attention(
        q, k, v, attention_mgpu.TuningConfig(block_q=64, block_kv=64, max_concurrent_steps=2,
                                             causal=causal))
  if platform == 'tpu':
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)
    impls['pallas_tpu'] = lambda q, k, v, causal: heads_first(tpu_flash.flash_attention(
        heads_first(q), heads_first(k), heads_first(v), causal=causal,
        sm_scale=1 / math.sqrt(q.shape[-1])))
  return impls


def time_call(fn: Callable, args, *, repeats: int, warmup: int) -> float:
  """Median seconds of `fn(*args)` (compiled and warmed up first)."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure_point(impl: Callable, B, T, H, D, causal, backward, settings: Settings) -> float:
  """Seconds of one forward (or forward+backward) of `impl` on random bf16 inputs."""
  q, k, v = (jax.random.normal(key, (B, T, H, D), jnp.bfloat16)
             for key in jax.random.split(jax.random.key(0), 3))
  f = functools.partial(impl, causal=causal)
  if backward:
    f = jax.grad(lambda q, k, v: f(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2))
  return time_call(jax.jit(f), (q, k, v), repeats=settings.repeats, warmup=settings.warmup)


def run(workdir: str, settings: Settings = Settings(), *, measure=measure_point,
        impls: dict[str, Callable] | None = None, log=print) -> list[dict]:
  """Measures every point; writes kernel_bench.json and kernel_bench.md into `workdir`.

  `measure` and `impls` are injectable so the table logic can be tested without a device. An
  implementation that fails on a point (unsupported shape, out of memory) is recorded with its
  error instead of a time.
  """
  impls = implementations(jax.default_backend()) if impls is None else impls
  rows = []
  for D, causal, T in ((d, c, t) for d in settings.head_dims for c in settings.causal
                       for t in settings.lengths):
    B, H = settings.tokens // T, settings.num_heads
    for backward in (False, True):
      row = dict(B=B, T=T, H=H, D=D, causal=causal, mode='fwd+bwd' if backward else 'fwd',
                 flops=flops(B, T, T, H, D, causal=causal, backward=backward), tflops={},
                 errors={})
      for name, impl in impls.items():
        try:
          seconds = measure(impl, B, T, H, D, causal, backward, settings)
          row['tflops'][name] = row['flops'] / seconds / 1e12
        except Exception as e:  # a missing kernel for this shape is a result, not a crash
          row['errors'][name] = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
      log(json.dumps(row))
      rows.append(row)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'kernel_bench.json'), 'w') as f:
    json.dump({'settings': dataclasses.asdict(settings), 'device': _device(), 'rows': rows},
              f, indent=2)
  with open(os.path.join(workdir, 'kernel_bench.md'), 'w') as f:
    f.write(table(rows, list(impls)))
  return rows


def _device() -> str:
  return jax.devices()[0].device_kind


def table(rows: list[dict], names: list[str]) -> str:
  """Markdown: one line per (D, causal, T, mode), TFLOP/s per implementation ('-' = failed)."""
  lines = ['| D | causal | T | B | mode | ' + ' | '.join(names) + ' |',
           '|---' * (5 + len(names)) + '|']
  for r in rows:
    cells = [f'{r["tflops"][n]:.1f}' if n in r['tflops'] else '-' for n in names]
    lines.append(f'| {r["D"]} | {r["causal"]} | {r["T"]} | {r["B"]} | {r["mode"]} | '
                 + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'
