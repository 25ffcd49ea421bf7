"""Induction heads that generalise in length: rotary positions (Su et al. 2021) instead of
learned ones, so a model trained on T=64 (periods 8-24) can be probed at T=128 and periods
30-60.

Command:  python experiments/induction_heads.py --config=configs/induction_heads_rope.py \
              --workdir=runs/induction_heads_rope
Runtime:  264 s wall on a 2-core CPU shared with another run (load up to 7).
Expected: loss on predictable tokens 0.003 in distribution, 0.012 at held-out period 30, but 4.4
          at period 40 and 0.165 at T=128 (periods 8-24), 4.58 at T=128 with periods 30-60: RoPE
          alone does not reach the length-generalisation goal.
"""
from attnzoo.config import config_file


def get_config():
  c = config_file('induction_heads')
  c.model.positions = 'rope'
  c.model.max_len = 256  # RoPE has no table: this only bounds the probe lengths
  return c
