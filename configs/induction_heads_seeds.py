"""Induction heads over seeds and widths: the phase change as a spread, not one run.

Command:  python experiments/induction_heads.py --config=configs/induction_heads_seeds.py \
              --workdir=runs/induction_heads_seeds
Runtime:  2389 s of runs (40 min wall) on a 2-core CPU shared with the test suite and another
          study (load 2.9-5.3); about half that on a quiet machine.
Expected: every run forms the textbook circuit (best previous-token score 0.93-0.98, stripe
          0.97-1.00). Phase change (first eval with repeat loss < 1 nat): steps 450-475 at
          d=32, 250 on all four seeds at d=64, 175-200 at d=128. Loss on predictable tokens
          (in distribution / 2x the length / periods 30-60 at 2x the length), min-max over
          seeds 0-3: d=64 0.050-0.080 / 0.025-0.077 / 0.064-0.432; d=128 0.054-0.077 /
          0.039-0.128 / 0.163-0.295; d=32 0.087-0.208 / 0.071-0.231 / 0.354-0.824. The goal
          (< 0.1 nats) holds at 2x the length at d=64 on every seed, but at unseen periods
          only for seed 0.

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
