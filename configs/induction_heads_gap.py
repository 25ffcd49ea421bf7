"""Induction heads with a gap after the first copy: the main setup plus `task.max_gap=48`, over
seeds 0-3. An ablation: the gap costs the unseen periods.

Command:  python experiments/induction_heads.py --config=configs/induction_heads_gap.py \
              --workdir=runs/induction_heads_gap
Runtime:  968 s of runs (16.5 min wall) on a 2-core CPU shared with the test suite (load
          4.5-5.7); 4 runs of 1500 steps.
Expected: every seed forms the textbook circuit (previous-token 1.00, stripe 0.98-0.99,
          induction 0.97-0.99; phase change at steps 250-300), through the key path alone
          (mean-ablating layer-1 output from layer-2's key input: repeat loss 0.21-0.28 ->
          4.11-4.13 nats; query 0.19-0.29, value 0.23-0.28). Loss on predictable tokens over
          seeds 0-3: in distribution 0.060-0.078, 2x the length 0.031-0.039, periods 30-60 at
          2x the length 0.101-0.126, most of it at positions 64-95 (0.15-0.28 nats there);
          `[BOS] + r + r` probes 0.105-0.307. Without the gap (the main setup at d=64,
          configs/induction_heads_seeds.py) every one of these ranges is lower: 0.001-0.005 /
          0.001-0.009 / 0.003-0.038, probes 0.000-0.130.

The main config (configs/induction_heads.py), 2-layer models at d_model 64, seeds 0-3, with 0 to
48 random tokens after the first copy, after which the repeats resume at a random phase
(`task.max_gap`). The gap puts the only earlier copy at any distance up to 63, but it also puts
a seam in every stretch after it: the token after the segment's last token is then its first,
not the filler that followed it in the first copy, so there induction is wrong. Which of the
gap's effects costs the unseen periods is not isolated.
"""
from attnzoo.config import config_file


def get_config():
  c = config_file('induction_heads')
  c.task.max_gap = 48  # T - 2 * min_period: any gap two copies leave room for
  c.study.depths = (2,)
  c.study.seeds = (0, 1, 2, 3)
  return c
