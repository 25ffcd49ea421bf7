"""Olsson et al.'s in-context-learning score on real text: byte-level attention-only decoders
(2 layers and a 1-layer control) on Python's documentation topics (`pydoc_data`, ships with
every Python), with the ICL score and prefix-matching heads at every eval.

Command:  python experiments/icl_text.py --workdir=runs/icl_text
Runtime:  2-layer run 318 s, 1-layer control 178 s on a quiet 2-core CPU, 8.4 min wall (4000
          steps of 32 windows of 128 bytes each: 16.4M training bytes).
Expected: at this budget no prefix-matching head forms (best score 0.02 at step 0, at most 0.01
          after step 400, both depths) and the 2-layer ICL score (loss at positions 120-127
          minus at 10-14) ends at -0.12 nats, the same as the 1-layer control's -0.11: no
          in-context learning beyond what one layer does. Olsson et al. saw the phase change
          after about 2.5-5 billion tokens; this budget is 16.4 million bytes.
"""
import ml_collections

from attnzoo.config import base_config


def get_config():
  c = base_config()
  c.task = ml_collections.ConfigDict({'name': 'text', 'seq_len': 128, 'vocab_size': 256,
                                      'heldout': 0.1})
  c.model.mlp = False
  c.model.positions = 'rope'
  c.model.max_len = 128
  c.model.d_model = 64
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.train.batch_size = 32
  c.train.num_steps = 4000
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 100
  c.train.eval_every = 100
  c.train.eval_batches = 4
  c.train.checkpoint_every = 1000
  s = c.study = ml_collections.ConfigDict()
  s.depths = (2, 1)  # the 1-layer control cannot form an induction head
  # Olsson: loss at token 500 minus token 50 of a 512 context; about the same fractions of 128.
  s.early = (10, 15)
  s.late = (120, 128)
  s.windows = 64  # held-out windows the loss by position averages over
  s.probe_batch = 16
  s.probe_len = 40
  return c
