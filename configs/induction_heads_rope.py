"""Induction heads that generalise in length: rotary positions (Su et al. 2021) instead of
learned ones, so a model trained on T=64 (periods 8-24) can be probed at T=128 and periods
30-60.

Command:  python experiments/induction_heads.py --config=configs/induction_heads_rope.py \
              --workdir=runs/induction_heads_rope
Runtime:  TBD
Expected: TBD
"""
from configs import induction_heads


def get_config():
  c = induction_heads.get_config()
  c.model.positions = 'rope'
  c.model.max_len = 256  # RoPE has no table: this only bounds the probe lengths
  return c
