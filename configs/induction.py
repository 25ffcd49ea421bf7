"""Induction task: [BOS] + random segment (period 8-24, varying) repeated to T=64, V=64.

Command:  python experiments/train.py --config=configs/induction.py --workdir=runs/induction
          (1-layer control: add --config.model.num_layers=1)
Runtime:  see the README's measured figures (2-core CPU).
Expected: 2 layers: eval loss_repeat < 0.5 nats (from about ln(64) = 4.2); 1 layer stays above
          1.5 nats: induction needs a previous-token head composed with a second layer.
"""
from attnzoo.config import base_config


def get_config():
  c = base_config()
  c.model.num_layers = 2
  c.model.mlp = False
  c.train.num_steps = 1500
  c.train.eval_every = 100
  c.train.checkpoint_every = 500
  return c
