"""Induction heads that work beyond the training length: 2-layer attention-only decoder vs a
1-layer control.

Command:  python experiments/induction_heads.py --workdir=runs/induction_heads
          (every causal variant: add --variants=all; rebuild figures: add --report_only)
Runtime:  144 s wall on a quiet 2-core CPU (runs 95 s + 38 s): 2 runs of 1500 steps with
          compiles, evals, checkpoints, ablations and generalisation probes.
Expected: 2 layers (seed 0): loss on predictable tokens 0.050 nats in distribution (T=64,
          periods 8-24), 0.025 at 2x the length (T=128), 0.064 at T=128 with periods 30-60
          never trained on; `[BOS] + r + r` probes of L=8-60 0.016-0.168. The textbook circuit:
          two layer-1 previous-token heads (score up to 0.98, most-attended distance 1 on every
          probe query) and three layer-2 induction heads (stripe 1.00 at the held-out length
          28, induction 0.99), through the key path (removing layer-1 output from layer-2's key
          input: repeat loss 0.190 -> 4.24 nats; query 1.52, value 0.225; mean-ablation; the
          repeat loss is on training-style sequences, gaps included); it falls 4.33 nats in
          steps 0-300. The 1-layer control stays at 3.34 nats.
          Over seeds 0-3 (configs/induction_heads_seeds.py) the 2x-length figure stays below
          0.1 nats (0.025-0.077) but the unseen-period one does not (0.064-0.432). Training at
          random positions (configs/induction_heads_random_positions.py) steadies it over seeds
          (0.101-0.126) without bringing it below 0.1.

What makes it work at 2x the length (the task and model of configs/induction_heads_learned.py
otherwise):
- Rotary positions with only the highest half of the frequencies (`model.rope_fraction=0.5`,
  p-RoPE, Barbero et al. 2024): the half whose wavelengths (6.3 to 199 positions at head_dim 16)
  turn far enough within T=64 to be learned; the lowest half carries content alone. Learned
  positions end at the table (T=64); full RoPE shows layer 2 rotations it never saw at 2x length.
- Scalable-Softmax (`model.scalable_softmax`, Nakanishi 2025): queries scaled by log_64 of the
  number of keys they see, so the previous-token head loses less of its sharpness with 128 keys
  than under the plain softmax.
- A gap of 0-48 random tokens after the first copy (`task.max_gap`), after which the repeats
  resume at a random phase: the only earlier copy can sit at any distance up to 63, not only at
  the period (8-24), so layer 2 cannot learn to look only where copies used to be. The random
  phase leaves no fixed position to copy from after the gap. In single-seed trials without the
  gap, or with a random prefix (`task.max_prefix`) instead, layer-1 heads settled several
  tokens back (a shifted circuit that fails on periods shorter than the shift).
- 1500 steps instead of 400: the gap leaves fewer predictable tokens per sequence.
"""
from attnzoo.config import config_file


def get_config():
  c = config_file('induction_heads_learned')
  c.model.positions = 'rope'
  c.model.max_len = 256  # RoPE has no table: this only bounds the probe lengths
  c.model.rope_fraction = 0.5
  c.model.scalable_softmax = True
  c.task.max_gap = 48  # T - 2 * min_period: any gap two copies leave room for
  c.train.num_steps = 1500
  c.train.eval_every = 25
  return c
