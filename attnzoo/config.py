"""The base ConfigDict every configs/*.py file starts from.

`model.attention` holds `name` plus one sub-dict of options per registered variant, filled
from each variant's defaults, so `--config.model.attention.name=performer` swaps the variant
without losing another variant's options, and new variants appear here automatically.
"""
from __future__ import annotations

import ml_collections

from attnzoo import attention


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.task = ml_collections.ConfigDict()
  c.task.name = 'induction'
  c.task.seq_len = 64
  c.task.vocab_size = 64
  c.task.min_period = 8
  c.task.max_period = 24

  c.model = ml_collections.ConfigDict()
  c.model.num_layers = 2
  c.model.d_model = 64
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.model.mlp = False
  c.model.positions = 'learned'
  c.model.max_len = 64
  c.model.causal = True
  c.model.smear_keys = False
  c.model.attention = ml_collections.ConfigDict({'name': 'causal'})
  for name in attention.variant_names():
    c.model.attention[name] = attention.default_options(name)

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.batch_size = 64
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 50
  c.train.weight_decay = 0.0
  c.train.grad_clip = 1.0
  c.train.eval_every = 100
  c.train.eval_batches = 4
  c.train.checkpoint_every = 500
  c.train.stop_after = 0  # > 0: stop (checkpointed) after this step, e.g. to split a run

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # batch split over this many devices; -1: all the devices seq leaves
  c.mesh.seq = 1  # sequence split over this many devices (ring attention)
  return c
