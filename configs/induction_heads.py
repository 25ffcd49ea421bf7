"""Induction heads that work beyond the training length: 2-layer attention-only decoder vs a
1-layer control.

Command:  python experiments/induction_heads.py --workdir=runs/induction_heads
          (every causal variant: add --variants=all; rebuild figures: add --report_only)
Runtime:  117 s wall on a quiet 2-core CPU (runs 76 s + 31 s): 2 runs of 1500 steps with
          compiles, evals, checkpoints, ablations and generalisation probes.
Expected: 2 layers (seed 0): loss on predictable tokens 0.005 nats in distribution (T=64,
          periods 8-24), 0.009 at 2x the length (T=128), 0.038 at T=128 with periods 30-60
          never trained on; `[BOS] + r + r` probes of L=8-60 0.001-0.124. The textbook circuit:
          a layer-1 previous-token head (score 0.98, most-attended distance 1 on every probe
          query) and four layer-2 induction heads (induction 0.86-0.92, stripe up to 0.93 at
          the held-out length 28), through the key path (removing layer-1 output from layer-2's
          key input: repeat loss 0.071 -> 5.64 nats; query 0.236, value 0.077; mean-ablation);
          it falls 4.46 nats in steps 0-250. The 1-layer control stays at 3.02 nats.
          Over seeds 0-3 and widths 32-128 (configs/induction_heads_seeds.py) every run stays
          below 0.1 nats in distribution, at 2x the length and at unseen periods (0.002-0.040);
          per period, the probes pass 0.1 only at L=8 and L=60 (up to 0.236, at d=32).

What makes it work at 2x the length and at unseen periods (the task and model of
configs/induction_heads_learned.py otherwise):
- Rotary positions with only the highest half of the frequencies (`model.rope_fraction=0.5`,
  p-RoPE, Barbero et al. 2024): the half whose wavelengths (6.3 to 199 positions at head_dim 16)
  turn far enough within T=64 to be learned; the lowest half carries content alone. Learned
  positions end at the table (T=64); full RoPE shows layer 2 rotations it never saw at 2x length.
- Scalable-Softmax (`model.scalable_softmax`, Nakanishi 2025): queries scaled by log_64 of the
  number of keys they see, so the previous-token head loses less of its sharpness with 128 keys
  than under the plain softmax.
- Training at random positions (`task.random_positions=128`, Ruoss et al. 2023): each training
  sequence sits at a sorted random subset of 0 ... S - 1, S uniform in 64 ... 128, so the
  rotations of distances up to 127 are trained without longer sequences; evaluation uses
  0 ... T - 1.
- No gap after the first copy. A gap of 0-48 random tokens after which the repeats resume at a
  random phase (`task.max_gap`, configs/induction_heads_gap.py) also trains long distances,
  but with it the unseen-period loss is 0.101-0.126 over seeds 0-3 (0.003-0.038 without).
- 1500 steps of training.
"""
from attnzoo.config import config_file


def get_config():
  c = config_file('induction_heads_learned')
  c.model.positions = 'rope'
  c.model.max_len = 256  # RoPE has no table: this only bounds the probe lengths
  c.model.rope_fraction = 0.5
  c.model.scalable_softmax = True
  c.task.random_positions = 128  # train at sorted random positions spread over up to 0-127
  c.train.num_steps = 1500
  c.train.eval_every = 25
  return c
