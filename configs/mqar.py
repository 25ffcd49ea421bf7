"""Multi-query associative recall (Zoology, Arora et al. 2023): 8 key-value pairs, T=64, V=128.

Command:  python experiments/train.py --config=configs/mqar.py --workdir=runs/mqar
Runtime:  a few minutes on a 2-core CPU (2000 steps, batch 64).
Expected: with these settings (learned positions, MLP) dense attention stalls on a plateau near
          0.34 answer accuracy (measured: it never solved MQAR with learned positions). With
          RoPE, 2 attention-only layers, lr 3e-3 (`--config.model.positions=rope
          --config.model.mlp=False --config.train.learning_rate=3e-3`) dense reached 1.000 on
          seeds 0 and 1 at T=32 / 8 pairs in 1500 steps, but stayed near 0.3 on 1 of 2 seeds at
          T=48 / 12 pairs; configs/quality_vs_cost.py uses that budget, see
          docs/results/quality_vs_cost/report.md.
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
