"""Olsson et al.'s in-context-learning score on real text: byte-level attention-only decoders
(2 layers and a 1-layer control) on Python's documentation topics (`pydoc_data`, ships with
every Python), with the ICL score and prefix-matching heads at every eval.

Command:  python experiments/icl_text.py --workdir=runs/icl_text
Runtime:  not measured yet at this budget (the code path is tested on a tiny run).
Expected: not measured yet; the report states what the run shows.
"""
import ml_collections

from attnzoo.config import base_config


def get_config():
  c = base_config()
  c.task = ml_collections.ConfigDict({'name': 'text', 'seq_len': 256, 'vocab_size': 256,
                                      'heldout': 0.1})
  c.model.mlp = False
  c.model.positions = 'rope'
  c.model.max_len = 256
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.train.batch_size = 32
  c.train.num_steps = 1500
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 100
  c.train.eval_every = 50
  c.train.eval_batches = 4
  c.train.checkpoint_every = 500
  s = c.study = ml_collections.ConfigDict()
  s.depths = (2, 1)  # the 1-layer control cannot form an induction head
  # Olsson: loss at token 500 minus token 50 of a 512 context; the same fractions of 256.
  s.early = (20, 30)
  s.late = (240, 256)
  s.windows = 64  # held-out windows the loss by position averages over
  s.probe_batch = 16
  s.probe_len = 40
  return c
