"""Induction-head emergence: 2-layer attention-only decoder vs a 1-layer control, per variant.

Command:  python experiments/induction_heads.py --workdir=runs/induction
          (every causal variant: add --variants=all; rebuild figures: add --report_only)
Runtime:  about 1 minute for the default (dense causal, 2 runs of 400 steps) on a 2-core CPU
          (48 s measured on a shared one); --variants=all (21 runs) took 27 minutes there.
Expected: 2 layers: repeat loss < 0.1 nats after an abrupt drop of > 2 nats near steps
          120-200, layer-2 induction heads (stripe score ~0.8 at a held-out length) fed by
          layer-1 previous-token heads; the 1-layer control stays near 2.7 nats, no stripe.

Same task and model as configs/induction.py; a shorter budget (400 steps) at a higher learning
rate (8e-3, 30 warmup steps, cosine decay) forms the heads sooner.
"""
import ml_collections

from attnzoo.config import base_config


def get_config():
  c = base_config()
  c.model.num_layers = 2  # the experiment trains 2 layers and a 1-layer control
  c.model.mlp = False
  c.train.num_steps = 400
  c.train.learning_rate = 8e-3
  c.train.warmup_steps = 30
  c.train.eval_every = 20
  c.train.eval_batches = 2
  c.induction = ml_collections.ConfigDict()
  c.induction.stripe_len = 28  # probe length L (T = 2L + 1); training periods are 8-24
  c.induction.score_batch = 16  # sequences the per-head scores are computed on
  c.induction.variant = ''  # set per run
  return c
