"""Cost measurement: wall time (median of repeats after compile), compiled FLOPs and peak memory.

Benchmarks report ratios against a reference measured in the same run; nothing here asserts a
time.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

import jax


def _block(x):
  return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, 'block_until_ready') else a, x)


def compiled_stats(fn: Callable, *args, donate_argnums=()) -> dict[str, Any]:
  """Compiles jit(fn)(*args); returns compile seconds, FLOPs and peak bytes from XLA's analyses.
  `donate_argnums` as jax.jit's (jit of an already jitted function would drop its donation)."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  mem = compiled.memory_analysis()
  peak = None
  if mem is not None:
    # XLA's CPU `peak_memory_in_bytes` leaves out temporaries; arguments + outputs + temps is
    # the footprint the compiled program asks for.
    peak = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
            - mem.alias_size_in_bytes)
  return {'compiled': compiled, 'compile_s': compile_s, 'flops': cost.get('flops'),
          'peak_bytes': peak}


def median_time(compiled: Callable, *args, repeats: int = 5, warmup: int = 1) -> float:
  """Median wall seconds of compiled(*args) over `repeats` runs after `warmup` runs."""
  for _ in range(warmup):
    _block(compiled(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    _block(compiled(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def memory_limit() -> int:
  """Bytes a compiled program may ask for: 90% of the accelerator's limit, or half the host's
  RAM (running past it on CPU gets the process killed rather than an error raised)."""
  stats = None
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001  (CPU backends may not implement it)
    pass
  if stats and stats.get('bytes_limit'):
    return int(0.9 * stats['bytes_limit'])
  return int(0.5 * os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))


def param_count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))
