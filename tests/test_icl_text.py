"""The text task, the ICL score and the ICL-on-text study (tiny run end to end)."""
import os

import ml_collections
import numpy as np
import pytest

from attnzoo import tasks
from attnzoo.studies import icl_text
from helpers import load_config


def test_text_task_splits_are_disjoint_windows_of_the_corpus():
  cfg = ml_collections.ConfigDict(dict(name='text', seq_len=64, vocab_size=256, heldout=0.1))
  data = tasks.corpus().tobytes()
  cut = int(len(data) * 0.9)
  for split, part in (('train', data[:cut]), ('eval', data[cut:])):
    b = tasks.make_batch(cfg, seed=0, step=3, batch_size=4, vocab_size=256, split=split)
    for row, target in zip(b['inputs'], b['targets']):
      seq = bytes(row.astype(np.uint8)) + bytes(target[-1:].astype(np.uint8))
      assert seq in part  # a contiguous window of its own split
    np.testing.assert_array_equal(b['inputs'][:, 1:], b['targets'][:, :-1])
    assert (b['weights'] == 1).all()


def test_text_task_needs_bytes():
  cfg = ml_collections.ConfigDict(dict(name='text', seq_len=64, vocab_size=128))
  with pytest.raises(ValueError, match='task.vocab_size=128'):
    tasks.make_batch(cfg, seed=0, step=0, batch_size=1, vocab_size=128)


def test_icl_score_is_late_minus_early_loss():
  by_pos = np.linspace(3.0, 1.0, 100)  # context helps: later tokens cheaper
  assert icl_text.icl_score(by_pos, (10, 20), (90, 100)) == pytest.approx(
      by_pos[90:].mean() - by_pos[10:20].mean())
  assert icl_text.icl_score(by_pos, (10, 20), (90, 100)) < 0
  assert icl_text.icl_score(np.ones(100), (10, 20), (90, 100)) == 0


def test_jump_finds_the_interval_where_prefix_matching_forms():
  c = {'steps': [0, 50, 100, 150, 200], 'icl': [0.0, -0.05, -0.10, -0.60, -0.65],
       'prefix': [0.02, 0.05, 0.1, 0.7, 0.8]}
  j = icl_text.jump(c)
  assert (j['from'], j['to']) == (100, 150) and j['icl_change'] == pytest.approx(-0.5)
  assert j['largest_other'] == pytest.approx(-0.05)
  assert icl_text.jump({**c, 'prefix': [0.0] * 5}) is None


def test_tiny_icl_study_end_to_end(tmp_path):
  c = load_config('icl_text')
  c.task.seq_len = 32
  c.model.d_model, c.model.max_len = 16, 32
  c.train.update(num_steps=4, batch_size=4, warmup_steps=1, eval_every=2, eval_batches=1,
                 checkpoint_every=4)
  c.study.update(early=(2, 6), late=(24, 32), windows=4, probe_batch=2, probe_len=8)
  text = icl_text.run(c, str(tmp_path), log=lambda line: None)
  assert 'text_2l_s0' in text and 'text_1l_s0' in text and '## Findings' in text
  assert os.path.exists(tmp_path / 'icl.png')
  from attnzoo.studies import common
  run = next(r for r in common.load_runs(str(tmp_path)) if r['name'] == 'text_2l_s0')
  rows = run['rows']['icl']
  assert [r['step'] for r in rows] == [0, 2, 4]
  assert len(rows[-1]['loss_by_position']) == 32
  assert np.asarray(rows[-1]['prefix_matching']).shape == (2, 4)
  assert np.isfinite(rows[-1]['icl_score'])
