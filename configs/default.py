"""Default: 2-layer attention-only causal decoder on the induction task (T=64, V=64).

Command:  python experiments/train.py --config=configs/default.py --workdir=runs/default
Runtime:  about a minute on a 2-core CPU (1000 steps).
Expected: repeat-part loss (eval loss_repeat) falls from about ln(64) = 4.2 nats to below 0.5.
"""
from attnzoo.config import base_config


def get_config():
  return base_config()
