"""Multi-query associative recall (Zoology, Arora et al. 2023): 8 key-value pairs, T=64, V=128.

Command:  python experiments/train.py --config=configs/mqar.py --workdir=runs/mqar
Runtime:  a few minutes on a 2-core CPU.
Expected: answer accuracy (eval accuracy) near 1.0 for dense attention at d_model=64.
"""
from attnzoo.config import base_config


def get_config():
  c = base_config()
  c.task.name = 'mqar'
  c.task.vocab_size = 128
  c.task.num_pairs = 8
  del c.task.min_period, c.task.max_period
  c.model.mlp = True
  c.train.num_steps = 2000
  return c
