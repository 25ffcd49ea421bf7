"""Tiny config for tests: 2 layers, d=16, T=32, a handful of steps; seconds on a CPU.

Command:  python experiments/train.py --config=configs/tiny.py --workdir=/tmp/tiny
Runtime:  a few seconds.
Expected: runs end to end (no quality claim).
"""
from attnzoo.config import base_config


def get_config():
  c = base_config()
  c.task.seq_len = 32
  c.task.vocab_size = 16
  c.task.min_period = 3
  c.task.max_period = 8
  c.model.d_model = 16
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.max_len = 32
  c.train.num_steps = 4
  c.train.batch_size = 8
  c.train.warmup_steps = 1
  c.train.eval_every = 2
  c.train.eval_batches = 1
  c.train.checkpoint_every = 2
  return c
