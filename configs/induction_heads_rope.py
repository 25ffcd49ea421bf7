"""Induction that generalises in length and period: rotary positions (Su et al. 2021) in layer 1,
none in layer 2 (`model.nope_layers=(1,)`, as Llama 4's interleaved NoPE layers), and training
sequences whose first copy starts after a random prefix of 0-16 tokens (`task.max_prefix`).

Command:  python experiments/induction_heads.py --config=configs/induction_heads_rope.py \
              --workdir=runs/induction_heads_rope
Runtime:  411 s of runs (429 s wall) on a quiet 2-core CPU: seeds 0-2, a 2-layer model (88-101 s
          each) and a 1-layer control (42-48 s each), 800 steps.
Expected (seeds 0-2, loss on predictable tokens): held-out periods 30-60 at T=128 (2x the
          training length) 0.030-0.048; training periods 2-24 at T=128 0.062-0.098; in
          distribution (T=64) 0.13-0.27, the excess in the first ~20 positions; `[BOS] + r + r`
          probes with L=16-50 0.011-0.085, L=60 0.12-0.25, L=8 3.5-3.9. The 1-layer control
          stays at 2.6 nats.
          The circuit is not Olsson's previous-token + induction pair: in every seed all layer-1
          heads attend 8 or 9 tokens back and all layer-2 heads L-9 back on the probes, i.e. to
          the key whose 9-back token equals the query's token, reading its 8-back token (the next
          one after the earlier copy). It needs K- and V-composition (removing layer-1 output
          from layer-2's key input: 0.28-0.32 -> 4.09-4.10 nats, value: 5.80-5.91, query: no
          change) and fails when the period is below ~9.
Why:      (single runs, periods 8-24) with RoPE in both layers the model learns the classic
          circuit but loses it beyond the training length (T=128, periods 8-24: 0.17 without and
          0.38 with the prefix; periods 30-60: 4.2 and 1.7); with layer 2 position-free but no
          prefix, the first copy always sits in positions 1-25 and layer 2 finds keys there only
          (T=128, periods 30-60: 0.29-0.38 for 2 of 3 seeds, the loss in the phases >= 30 of
          each period).
"""
from attnzoo.config import config_file


def get_config():
  c = config_file('induction_heads')
  c.model.positions = 'rope'
  c.model.max_len = 256  # RoPE has no table: this only bounds the probe lengths
  c.model.nope_layers = (1,)  # layer 2 matches by content alone (see the docstring)
  c.task.max_prefix = 16  # the first copy starts anywhere in positions 1-17, not only at 1
  c.task.min_period = 2  # periods 2-24; held-out periods 30-60 stay unseen
  c.train.num_steps = 800  # the prefix leaves fewer predictable tokens: 400 steps do not solve it
  c.study.seeds = (0, 1, 2)
  return c
