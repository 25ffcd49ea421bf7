"""The one training loop: `train_and_evaluate(config, workdir, hooks=())`.

Every run of every study goes through it. It runs on a `data` x `seq` mesh from `config.mesh`
(`parallel.py`: batch split over `data`, sequence over `seq` for the `ring` variant, parameters
replicated), so the same code runs on 1 CPU, 8 fake CPU devices, a GPU/TPU host, or several
hosts after `jax.distributed.initialize()`.

A workdir holds one run:
  config.json      the config (checked against a rerun's before anything is written)
  metrics.jsonl    one JSON object per line: {step, split: train|eval|<hook>, ...}; eval rows at
                   step 0, every `train.eval_every` steps and at the end
  summary.json     the final eval row, cost (compile s, FLOPs and peak bytes of the train step,
                   median step s, parameters) and what each hook's `at_end` returned
  checkpoints/     Orbax checkpoints every `train.checkpoint_every` steps and at the end

Rerunning with the same workdir resumes from the newest checkpoint that restores; metric rows
after it are dropped (they will be redone) and a torn last line is repaired. A rerun that
changes what was trained is refused, naming the differing keys; changes in SAFE_KEYS are
allowed and recorded in config_changes.jsonl. A lock file keeps a second process out. A
non-finite loss or gradient stops training (or, with `train.skip_nonfinite`, skips the step), so
a non-finite state is never checkpointed.

Hooks (studies plug in here): objects with a `name` and optional methods
  every_eval(run, step) -> dict | None   written as a `split=<name>` row of metrics.jsonl
  at_end(run) -> dict | None             stored as summary[<name>]
where `run` is a `Run` (config, workdir, graphdef, state, eval batches, the eval-mode model).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import socket
import statistics
import time
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from flax import nnx

from attnzoo import config as config_lib
from attnzoo import cost, jsonl, parallel, tasks
from attnzoo.checkpoint import Checkpointer
from attnzoo.model import Decoder

DEVICE_KEYS = ('inputs', 'targets', 'weights', 'source', 'key_mask', 'positions')
METRICS, SUMMARY, CONFIG, LOCK = 'metrics.jsonl', 'summary.json', 'config.json', '.lock'
# Config keys a resumed run may change: they change neither the weights trained so far nor
# the data (`study.*` holds a study's analysis settings).
SAFE_KEYS = ('train.num_steps', 'train.eval_every', 'train.eval_batches',
             'train.checkpoint_every', 'train.stop_after', 'train.skip_nonfinite')
SAFE_PREFIXES = ('study.', 'mesh.')  # the mesh changes where, not what, is computed


class RunError(ValueError):
  """A user-facing problem with a run (bad config, locked or incompatible workdir)."""


class Diverged(RuntimeError):
  """Training produced a non-finite loss or gradient."""


def model_config(config):
  """The model ConfigDict with the vocabulary the task needs (+1 mask token if bidirectional)."""
  cfg = ml_collections.ConfigDict(config.model.to_dict())
  cfg.vocab_size = config.task.vocab_size + (0 if cfg.get('causal', True) else 1)
  cfg.max_len = max(cfg.get('max_len', 0), config.task.seq_len)
  if config.task.name == 'copy' and config.task.get('encoder_decoder', False):
    cfg.cross_attention = True
  return cfg


def build(config):
  """Model and optimizer for `config` (parameters drawn from config.seed)."""
  model = Decoder(model_config(config), rngs=nnx.Rngs(params=config.seed,
                                                      attention=config.seed + 1))
  t = config.train
  warmup = min(t.warmup_steps, t.num_steps - 1)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, t.learning_rate, warmup, max(t.num_steps, warmup + 1),
      end_value=t.learning_rate * t.get('final_lr_fraction', 0.1))
  tx = optax.chain(optax.clip_by_global_norm(t.grad_clip),
                   optax.adamw(schedule, weight_decay=t.weight_decay))
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def batch_for(config, step: int, split: str = 'train', batch_size: int | None = None):
  """Host batch (NumPy) for a step; depends only on (config.seed, step, split)."""
  return tasks.make_batch(config.task, seed=config.seed, step=step, split=split,
                          batch_size=batch_size or config.train.batch_size,
                          causal=config.model.get('causal', True),
                          vocab_size=config.task.vocab_size)


def device_batch(batch, sharding=None):
  """The model's inputs of a host batch as arrays (sharded along the batch axis if given)."""
  batch = {k: v for k, v in batch.items() if k in DEVICE_KEYS or k.startswith('mask_')}
  if sharding is None:
    return {k: jnp.asarray(v) for k, v in batch.items()}
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
          for k, v in batch.items()}


def metrics_of(model, batch):
  """Weighted cross-entropy `loss`, `accuracy` on the weighted tokens, `loss_<m>`/`accuracy_<m>`
  for each metric mask `mask_<m>` in the batch. `model` is any callable with the Decoder's
  signature (e.g. a head-ablated view of one)."""
  logits = model(batch['inputs'], source=batch.get('source'), key_mask=batch.get('key_mask'),
                 positions=batch.get('positions'))
  xent = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                         batch['targets'])
  correct = (logits.argmax(-1) == batch['targets']).astype(jnp.float32)
  masks = {'': batch['weights']} | {k[5:]: v for k, v in batch.items() if k.startswith('mask_')}
  out = {}
  for name, m in masks.items():
    n = jnp.maximum(m.sum(), 1.0)
    suffix = f'_{name}' if name else ''
    out['loss' + suffix] = (xent * m).sum() / n
    out['accuracy' + suffix] = (correct * m).sum() / n
  return out


def make_steps(graphdef, *, skip_nonfinite: bool = False, state_sharding=None):
  """Jitted pure train and eval steps over the split (model, optimizer) state. With
  `skip_nonfinite`, a step whose loss or gradient norm is not finite leaves the state as it was.
  `state_sharding` pins the new state's sharding to the old one's (so one compiled step serves
  every step)."""

  @functools.partial(jax.jit, out_shardings=(state_sharding, None) if state_sharding else None)
  def train_step(state, batch):
    old = jax.tree.leaves(state)  # plain arrays: merging may hand `state`'s variables to the model
    model, optimizer = nnx.merge(graphdef, state)
    def loss_fn(model):
      m = metrics_of(model, batch)
      return m['loss'], m
    grads, metrics = nnx.grad(loss_fn, has_aux=True)(model)
    metrics['grad_norm'] = optax.tree.norm(grads)
    optimizer.update(model, grads)
    new_state = nnx.state((model, optimizer))
    params_finite = jnp.all(jnp.stack([jnp.isfinite(x).all() for x in
                                       jax.tree.leaves(nnx.state(model, nnx.Param))]))
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm']) & params_finite
    metrics['finite'] = finite.astype(jnp.float32)
    if skip_nonfinite:
      leaves, treedef = jax.tree.flatten(new_state)
      new_state = jax.tree.unflatten(treedef, jax.lax.cond(finite, lambda: leaves, lambda: old))
    return new_state, metrics

  @jax.jit
  def eval_step(state, batch):
    model, _ = nnx.merge(graphdef, state)
    model.eval()
    return metrics_of(model, batch)

  return train_step, eval_step


@dataclasses.dataclass
class Run:
  """What a hook sees: the run's config, workdir and current state."""
  config: ml_collections.ConfigDict
  workdir: str
  graphdef: Any
  state: Any
  eval_step: Any
  sharding: Any
  step: int = 0

  def model(self):
    """The current model, in eval mode (a copy: changing it does not change the run)."""
    model, _ = nnx.merge(self.graphdef, self.state)
    model.eval()
    return model

  def eval_batches(self):
    """The eval batches (host NumPy), the same at every eval."""
    return [batch_for(self.config, i, 'eval') for i in range(self.config.train.eval_batches)]

  def evaluate(self) -> dict[str, float]:
    """Eval metrics averaged over the eval batches."""
    totals = {}
    batches = self.eval_batches()
    for b in batches:
      m = jax.device_get(self.eval_step(self.state, device_batch(b, self.sharding)))
      for k, v in m.items():
        totals[k] = totals.get(k, 0.0) + float(v) / len(batches)
    return totals


class Hook(Protocol):
  name: str


# ---- the workdir: lock, config check, resume --------------------------------------------------

def _flat(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out |= _flat(v, f'{prefix}{k}.')
    else:
      out[f'{prefix}{k}'] = v
  return out


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """{key: (old, new)} of the differing leaves; other variants' option sub-dicts are ignored
  (switching `name` is itself a change, and a newly registered variant must not look like one),
  and so is a key the old run lacks that has its default value (newer code, same run)."""
  keep = lambda d: {k: v for k, v in _flat(d).items()
                    if not k.startswith('model.attention.') or k == 'model.attention.name'
                    or k.startswith(f'model.attention.{d["model"]["attention"]["name"]}.')}
  a, b = keep(old), keep(new)
  missing = object()
  # A key added to the code after the run was written is a change only away from its default.
  default = _flat(json.loads(config_lib.base_config().to_json()))
  return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(a.keys() | b.keys())
          if a.get(k, missing) != b.get(k, missing)
          and not (k not in a and k in default and b[k] == default[k])}


def unsafe(changes) -> list[str]:
  return [k for k in changes if k not in SAFE_KEYS and not k.startswith(SAFE_PREFIXES)]


class _Lock:
  """workdir/.lock while a process trains there: pid, host and start time of the holder."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK)
    self.held = False

  def __enter__(self):
    me = {'pid': os.getpid(), 'host': socket.gethostname(),
          'started': time.strftime('%Y-%m-%d %H:%M:%S')}
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      except FileExistsError:
        try:
          with open(self.path) as f:
            holder = json.load(f)
        except (OSError, json.JSONDecodeError):
          holder = {}
        if holder.get('host') == me['host'] and not _alive(holder.get('pid', -1)):
          os.remove(self.path)  # stale: its process is gone
          continue
        raise RunError(f'workdir={os.path.dirname(self.path)!r} is in use by pid '
                       f'{holder.get("pid")} on {holder.get("host")} since '
                       f'{holder.get("started")} (remove {LOCK} if that process is gone)')
      with os.fdopen(fd, 'w') as f:
        json.dump(me, f)
      self.held = True
      return self
    raise RunError(f'could not take the lock {self.path}')

  def __exit__(self, *exc):
    if self.held:
      os.remove(self.path)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return pid > 0


def _read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, obj):
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def _finite(row: dict) -> bool:
  return all(np.isfinite(v) for v in row.values() if isinstance(v, float))


# ---- the loop ---------------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       hooks: Sequence[Hook] = (), *, log=print) -> dict:
  """Trains config.model on config.task for config.train.num_steps; returns the last eval row.
  A run already finished with this config is not retrained (its final eval row is returned)."""
  mesh = parallel.make_mesh(config)
  config_lib.validate(config, num_devices=mesh.shape['data'])
  with jax.set_mesh(mesh):  # the ring variant finds its `seq` axis here
    return _train(config, workdir, hooks, mesh, log)


def _train(config, workdir, hooks, mesh, log):
  t = config.train
  sharding = parallel.batch_sharding(mesh)
  writer = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  path = lambda name: os.path.join(workdir, name)
  with (_Lock(workdir) if writer else _NoLock()):
    new = json.loads(config.to_json())
    old = _read_json(path(CONFIG))
    changes = {} if old is None else config_changes(old, new)
    ckpt = Checkpointer(workdir)
    has_checkpoint = ckpt.latest_step() is not None
    if has_checkpoint and unsafe(changes):
      ckpt.close()
      diff = ', '.join(f'{k} ({old_v!r} -> {new_v!r})' for k, (old_v, new_v) in changes.items()
                       if k in unsafe(changes))
      raise RunError(f'workdir={workdir!r} holds a run trained with another config; differing '
                     f'keys: {diff}. Use another --workdir, or delete this one to start over.')
    summary = _read_json(path(SUMMARY))
    # a finished run resumed after a safe change keeps counting its time
    before = summary if has_checkpoint and summary else {}
    if has_checkpoint and not changes and summary and summary.get('step') == t.num_steps:
      ckpt.close()
      log(f'{workdir}: already trained to step {t.num_steps}; reusing it')
      return summary['final']

    model, optimizer = build(config)
    graphdef, state = nnx.split((model, optimizer))
    del model, optimizer
    state = jax.device_put(state, parallel.replicated(mesh))
    start, state = ckpt.restore_newest(state, set_aside=writer)
    start = start or 0
    if start > t.num_steps:
      raise RunError(f'train.num_steps={t.num_steps}: below the step {start} this workdir '
                     'was already trained to')
    if writer:
      if changes and start:
        jsonl.append(path('config_changes.jsonl'),
                     {'step': start, 'changes': {k: list(v) for k, v in changes.items()}})
      _write_json(path(CONFIG), new)
      # Rows after the step we resume from are redone; without a checkpoint, all of them.
      jsonl.write(path(METRICS), [r for r in jsonl.read(path(METRICS))
                                  if start and r['step'] <= start])
      if os.path.exists(path(SUMMARY)):
        os.remove(path(SUMMARY))
    if start:
      log(f'Resumed from the checkpoint at step {start} in {workdir}')

    train_step, eval_step = make_steps(graphdef, skip_nonfinite=t.get('skip_nonfinite', False),
                                       state_sharding=jax.tree.map(lambda x: x.sharding, state))
    run = Run(config, workdir, graphdef, state, eval_step, sharding, start)
    stats = cost.compiled_stats(train_step, state, device_batch(batch_for(config, 1), sharding))
    step_fn = stats.pop('compiled')

    def log_eval(step, train_row=None):
      run.state, run.step = state, step
      rows = [] if train_row is None else [{'step': step, 'split': 'train', **train_row}]
      ev = run.evaluate()
      rows.append({'step': step, 'split': 'eval', **ev})
      for hook in hooks:
        extra = getattr(hook, 'every_eval', lambda run, step: None)(run, step)
        if extra:
          rows.append({'step': step, 'split': hook.name, **extra})
      if writer:
        jsonl.append(path(METRICS), *rows)
      return ev

    stop = min(t.num_steps, t.get('stop_after', 0) or t.num_steps)
    tokens_per_step = t.batch_size * config.task.seq_len
    wall0 = time.perf_counter()
    ev = log_eval(0) if start == 0 else None
    bar = tqdm.tqdm(total=t.num_steps, initial=start, desc=f'train {os.path.basename(workdir)}',
                    unit='step', dynamic_ncols=True, mininterval=2.0, disable=not writer)
    times, skipped = [], 0
    for step in range(start + 1, stop + 1):
      batch = device_batch(batch_for(config, step), sharding)
      t0 = time.perf_counter()
      state, train_metrics = step_fn(state, batch)
      loss, grad_norm, finite = (float(x) for x in jax.device_get(
          (train_metrics['loss'], train_metrics['grad_norm'], train_metrics['finite'])))
      times.append(time.perf_counter() - t0)
      bar.update(1)
      if not finite:
        if not t.get('skip_nonfinite', False):
          bar.close()
          ckpt.close()
          kept = ckpt.latest_step()
          raise Diverged(f'train: non-finite loss={loss} / grad_norm={grad_norm} / parameters '
                         f'at step {step}; '
                         f'nothing after step {kept or 0} was checkpointed. Lower '
                         'train.learning_rate, or set train.skip_nonfinite=True to skip such '
                         'steps.')
        skipped += 1
      if step % t.eval_every == 0 or step == t.num_steps:
        train_row = {k: float(v) for k, v in jax.device_get(train_metrics).items()}
        rate = len(times[-t.eval_every:]) / max(sum(times[-t.eval_every:]), 1e-9)
        train_row |= {'steps_per_s': rate, 'tokens_per_s': rate * tokens_per_step,
                      'skipped_steps': skipped}
        ev = log_eval(step, train_row)
        bar.set_postfix(loss=f'{train_row["loss"]:.3f}', eval_loss=f'{ev["loss"]:.3f}')
      if step % t.checkpoint_every == 0 or step == stop:
        ckpt.save(step, state)
    bar.close()
    if ev is None or stop == start:  # no eval at the last step: the restored/final state's
      run.state = state
      ev = run.evaluate()
    run.state, run.step = state, stop
    if stop < t.num_steps:  # stopped early on purpose (train.stop_after)
      ckpt.close()
      return {'step': stop, 'split': 'eval', **ev}
    ckpt.close()
    summary = {'step': stop, 'final': {'step': stop, 'split': 'eval', **ev},
               'wall_s': before.get('wall_s', 0.0) + time.perf_counter() - wall0,
               'train_s': before.get('train_s', 0.0) + sum(times),
               'step_s': statistics.median(times[1:] or times) if times else None,
               'params': cost.param_count(nnx.state(run.model(), nnx.Param)),
               'devices': int(mesh.size), 'backend': jax.default_backend(), **stats}
    for hook in hooks:
      extra = getattr(hook, 'at_end', lambda run: None)(run)
      if extra is not None:
        summary[hook.name] = extra
    if writer:
      _write_json(path(SUMMARY), summary)
    return summary['final']


class _NoLock:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    pass


def load_config(workdir: str) -> ml_collections.ConfigDict:
  config = _read_json(os.path.join(workdir, CONFIG))
  if config is None:
    raise RunError(f'workdir={workdir!r}: no {CONFIG} (not a training run)')
  return ml_collections.ConfigDict(config)


def load_summary(workdir: str) -> dict | None:
  """summary.json of a finished run (None while it is not finished)."""
  return _read_json(os.path.join(workdir, SUMMARY))


def load_run(workdir: str, step: int | None = None):
  """(model, config) restored from a run's newest checkpoint that restores (or `step`); the
  model is in eval mode."""
  config = load_config(workdir)
  model, optimizer = build(config)
  graphdef, state = nnx.split((model, optimizer))
  ckpt = Checkpointer(workdir, create=False)
  try:
    if step is None:
      step, state = ckpt.restore_newest(state, set_aside=False)
    else:
      state = ckpt.restore(state, step)
  finally:
    ckpt.close()
  if step is None:
    raise RunError(f'workdir={workdir!r}: no checkpoint under checkpoints/ restores')
  model, _ = nnx.merge(graphdef, state)
  model.eval()
  return model, config
