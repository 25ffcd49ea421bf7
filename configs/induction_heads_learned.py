"""The classic toy setup (Elhage et al. 2021; Olsson et al. 2022): learned positions, periods
8-24 filling T=64, 400 steps. Fast, and the textbook circuit forms, but it does not generalise:
the learned table ends at T=64 and layer 2 learns where copies sit (see the docstring of
configs/induction_heads.py, the default, for the setup that generalises).

Command:  python experiments/induction_heads.py --config=configs/induction_heads_learned.py \
              --workdir=runs/induction_heads_learned
          (every causal variant: add --variants=all)
Runtime:  65 s wall on a 2-core CPU (runs 39 s + 15 s): 2 runs of 400 steps.
Expected: 2 layers: repeat loss 0.064 nats after a 2.92-nat drop in steps 120-200 (0.006 on
          the predictable tokens), a layer-2 induction head (stripe 0.79 at the held-out length
          28, induction 0.96) fed by blurred layer-1 previous-token heads (best score 0.20),
          through the key path (removing layer-1 output from layer-2's key input: 6.81 nats,
          query 0.064, value 0.090, mean-ablation); the 1-layer control stays at 2.70 nats,
          stripe 0.04. Probes of L=28 and 30 (distances beyond the training periods) already
          give 0.97 and 1.49 nats; longer ones do not fit the position table.
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
  # Generalisation, measured at the end: task sequences at long_factor x the training length
  # (training periods, and heldout_periods), `[BOS] + r + r` probes of each of probe_lens.
  # Lengths a model cannot take (learned positions beyond model.max_len) are left out.
  c.study.long_factor = 2
  c.study.heldout_periods = (30, 60)
  c.study.probe_lens = (8, 16, 24, 28, 30, 40, 50, 60)
  c.study.generalisation_batch = 32
  return c
