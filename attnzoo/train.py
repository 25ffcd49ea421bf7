"""Config-driven training: `train_and_evaluate(config, workdir)`.

Runs on a `data` x `seq` mesh from `config.mesh` (`parallel.py`: batch split over `data`,
sequence over `seq`, parameters replicated), so the same code runs on 1 CPU, 8 fake CPU
devices, a GPU/TPU host, or several hosts after `jax.distributed.initialize()`. Writes
workdir/config.json and workdir/metrics.jsonl (one JSON object per line: step, split, loss,
accuracy, per-mask losses, steps_per_s, tokens_per_s); checkpoints every
`train.checkpoint_every` steps and resumes from the latest one when rerun with the same workdir.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax
import tqdm
from flax import nnx

from attnzoo import jsonl, parallel, tasks
from attnzoo.checkpoint import Checkpointer
from attnzoo.model import Decoder

DEVICE_KEYS = ('inputs', 'targets', 'weights', 'source', 'key_mask')


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


def batch_for(config, step: int, split: str = 'train'):
  """Host batch (NumPy) for a step; depends only on (config.seed, step, split)."""
  return tasks.make_batch(config.task, seed=config.seed, step=step, split=split,
                          batch_size=config.train.batch_size,
                          causal=config.model.get('causal', True),
                          vocab_size=config.task.vocab_size)


def metrics_of(model, batch):
  """Weighted cross-entropy `loss`, `accuracy` on the weighted tokens, `loss_<m>`/`accuracy_<m>`
  for each metric mask `mask_<m>` in the batch."""
  logits = model(batch['inputs'], source=batch.get('source'), key_mask=batch.get('key_mask'))
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


def make_steps(graphdef):
  """Jitted pure train and eval steps over the split (model, optimizer) state."""

  @jax.jit
  def train_step(state, batch):
    model, optimizer = nnx.merge(graphdef, state)
    def loss_fn(model):
      m = metrics_of(model, batch)
      return m['loss'], m
    grads, metrics = nnx.grad(loss_fn, has_aux=True)(model)
    metrics['grad_norm'] = optax.tree.norm(grads)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), metrics

  @jax.jit
  def eval_step(state, batch):
    model, _ = nnx.merge(graphdef, state)
    model.eval()
    return metrics_of(model, batch)

  return train_step, eval_step


def _shard_batch(batch, sharding):
  """Global host batch -> arrays sharded along the batch axis (each host fills its shards)."""
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
          for k, v in batch.items() if k in DEVICE_KEYS or k.startswith('mask_')}


def evaluate(eval_step, state, config, sharding):
  totals = {}
  n = config.train.get('eval_batches', 4)
  for i in range(n):
    m = jax.device_get(eval_step(state, _shard_batch(batch_for(config, i, 'eval'), sharding)))
    for k, v in m.items():
      totals[k] = totals.get(k, 0.0) + float(v) / n
  return totals


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains config.model on config.task for config.train.num_steps; returns the last eval row."""
  mesh = parallel.make_mesh(config)
  with jax.set_mesh(mesh):  # the ring variant finds its `seq` axis here
    return _train(config, workdir, mesh)


def _train(config, workdir, mesh):
  t = config.train
  data_sharding = parallel.batch_sharding(mesh)
  writer = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  if writer:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json(indent=2))

  model, optimizer = build(config)
  graphdef, state = nnx.split((model, optimizer))
  state = jax.device_put(state, parallel.replicated(mesh))
  train_step, eval_step = make_steps(graphdef)
  ckpt = Checkpointer(workdir)
  start = 0
  if ckpt.latest_step() is not None:
    start = ckpt.latest_step()
    state = ckpt.restore(state, start)
    if writer:
      # Rows written after the checkpoint we resume from will be redone.
      jsonl.write(metrics_path, [r for r in jsonl.read(metrics_path) if r['step'] <= start])
    print(f'Resumed from checkpoint at step {start} in {workdir}')

  stop = min(t.num_steps, t.get('stop_after', 0) or t.num_steps)
  tokens_per_step = t.batch_size * config.task.seq_len
  last = {}
  bar = tqdm.tqdm(total=t.num_steps, initial=start, desc='train', unit='step',
                  dynamic_ncols=True, mininterval=2.0, disable=not writer)
  tick, tick_step = time.perf_counter(), start
  for step in range(start + 1, stop + 1):
    state, train_metrics = train_step(state, _shard_batch(batch_for(config, step), data_sharding))
    bar.update(1)
    if step == start + 1:  # first step includes compilation: keep it out of the throughput
      jax.block_until_ready(state)
      tick, tick_step = time.perf_counter(), step
    if step % t.eval_every == 0 or step == t.num_steps:
      train_row = {k: float(v) for k, v in jax.device_get(train_metrics).items()}
      elapsed = time.perf_counter() - tick
      rate = (step - tick_step) / elapsed if step > tick_step else float('nan')
      train_row |= {'steps_per_s': rate, 'tokens_per_s': rate * tokens_per_step}
      eval_row = evaluate(eval_step, state, config, data_sharding)
      bar.set_postfix(loss=f'{train_row["loss"]:.3f}', eval_loss=f'{eval_row["loss"]:.3f}')
      if writer:
        jsonl.append(metrics_path, {'step': step, 'split': 'train', **train_row},
                     {'step': step, 'split': 'eval', **eval_row})
      last = {'step': step, 'split': 'eval', **eval_row}
      tick, tick_step = time.perf_counter(), step
    if step % t.checkpoint_every == 0 or step == stop:
      ckpt.save(step, state)
  bar.close()
  ckpt.close()
  return last


def load_config(workdir: str) -> ml_collections.ConfigDict:
  with open(os.path.join(workdir, 'config.json')) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_run(workdir: str):
  """(model, config) restored from a run's latest checkpoint; the model is in eval mode."""
  config = load_config(workdir)
  model, optimizer = build(config)
  graphdef, state = nnx.split((model, optimizer))
  ckpt = Checkpointer(workdir)
  if ckpt.latest_step() is None:
    raise ValueError(f'workdir={workdir!r}: no checkpoint found under checkpoints/')
  state = ckpt.restore(state)
  ckpt.close()
  model, _ = nnx.merge(graphdef, state)
  model.eval()
  return model, config
