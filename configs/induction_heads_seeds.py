"""Induction heads over seeds and widths: the phase change as a spread, not one run.

Command:  python experiments/induction_heads.py --config=configs/induction_heads_seeds.py \
              --workdir=runs/induction_heads_seeds
Runtime:  TBD
Expected: TBD

The main config (configs/induction_heads.py), 2-layer models only (the 1-layer control is in the
main command), seeds 0-3 at d_model 32, 64 and 128: 12 runs.
"""
from configs import induction_heads


def get_config():
  c = induction_heads.get_config()
  c.study.depths = (2,)
  c.study.seeds = (0, 1, 2, 3)
  c.study.widths = (32, 64, 128)
  return c
