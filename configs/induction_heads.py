"""Induction-head emergence: 2-layer attention-only decoder vs a 1-layer control, per variant.

Command:  python experiments/induction_heads.py --workdir=runs/induction_heads
          (every causal variant: add --variants=all; rebuild figures: add --report_only)
Runtime:  TBD
Expected: TBD

Same task and model as configs/induction.py; a shorter budget (400 steps) at a higher learning
rate (8e-3, 30 warmup steps, cosine decay) forms the heads sooner.
"""
import ml_collections

from attnzoo.config import base_config


def get_config():
  c = base_config()
  c.model.num_layers = 2  # set per run from study.depths
  c.model.mlp = False
  c.train.num_steps = 400
  c.train.learning_rate = 8e-3
  c.train.warmup_steps = 30
  c.train.eval_every = 20
  c.train.eval_batches = 2
  c.study = ml_collections.ConfigDict()
  c.study.variants = ('causal',)  # variant specs (the --variants flag overrides)
  c.study.depths = (2, 1)  # layers of each variant's runs (a spec may fix its own)
  c.study.stripe_len = 28  # probe length L (T = 2L + 1); training periods are 8-24
  c.study.score_batch = 16  # sequences the per-head scores are computed on
  c.study.variant = ''  # set per run
  return c
