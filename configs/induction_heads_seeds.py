"""Induction heads over seeds and widths: the phase change as a spread, not one run.

Command:  python experiments/induction_heads.py --config=configs/induction_heads_seeds.py \
              --workdir=runs/induction_heads_seeds
Runtime:  807 s wall on a 2-core CPU shared with another run (load up to 7).
Expected: phase change (first eval with repeat loss < 1 nat) at steps 160-180 for d=64 (final
          repeat loss 0.061 +- 0.002 over seeds 0-3), 140 for d=128 (0.051 +- 0.001); d=32 forms
          in 2 of 4 seeds within 400 steps (steps 260, 380; final 0.38-3.10).

The main config (configs/induction_heads.py), 2-layer models only (the 1-layer control is in the
main command), seeds 0-3 at d_model 32, 64 and 128: 12 runs.
"""
from attnzoo.config import config_file


def get_config():
  c = config_file('induction_heads')
  c.study.depths = (2,)
  c.study.seeds = (0, 1, 2, 3)
  c.study.widths = (32, 64, 128)
  return c
