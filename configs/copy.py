"""Copy task: [BOS] x [SEP] x with x random (T=64, V=32); loss on the copy only.

Command:  python experiments/train.py --config=configs/copy.py --workdir=runs/copy
          (encoder-decoder form: --config.task.encoder_decoder=True)
Runtime:  a few minutes on a 2-core CPU.
Expected: copy accuracy (eval accuracy) approaches 1.0 with 2 layers and an MLP.
"""
from attnzoo.config import base_config


def get_config():
  c = base_config()
  c.task.name = 'copy'
  c.task.vocab_size = 32
  c.task.encoder_decoder = False
  del c.task.min_period, c.task.max_period
  c.model.mlp = True
  c.train.num_steps = 1500
  return c
