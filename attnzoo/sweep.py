"""Quality against cost for every attention variant: tasks x lengths x widths, MQAR width sweep,
and the decode cost of MHA / GQA / MQA.

Train runs. Every variant is trained on `induction`, `copy` and `mqar` at each sequence length
and model width with the same budget (steps, batch, a small learning-rate grid; the learning rate
with the lowest final eval loss on the scored tokens is kept). Causal-capable variants run the
tasks causally (next token); variants that cannot be causal (Linformer) run their bidirectional
masked-token form (`model.causal=False`: the scored tokens are replaced by a mask token and
predicted in place), and so does `dense`, which is their reference. In causal form `dense` is
exactly the `causal` preset, the causal reference, and `cross` is the same mechanism again, so
neither is trained twice. Per run we record:
  - quality: eval loss and accuracy on the scored tokens (copy, mqar: the answers; induction:
    the repeated part),
  - ms/step: median wall time of the compiled train step over the training steps (after compile),
  - compile_s, flops and peak_bytes of the train step from XLA's cost and memory analyses,
  - attention FLOPs: the attention core alone compiled at the run's shapes, forward + backward
    (as in the train step), times the number of layers,
  - parameter count.

MQAR width sweep (Zoology, Arora et al. 2023): MQAR accuracy against d_model at a few (T, number
of key-value pairs). Dense attention solves MQAR at small width; mixers with a fixed-size state
(linear attention) need width that grows with the number of pairs.

Decode cost: per-token latency of KV-cache decoding (`attnzoo.decode`) and the cache's bytes
against num_kv_heads at a long context, MHA vs GQA vs MQA (Shazeer 2019; Ainslie et al. 2023).

Everything lands in workdir/results.jsonl, one line per finished run keyed by a hash of its
settings; a restarted sweep skips finished runs and redoes missing or failed ones (an unfinished
run's own directory is wiped first). The report (report.md, pareto_<task>.png, mqar_width.png,
decode.png) is built from results.jsonl alone.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import gc
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

import attnzoo
from attnzoo import cost, decode, jsonl, train
from attnzoo.attention import base
from attnzoo.config import base_config

RESULTS = 'results.jsonl'
REPORT = 'report.md'
RUNS = 'runs'
TASKS = ('induction', 'copy', 'mqar')
CAUSAL_REFERENCE = 'causal'
MASKED_REFERENCE = 'dense'
# Identical to another row: `cross` is `dense` (same module, same options); in causal form
# `dense` is `causal`. Listed in the report instead of being trained again.
ALIASES = {'cross': 'dense / causal (same mechanism, a cross-attention preset)'}

# The task settings of configs/{induction,copy,mqar}.py. MQAR's number of key-value pairs (and
# vocabulary, when needed) grows with T, see `mqar_settings`.
TASK_SETTINGS: dict[str, dict[str, Any]] = {
    'induction': dict(vocab_size=64, min_period=8, max_period=24, num_layers=2, mlp=False),
    'copy': dict(vocab_size=32, num_layers=2, mlp=True),
    'mqar': dict(vocab_size=128, num_layers=2, mlp=True),
}
# The metric mask each task is scored on (accuracy_<m>, loss_<m>).
SCORED = {'induction': 'repeat', 'copy': 'answer', 'mqar': 'answer'}
# Per-variant options over the defaults; an option named `max_len` always follows T (Linformer's
# projections must cover the sequence).
VARIANT_OPTIONS: dict[str, dict[str, Any]] = {}


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


@dataclasses.dataclass(frozen=True)
class Settings:
  variants: tuple[str, ...] = ()  # () = every registered variant (see default_variants)
  tasks: tuple[str, ...] = TASKS
  lengths: tuple[int, ...] = (64, 256, 1024)
  widths: tuple[int, ...] = (64,)  # d_model of the main sweep
  num_heads: int = 4
  steps: int = 1000
  batch_size: int = 16
  learning_rates: tuple[float, ...] = (1e-3, 3e-3)
  warmup_steps: int = 50
  eval_batches: int = 4
  seed: int = 0
  mqar_widths: tuple[int, ...] = (32, 64, 128)
  mqar_points: tuple[tuple[int, int], ...] = ((64, 8), (256, 32))  # (T, num_pairs)
  decode: DecodeSettings | None = DecodeSettings()
  options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # per variant
  task_overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # per task

  def __post_init__(self):
    for t in self.tasks:
      base.check(t in TASKS, 'sweep.tasks', self.tasks, f'known tasks: {", ".join(TASKS)}')
    for f in ('lengths', 'widths', 'learning_rates'):
      base.check(len(getattr(self, f)) > 0 and all(x > 0 for x in getattr(self, f)),
                 f'sweep.{f}', getattr(self, f), 'must be non-empty and positive')
    for f in ('steps', 'batch_size', 'eval_batches', 'num_heads'):
      base.check(getattr(self, f) > 0, f'sweep.{f}', getattr(self, f), 'must be positive')
    for d in self.widths + self.mqar_widths:
      base.check(d % self.num_heads == 0, 'sweep.widths', d,
                 f'must be divisible by num_heads={self.num_heads}')
    for name in self.variants:
      attnzoo.attention.get(name)  # unknown names fail here, listing the known ones


# Runtimes: see experiments/quality_vs_cost.py.
QUICK = Settings(lengths=(64, 256), widths=(64,), steps=150, batch_size=8,
                 learning_rates=(1e-3, 3e-3), warmup_steps=15, eval_batches=2,
                 mqar_widths=(32, 64), mqar_points=((64, 8),),
                 decode=DecodeSettings(length=4096, batch_size=4, num_layers=2, repeats=10))
FULL = Settings(lengths=(64, 256, 1024), widths=(64,), steps=1000, batch_size=16,
                learning_rates=(1e-3, 3e-3), mqar_widths=(32, 64, 128),
                mqar_points=((64, 8), (256, 32)), decode=DecodeSettings())
PRESETS = {'quick': QUICK, 'full': FULL}


# ---- what to run ------------------------------------------------------------------------------

def default_variants() -> tuple[str, ...]:
  """Every registered variant except the aliases (ALIASES) that would repeat another row."""
  return tuple(n for n in attnzoo.variant_names() if n not in ALIASES)


def form_of(name: str) -> str:
  """'causal' (next-token tasks) or 'masked' (bidirectional masked-token form)."""
  if name == MASKED_REFERENCE or not attnzoo.capabilities(name).causal:
    return 'masked'
  return 'causal'


def variant_options(name: str, T: int, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
  options = {**VARIANT_OPTIONS.get(name, {}), **overrides.get(name, {})}
  if 'max_len' in attnzoo.default_options(name):
    options['max_len'] = T
  return options


def run_id(spec: dict[str, Any]) -> str:
  """Short stable hash of everything that determines a run's result."""
  return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def mqar_settings(T: int, num_pairs: int | None = None) -> dict[str, int]:
  """MQAR at length T: T // 8 key-value pairs unless given (8 at T=64, as configs/mqar.py),
  and a vocabulary with room for that many distinct keys (at least 128). The pairs and queries
  sit at the start, so with a fixed number of pairs a causal model would see the same task at
  every T (the rest is padding): the pairs grow with T instead."""
  pairs = max(1, T // 8) if num_pairs is None else num_pairs
  return {'num_pairs': pairs, 'vocab_size': max(128, 2 * pairs + 2)}


def train_spec(settings: Settings, variant: str, task: str, T: int, d_model: int,
               **task_overrides) -> dict[str, Any]:
  task_settings = {**TASK_SETTINGS[task], **settings.task_overrides.get(task, {}),
                   **task_overrides}
  if task == 'mqar':
    task_settings = {**task_settings, **mqar_settings(T, task_settings.get('num_pairs'))}
  return {
      'kind': 'train', 'variant': variant, 'form': form_of(variant), 'task': task, 'T': T,
      'd_model': d_model, 'num_heads': settings.num_heads,
      'task_settings': task_settings, 'options': variant_options(variant, T, settings.options),
      'steps': settings.steps, 'batch_size': settings.batch_size,
      'learning_rates': list(settings.learning_rates), 'warmup_steps': settings.warmup_steps,
      'eval_batches': settings.eval_batches, 'seed': settings.seed,
  }


def decode_spec(ds: DecodeSettings, kv_heads: int) -> dict[str, Any]:
  H = ds.num_heads
  variant = CAUSAL_REFERENCE if kv_heads == H else 'mqa' if kv_heads == 1 else 'gqa'
  spec = dataclasses.asdict(ds)
  del spec['kv_heads']
  return {'kind': 'decode', 'variant': variant, 'num_kv_heads': kv_heads, **spec}


def plan(settings: Settings) -> list[dict[str, Any]]:
  """Every run the settings ask for, without duplicates (the width sweep reuses main runs)."""
  variants = settings.variants or default_variants()
  specs = []
  for task in settings.tasks:
    for T in settings.lengths:
      for d in settings.widths:
        specs += [train_spec(settings, v, task, T, d) for v in variants]
  for T, pairs in settings.mqar_points:
    for d in settings.mqar_widths:
      specs += [train_spec(settings, v, 'mqar', T, d, num_pairs=pairs) for v in variants]
  if settings.decode is not None:
    specs += [decode_spec(settings.decode, g) for g in settings.decode.kv_heads]
  unique = {}
  for s in specs:
    unique.setdefault(run_id(s), s)
  return list(unique.values())


# ---- one train run ----------------------------------------------------------------------------

def make_config(spec: dict[str, Any], learning_rate: float) -> ml_collections.ConfigDict:
  """The training ConfigDict of a train spec at one learning rate."""
  c = base_config()
  c.seed = spec['seed']
  ts = dict(spec['task_settings'])
  c.task = ml_collections.ConfigDict({'name': spec['task'], 'seq_len': spec['T'],
                                      'vocab_size': ts.pop('vocab_size')})
  c.model.num_layers, c.model.mlp = ts.pop('num_layers'), ts.pop('mlp')
  c.task.update(ts)
  c.model.d_model = spec['d_model']
  c.model.num_heads = c.model.num_kv_heads = spec['num_heads']
  c.model.max_len = spec['T']
  c.model.causal = spec['form'] == 'causal'
  c.model.attention.name = spec['variant']
  c.model.attention[spec['variant']].update(spec['options'])
  c.train.num_steps = spec['steps']
  c.train.batch_size = spec['batch_size']
  c.train.learning_rate = learning_rate
  c.train.warmup_steps = spec['warmup_steps']
  c.train.eval_batches = spec['eval_batches']
  c.train.eval_every = spec['steps']
  c.train.checkpoint_every = spec['steps']
  return c


def _device_batch(batch):
  return {k: jnp.asarray(v) for k, v in batch.items()
          if k in train.DEVICE_KEYS or k.startswith('mask_')}


def attention_flops(spec: dict[str, Any], model) -> float | None:
  """FLOPs of the attention core alone at the run's shapes, forward + backward (as in the train
  step: gradients for q, k, v and the variant's own parameters), times the number of layers."""
  attn = model.blocks[0].attn
  B, T = spec['batch_size'], spec['T']
  H, G, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
  core = attnzoo.make_attention(spec['variant'], rngs=nnx.Rngs(params=0, attention=1),
                                **spec['options'])
  graphdef, state = nnx.split(core)
  causal = spec['form'] == 'causal'
  kq, kk, kv = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(kq, (B, T, H, D))
  k = q if core.caps.shared_qk else jax.random.normal(kk, (B, T, G, D))
  v = jax.random.normal(kv, (B, T, G, D))

  def loss(m, q, k, v):
    return jnp.sum(m(q, k, v, causal=causal))

  def step(state, q, k, v):
    # Merged outside the differentiated function (as in training) so variants that draw
    # per-call randomness may update their RNG state.
    return nnx.grad(loss, argnums=(0, 1, 2, 3))(nnx.merge(graphdef, state), q, k, v)

  flops = cost.compiled_stats(step, state, q, k, v)['flops']
  return None if flops is None else len(model.blocks) * flops


def _evaluate(eval_step, state, config) -> dict[str, float]:
  totals = {}
  n = config.train.eval_batches
  for i in range(n):
    m = jax.device_get(eval_step(state, _device_batch(train.batch_for(config, i, 'eval'))))
    for k, v in m.items():
      totals[k] = totals.get(k, 0.0) + float(v) / n
  return totals


def train_once(spec: dict[str, Any], learning_rate: float, workdir: str,
               eval_step=None) -> dict[str, Any]:
  """Trains one learning rate: the train step is compiled once (its cost analyses recorded) and
  that executable runs every step; writes workdir/config.json and metrics.jsonl. `eval_step`
  from an earlier learning rate of the same spec is reused (same shapes: no recompile)."""
  config = make_config(spec, learning_rate)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json(indent=2))
  model, optimizer = train.build(config)
  graphdef, state = nnx.split((model, optimizer))
  train_step, new_eval_step = train.make_steps(graphdef)
  eval_step = eval_step or new_eval_step
  stats = cost.compiled_stats(train_step, state, _device_batch(train.batch_for(config, 1)))
  step_fn = stats.pop('compiled')
  # XLA's cost analysis counts a loop body once: FLOPs of a step with loops are a lower bound.
  stats['flops_loop'] = ' while(' in step_fn.as_text()
  times = []
  for step in range(1, spec['steps'] + 1):
    batch = _device_batch(train.batch_for(config, step))
    t0 = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  final_train = {k: float(v) for k, v in jax.device_get(metrics).items()}
  ev = _evaluate(eval_step, state, config)
  m = SCORED[spec['task']]
  steady = times[2:] or times
  out = {'learning_rate': learning_rate, 'loss': ev[f'loss_{m}'],
         'accuracy': ev[f'accuracy_{m}'], 'eval': ev, 'train_loss': final_train['loss'],
         'step_s': statistics.median(steady), 'train_s': sum(times), **stats,
         'params': cost.param_count(nnx.state(model, nnx.Param)),
         'kv_heads': model.blocks[0].attn.num_kv_heads}
  jsonl.write(os.path.join(workdir, 'metrics.jsonl'),
              [{'step': spec['steps'], 'split': 'train', **final_train},
               {'step': spec['steps'], 'split': 'eval', **ev}])
  out['_model'], out['_eval_step'] = model, eval_step
  return out


def best_of(per_lr: list[dict[str, Any]]) -> dict[str, Any]:
  """The learning rate with the lowest (finite) eval loss on the scored tokens, with a summary
  of the whole grid under `lr_grid`."""
  finite = [r for r in per_lr if math.isfinite(r['loss'])]
  best = dict(min(finite, key=lambda r: r['loss']) if finite else per_lr[0])
  best['lr_grid'] = [{k: r[k] for k in ('learning_rate', 'loss', 'accuracy', 'step_s')}
                     for r in per_lr]
  return best


def execute_train(spec: dict[str, Any], workdir: str) -> dict[str, Any]:
  """Trains every learning rate of the grid; the record keeps the best (lowest eval loss on the
  scored tokens) and a summary of each."""
  per_lr = []
  model = eval_step = None
  for lr in spec['learning_rates']:
    r = train_once(spec, lr, os.path.join(workdir, f'lr{lr:g}'), eval_step)
    model, eval_step = r.pop('_model'), r.pop('_eval_step')
    per_lr.append(r)
  record = best_of(per_lr)
  record['attn_flops'] = attention_flops(spec, model)
  record['cost_class'] = attnzoo.capabilities(spec['variant']).cost
  return record


# ---- one decode run ---------------------------------------------------------------------------

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


# ---- driver -----------------------------------------------------------------------------------

def execute(spec: dict[str, Any], workdir: str) -> dict[str, Any]:
  """Runs one spec in a fresh run directory; returns its results line (status ok | error)."""
  rid = run_id(spec)
  run_dir = os.path.join(workdir, RUNS, rid)
  shutil.rmtree(run_dir, ignore_errors=True)  # not finished (else it would be skipped): redo
  record = {'id': rid, **spec, 'backend': jax.default_backend(),
            'device': jax.devices()[0].device_kind}
  t0 = time.perf_counter()
  try:
    fn = execute_train if spec['kind'] == 'train' else execute_decode
    record.update(fn(spec, run_dir), status='ok')
  except Exception as e:  # noqa: BLE001  (one failing run must not stop the sweep)
    record.update(status='error', reason=f'{type(e).__name__}: {e}'[:1000])
  record['wall_s'] = time.perf_counter() - t0
  gc.collect()  # the run's jitted functions (and their executables) go with it
  return record


def read_results(workdir: str) -> list[dict[str, Any]]:
  return jsonl.read(os.path.join(workdir, RESULTS))


def describe(r: dict[str, Any]) -> str:
  if r['kind'] == 'decode':
    head = f'decode {r["variant"]:>6} G={r["num_kv_heads"]}'
  else:
    head = (f'{r["task"]:>9} T={r["T"]:<5} d={r["d_model"]:<4} {r["variant"]:>10} '
            f'({r["form"]})')
  if r.get('status') != 'ok':
    return f'{head}: {r.get("status")} {r.get("reason", "")[:200]}'
  if r['kind'] == 'decode':
    return (f'{head}: {r["token_s"] * 1e3:.2f} ms/token, KV {r["kv_bytes"] / 2**20:.0f} MiB')
  return (f'{head}: acc {r["accuracy"]:.3f} loss {r["loss"]:.3f} (lr {r["learning_rate"]:g}) '
          f'{r["step_s"] * 1e3:.1f} ms/step, compile {r["compile_s"]:.1f} s')


def run(workdir: str, settings: Settings, *, jobs: int = 1,
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Runs every planned run not yet finished in workdir/results.jsonl (errors are retried),
  appending each line as its run finishes; returns the new lines."""
  os.makedirs(workdir, exist_ok=True)
  done = {r['id'] for r in read_results(workdir) if r.get('status') == 'ok'}
  specs = plan(settings)
  todo = [s for s in specs if run_id(s) not in done]
  log(f'quality_vs_cost: {len(specs)} runs planned, {len(specs) - len(todo)} already done, '
      f'{len(todo)} to run ({jobs} job{"s" if jobs > 1 else ""})')
  new = []
  t0 = time.perf_counter()

  def finish(record):
    jsonl.append(os.path.join(workdir, RESULTS), record)
    new.append(record)
    log(f'  [{len(new)}/{len(todo)} {time.perf_counter() - t0:6.0f} s] {describe(record)}')

  if jobs <= 1:
    for spec in todo:
      finish(execute(spec, workdir))
  else:
    ctx = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
      futures = [pool.submit(execute, spec, workdir) for spec in todo]
      for fut in concurrent.futures.as_completed(futures):
        finish(fut.result())
  return new


# ---- runtime estimate -------------------------------------------------------------------------

def estimate_seconds(records: list[dict[str, Any]], settings: Settings) -> float | None:
  """Rough wall time of `settings` from measured runs (e.g. the quick preset's): each planned
  train run takes its measured (variant, task) run at the nearest length, with per-learning-rate
  overhead (compiles, evaluation) kept and the step time scaled by tokens per step, and, for the
  attention share of an N^2 variant's FLOPs, by T again. Runs with nothing comparable are left
  out (None if none is comparable). An estimate only: it ignores cache effects and load."""
  ok = [r for r in records if r.get('status') == 'ok']
  total, found = 0.0, False
  for spec in plan(settings):
    if spec['kind'] == 'decode':
      same = [r for r in ok if r['kind'] == 'decode']
      if same:
        total += statistics.median(r['wall_s'] for r in same)
      continue
    same = [r for r in ok if r['kind'] == 'train' and r['variant'] == spec['variant']
            and r['task'] == spec['task']]
    if not same:
      continue
    found = True
    r = min(same, key=lambda r: (abs(math.log(r['T'] / spec['T'])), -r['T'],
                                 abs(math.log(r['d_model'] / spec['d_model']))))
    n_lr = len(r['learning_rates'])
    steps_s = sum(g['step_s'] for g in r['lr_grid']) * r['steps']
    overhead = max(r['wall_s'] - steps_s, 0.0) / n_lr  # compiles, evaluation, batches
    a = (r['attn_flops'] or 0) / r['flops'] if r['cost_class'] == 'N^2' and r['flops'] else 0
    ratio = spec['T'] / r['T']
    scale = (spec['batch_size'] * spec['T'] * spec['d_model'] /
             (r['batch_size'] * r['T'] * r['d_model'])) * ((1 - a) + a * ratio)
    step_s = statistics.median(g['step_s'] for g in r['lr_grid']) * scale
    total += len(spec['learning_rates']) * (overhead + spec['steps'] * step_s)
  return total if found else None


# ---- report -----------------------------------------------------------------------------------

def _latest_ok(records):
  """Last ok line per run id (a rerun of a failed run supersedes its error line)."""
  table = {}
  for r in records:
    if r.get('status') == 'ok' or r['id'] not in table:
      table[r['id']] = r
  return list(table.values())


def _group_key(r):
  ts = {k: v for k, v in r['task_settings'].items()}
  return (r['task'], r['T'], r['d_model'], json.dumps(ts, sort_keys=True))


def _reference(rows, form):
  name = CAUSAL_REFERENCE if form == 'causal' else MASKED_REFERENCE
  return next((r for r in rows if r['variant'] == name and r.get('status') == 'ok'), None)


def _ratio(value, ref_value):
  if value is None or not ref_value:
    return ''
  return f' ({value / ref_value:.2f})'


def _fmt(x, fmt):
  return '–' if x is None else fmt.format(x)


def train_table(rows: list[dict[str, Any]]) -> list[str]:
  lines = ['| variant | form | cost | G | quality (acc) | loss | lr | ms/step (x ref) | '
           'peak MiB (x ref) | GFLOP/step (x ref) | attn share | compile s | params |',
           '|' + '---|' * 13]
  order = {n: i for i, n in enumerate((CAUSAL_REFERENCE, MASKED_REFERENCE))}
  rows = sorted(rows, key=lambda r: (r['form'], order.get(r['variant'], 9), r['variant']))
  for r in rows:
    if r.get('status') != 'ok':
      lines.append(f'| {r["variant"]} | {r["form"]} | | | {r.get("status")}: '
                   f'{r.get("reason", "")[:80]} |' + ' |' * 8)
      continue
    ref = _reference(rows, r['form'])
    g = lambda key: None if ref is None else ref.get(key)
    mib = None if r.get('peak_bytes') is None else r['peak_bytes'] / 2**20
    share = r['attn_flops'] / r['flops'] if r.get('attn_flops') and r.get('flops') else None
    loop = '†' if r.get('flops_loop') else ''
    lines.append(
        f'| {r["variant"]} | {r["form"]} | {r["cost_class"]} | {r["kv_heads"]} | '
        f'{r["accuracy"]:.3f} | {r["loss"]:.3f} | {r["learning_rate"]:g} | '
        f'{r["step_s"] * 1e3:.1f}{_ratio(r["step_s"], g("step_s"))} | '
        f'{_fmt(mib, "{:.1f}")}{_ratio(r.get("peak_bytes"), g("peak_bytes"))} | '
        f'{_fmt(r.get("flops") and r["flops"] / 1e9, "{:.2f}")}{loop}'
        f'{_ratio(r.get("flops"), g("flops"))} | {_fmt(share, "{:.0%}")} | '
        f'{r["compile_s"]:.1f} | {r["params"]:,} |')
  return lines


def width_table(rows: list[dict[str, Any]]) -> list[str]:
  widths = sorted({r['d_model'] for r in rows})
  variants = sorted({r['variant'] for r in rows},
                    key=lambda n: (n not in (CAUSAL_REFERENCE, MASKED_REFERENCE), n))
  lines = ['| variant | form | ' + ' | '.join(f'd={d}' for d in widths) + ' |',
           '|' + '---|' * (len(widths) + 2)]
  for v in variants:
    cells = []
    for d in widths:
      r = next((r for r in rows if r['variant'] == v and r['d_model'] == d), None)
      cells.append('–' if r is None else r.get('status') if r.get('status') != 'ok'
                   else f'{r["accuracy"]:.3f}')
    form = next(r['form'] for r in rows if r['variant'] == v)
    lines.append(f'| {v} | {form} | ' + ' | '.join(cells) + ' |')
  return lines


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


def report(workdir: str) -> str:
  """Writes report.md and the plots from workdir/results.jsonl alone; returns the Markdown."""
  records = _latest_ok(read_results(workdir))
  if not records:
    raise ValueError(f'no results in {os.path.join(workdir, RESULTS)}; run without '
                     '--report_only first')
  trains = [r for r in records if r['kind'] == 'train']
  decodes = [r for r in records if r['kind'] == 'decode']
  lines = ['# Quality against cost: every attention variant', '']
  if trains:
    first = trains[0]
    lrs = sorted({lr for r in trains for lr in r['learning_rates']})
    lines += [
        f'Budget per run: {first["steps"]} steps, batch {first["batch_size"]}, learning rates '
        f'{", ".join(f"{lr:g}" for lr in lrs)} (the one with the lowest eval loss on the scored '
        f'tokens is kept), seed {first["seed"]}, {first["num_heads"]} heads; '
        f'backend {first["backend"]}' + ('' if first['device'] == first['backend'] else
                                           f' ({first["device"]})')
        + f'; the report was built on a host with {os.cpu_count()} CPUs.',
        '',
        '- **quality**: eval accuracy (and loss, nats) on the scored tokens: the answers for '
        'copy and mqar, the repeated part for induction.',
        '- **form**: `causal` = next-token prediction; `masked` = the bidirectional masked-token '
        'form (`model.causal=False`; scored tokens replaced by a mask token and predicted in '
        'place) for variants that cannot be causal. Ratios (x ref) are to `causal` for causal '
        'rows and to `dense` (masked form) for masked rows; the two forms are different tasks, '
        'so compare quality within a form.',
        '- **ms/step**: median wall time of the compiled train step (forward, backward, AdamW) '
        'after compile; **peak MiB**: the compiled train step\'s arguments + outputs + '
        'temporaries; **GFLOP/step**: XLA cost analysis of the train step; **attn share**: the '
        'attention core alone compiled at the run\'s shapes, forward + backward, times layers, '
        'over the step\'s FLOPs. †: the step has loops (scans; the flash kernel in interpret '
        'mode) and XLA counts a loop body once, so its FLOPs (and attention share) are lower '
        'bounds.',
        '- **mqar** has T // 8 key-value pairs at length T (vocabulary at least 128) unless the '
        'heading says otherwise; exact variants (causal, blockwise, flash) compute the same '
        'function, so equal quality across them is expected.',
        '- **G**: K/V heads projected (mqa 1, gqa num_heads // 2).',
        '- Not trained separately: ' + '; '.join(f'`{k}` = {v}' for k, v in ALIASES.items())
        + '; in causal form `dense` is `causal`.',
        '',
    ]
    groups: dict[tuple, list] = {}
    for r in trains:
      groups.setdefault(_group_key(r), []).append(r)
    for (task, T, d, ts) in sorted(groups, key=lambda k: (TASKS.index(k[0]) if k[0] in TASKS
                                                          else 9, k[1], k[2], k[3])):
      extra = json.loads(ts)
      pairs = f', {extra["num_pairs"]} pairs' if 'num_pairs' in extra else ''
      lines += [f'## {task}, T={T}, d_model={d}{pairs}', '']
      lines += train_table(groups[(task, T, d, ts)]) + ['']
    tasks = [t for t in TASKS if any(r['task'] == t for r in trains)]
    lines += [f'![pareto {t}](pareto_{t}.png)' for t in tasks] + ['']
    for t in tasks:
      pareto_plot([r for r in trains if r['task'] == t and r.get('status') == 'ok'], t,
                  os.path.join(workdir, f'pareto_{t}.png'))
    width_groups = {}
    for r in trains:
      if r['task'] == 'mqar':
        width_groups.setdefault((r['T'], r['task_settings'].get('num_pairs')), []).append(r)
    width_groups = {k: v for k, v in width_groups.items()
                    if len({r['d_model'] for r in v}) > 1}
    if width_groups:
      lines += ['## MQAR accuracy against width', '',
                'Zoology (Arora et al. 2023): attention solves multi-query associative recall at '
                'small width; mixers with a fixed-size state need width growing with the number '
                'of key-value pairs. Accuracy on the answers:', '']
      for (T, pairs), rows in sorted(width_groups.items()):
        lines += [f'### T={T}, {pairs} pairs', ''] + width_table(rows) + ['']
      lines += ['![mqar width](mqar_width.png)', '']
      width_plot(width_groups, os.path.join(workdir, 'mqar_width.png'))
  if decodes:
    d = decodes[0]
    lines += [
        '## Decode cost: MHA vs GQA vs MQA', '',
        f'One greedy decode step with the KV cache (`attnzoo.decode`) at position T-1 of a '
        f'full cache: T={d["length"]}, batch {d["batch_size"]}, d_model {d["d_model"]}, '
        f'{d["num_heads"]} heads, {d["num_layers"]} layers with MLP, {d["positions"]} '
        f'positions, float32; median of {d["repeats"]} steps after compile (a step is two '
        'programs: attend, which reads the cache, and an in-place append).', '',
        '- KV bytes = 2 · L · B · T · G · D · 4, so MHA / GQA-G = H / G exactly.',
        '- Attention FLOPs per token do not depend on G (every query head still attends to T '
        'keys): GQA and MQA cut the bytes read, not the arithmetic. A decode step is fast by as '
        'much as it is bound by memory traffic; the R = H / G query heads sharing a K/V head '
        'raise the arithmetic intensity R-fold, and a 2-core CPU (tens of GFLOP/s against tens '
        'of GB/s) is compute-bound already at a small R, so its speed-ups stay below H / G; '
        'fixed per-step costs (weights, small ops, dispatch) cap them further at small batch.',
        '- Anchor: Ainslie et al. 2023 measure GQA-8 5.4x and MQA 6.3x faster than MHA per '
        'sample end to end on T5-XXL (TPU), where decoding is bound by memory bandwidth.', '']
    lines += decode_table(decodes) + ['', '![decode](decode.png)', '']
    decode_plot([r for r in decodes if r.get('status') == 'ok'],
                os.path.join(workdir, 'decode.png'))
  walls = [r['wall_s'] for r in records if 'wall_s' in r]
  lines += [f'Sum of run wall times: {sum(walls) / 60:.1f} min over {len(walls)} runs.', '']
  text = '\n'.join(lines)
  with open(os.path.join(workdir, REPORT), 'w') as f:
    f.write(text)
  return text


# ---- plots ------------------------------------------------------------------------------------

def pareto_front(points: list[tuple[float, float]]) -> list[int]:
  """Indices of the points no other point beats (cost <= and quality >=, one strictly), sorted
  by cost: the quality-against-cost frontier."""
  front = []
  for i, (c, q) in enumerate(points):
    dominated = any((c2 <= c and q2 >= q) and (c2 < c or q2 > q)
                    for j, (c2, q2) in enumerate(points) if j != i)
    if not dominated:
      front.append(i)
  return sorted(front, key=lambda i: points[i])


def _plt():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def _colors(names):
  plt = _plt()
  cmap = plt.get_cmap('tab20')
  return {n: cmap(i % 20) for i, n in enumerate(sorted(names))}


def pareto_plot(rows: list[dict[str, Any]], task: str, path: str):
  """Quality (accuracy on scored tokens) against ms/step, one panel per length, with the
  frontier of each form."""
  plt = _plt()
  import matplotlib.ticker  # noqa: F401  (after the Agg backend is chosen)
  import matplotlib
  lengths = sorted({r['T'] for r in rows})
  if not lengths:
    return
  colors = _colors({r['variant'] for r in rows})
  fig, axes = plt.subplots(1, len(lengths), figsize=(5.5 * len(lengths), 4.5), squeeze=False)
  for ax, T in zip(axes[0], lengths):
    pts = [r for r in rows if r['T'] == T]
    for r in pts:
      filled = r['form'] == 'causal'
      ax.scatter(r['step_s'] * 1e3, r['accuracy'], s=30 + r['d_model'] / 2,
                 facecolors=colors[r['variant']] if filled else 'none',
                 edgecolors=colors[r['variant']], linewidths=1.5, zorder=3)
      label = r['variant'] + ('' if len({p['d_model'] for p in pts}) == 1
                              else f' d{r["d_model"]}')
      ax.annotate(label, (r['step_s'] * 1e3, r['accuracy']), fontsize=7,
                  xytext=(3, 3), textcoords='offset points')
    for form, ls in (('causal', '-'), ('masked', '--')):  # different tasks: one frontier each
      same = [r for r in pts if r['form'] == form]
      xy = [(r['step_s'] * 1e3, r['accuracy']) for r in same]
      front = [xy[i] for i in pareto_front(xy)]
      if front:
        ax.step([x for x, _ in front], [y for _, y in front], where='post', color='black',
                ls=ls, lw=1, alpha=0.6, label=f'Pareto frontier ({form})', zorder=2)
    ax.set_xscale('log')
    plain = matplotlib.ticker.FuncFormatter(lambda x, _: f'{x:g}')
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis='x', which='both', labelsize=7)
    ax.set_xlabel('train step (ms, log)')
    ax.set_ylabel(f'{task} accuracy ({SCORED[task]} tokens)')
    ax.set_title(f'{task}, T={T} (filled: causal, hollow: masked form)', fontsize=9)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=7, loc='best')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def width_plot(groups: dict[tuple, list], path: str):
  plt = _plt()
  colors = _colors({r['variant'] for rows in groups.values() for r in rows})
  fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
  for ax, ((T, pairs), rows) in zip(axes[0], sorted(groups.items())):
    for v in sorted({r['variant'] for r in rows}):
      pts = sorted((r['d_model'], r['accuracy']) for r in rows
                   if r['variant'] == v and r.get('status') == 'ok')
      form = next(r['form'] for r in rows if r['variant'] == v)
      ax.plot([d for d, _ in pts], [a for _, a in pts], marker='o', color=colors[v],
              ls='-' if form == 'causal' else '--', label=v + (' (masked)' if form != 'causal'
                                                               else ''))
    ax.set_xscale('log', base=2)
    widths = sorted({r['d_model'] for r in rows})
    ax.set_xticks(widths, [str(d) for d in widths])
    ax.minorticks_off()
    ax.set_xlabel('d_model')
    ax.set_ylabel('MQAR answer accuracy')
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f'MQAR T={T}, {pairs} key-value pairs', fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


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
