"""Induction heads over seeds and widths: the phase change as a spread, not one run.

Command:  python experiments/induction_heads.py --config=configs/induction_heads_seeds.py \
              --workdir=runs/induction_heads_seeds
Runtime:  1593 s of runs (27 min wall) on a 2-core CPU, partly shared with single trial runs
          (load 1.8-5.4).
Expected: every run forms the circuit (induction 0.92-0.99, stripe 0.93-0.99). Phase change
          (first eval with repeat loss < 1 nat): steps 275-300 at d=32, 200-225 at d=64,
          175-200 at d=128. Loss on predictable tokens (in distribution / 2x the length /
          periods 30-60 at 2x the length), min-max over seeds 0-3: d=32 0.007-0.009 /
          0.003-0.007 / 0.015-0.040; d=64 0.001-0.005 / 0.001-0.009 / 0.003-0.038; d=128
          0.001-0.004 / 0.000-0.007 / 0.002-0.011: below the 0.1-nat goal on every run. Per
          period, the `[BOS] + r + r` probes reach 0.1 only at the ends: L=8 (0.048-0.225) and
          L=60 (0.020-0.236; 0.004-0.040 at d=128). Key path: mean-ablating layer-1 output
          from layer-2's key input raises the repeat loss to 4.10-5.64 nats on every run;
          from the query input 0.07-0.24 at d=32 and 64 but 1.52-3.98 at d=128 (zero-ablation
          0.22-0.39); from the value input 0.07-0.08 at d=64, 0.16-0.55 at d=32. At d=128 the
          previous-token function is spread over layer-1 heads (best score 0.41-0.81).

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
