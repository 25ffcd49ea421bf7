import ml_collections
import numpy as np
import pytest

from attnzoo import tasks


def _batch(**cfg):
  cfg = ml_collections.ConfigDict(cfg)
  return tasks.make_batch(cfg, seed=1, step=3, batch_size=64, vocab_size=cfg.vocab_size)


def test_induction_period_varies_tokens_distinct_and_masks_split_the_sequence():
  b = _batch(name='induction', seq_len=64, vocab_size=64, min_period=8, max_period=24)
  periods = b['periods']
  assert len(set(periods.tolist())) > 5 and periods.min() >= 8 and periods.max() <= 24
  for row, p in zip(b['inputs'], periods):
    assert row[0] == tasks.BOS
    seg = row[1:p + 1]
    assert len(set(seg.tolist())) == p  # distinct within a period
    np.testing.assert_array_equal(row[1 + p:], row[1:64 - p])  # then it repeats
  np.testing.assert_array_equal(b['mask_first'] + b['mask_repeat'], 1.0)
  np.testing.assert_array_equal(b['targets'][:, :-1], b['inputs'][:, 1:])
  # the repeated part is predictable from context: target == token one period back
  rows, cols = np.nonzero(b['mask_repeat'])
  np.testing.assert_array_equal(b['targets'][rows, cols], b['inputs'][rows, cols + 1 - periods[rows]])


def test_induction_prefix_moves_the_first_copy_and_keeps_it_the_only_source():
  b = _batch(name='induction', seq_len=64, vocab_size=64, min_period=8, max_period=24,
             max_prefix=16)
  periods, starts = b['periods'], b['starts']
  assert starts.min() == 0 and starts.max() == 16 and (starts <= 64 - 2 * periods).all()
  for row, p, s in zip(b['inputs'], periods, starts):
    seg = row[1 + s:1 + s + p]
    assert len(set(seg.tolist())) == p and not set(row[1:1 + s].tolist()) & set(seg.tolist())
    np.testing.assert_array_equal(row[1 + s + p:], row[1 + s:64 - p])
  np.testing.assert_array_equal(b['mask_first'] + b['mask_repeat'], 1.0)
  rows, cols = np.nonzero(b['mask_repeat'])
  assert (cols >= starts[rows] + periods[rows]).all()
  np.testing.assert_array_equal(b['targets'][rows, cols], b['inputs'][rows, cols + 1 - periods[rows]])


def test_induction_gap_puts_filler_after_the_first_copy_and_resumes_at_a_random_phase():
  b = _batch(name='induction', seq_len=64, vocab_size=64, min_period=8, max_period=24,
             max_gap=40)
  periods, gaps = b['periods'], b['gaps']
  assert gaps.min() == 0 and gaps.max() > 20 and (gaps <= 64 - 2 * periods).all()
  phases = set()
  for row, tgt, rep, p, g in zip(b['inputs'], b['targets'], b['mask_repeat'], periods, gaps):
    seg, gap, rest = row[1:1 + p], row[1 + p:1 + p + g], row[1 + p + g:]
    assert len(set(seg.tolist())) == p and not set(gap.tolist()) & set(seg.tolist())
    assert set(rest.tolist()) <= set(seg.tolist())
    np.testing.assert_array_equal(rest[p:], rest[:-p])  # periodic after the gap
    if g:
      phases.add(int(np.flatnonzero(seg == rest[0])[0]))
    # the repeats start at the first target whose input is a segment token after the first copy
    # (after a gap, the target after the gap's filler is unpredictable: not a repeat) ...
    start = p + g + (g > 0)
    assert not rep[:start].any() and rep[start:].all()
    # ... and every later one is the token that followed its input in the first copy
    for col in range(start + 1, len(row)):
      first = int(np.flatnonzero(seg == row[col])[0])
      assert tgt[col] == seg[(first + 1) % p]
  assert len(phases) > 5  # not always the segment's first token after the gap


def test_batches_are_deterministic_in_seed_and_step():
  cfg = dict(name='mqar', seq_len=64, vocab_size=64, num_pairs=8)
  a, b = _batch(**cfg), _batch(**cfg)
  np.testing.assert_array_equal(a['inputs'], b['inputs'])
  c = tasks.make_batch(ml_collections.ConfigDict(cfg), seed=1, step=4, batch_size=64,
                       vocab_size=64)
  assert not np.array_equal(a['inputs'], c['inputs'])


def test_random_positions_are_sorted_distinct_subsets_for_training_only():
  cfg = dict(name='induction', seq_len=64, vocab_size=64, random_positions=256)
  b = _batch(**cfg)
  pos = b['positions']
  assert pos.shape == b['inputs'].shape
  assert (np.diff(pos, axis=1) > 0).all() and pos.min() >= 0 and pos.max() < 256
  assert len({tuple(r) for r in pos}) == len(pos)  # each sequence its own subset
  plain = _batch(**{**cfg, 'random_positions': 0})
  assert 'positions' not in plain
  np.testing.assert_array_equal(b['inputs'], plain['inputs'])  # drawn after the tokens
  evals = tasks.make_batch(ml_collections.ConfigDict(cfg), seed=1, step=3, batch_size=8,
                           split='eval', vocab_size=64)
  assert 'positions' not in evals
  with pytest.raises(ValueError, match='task.random_positions'):
    _batch(**{**cfg, 'random_positions': 32})


def test_mqar_answers_are_the_values_paired_with_the_queried_keys():
  b = _batch(name='mqar', seq_len=64, vocab_size=64, num_pairs=8)
  for inp, tgt, w in zip(b['inputs'], b['targets'], b['weights']):
    pairs = dict(zip(inp[0:16:2], inp[1:16:2]))
    assert w.sum() == 8
    for t in np.nonzero(w)[0]:
      assert tgt[t] == pairs[inp[t]]


@pytest.mark.parametrize('encoder_decoder', [False, True])
def test_copy_targets_copy_the_source(encoder_decoder):
  b = _batch(name='copy', seq_len=21, vocab_size=16, encoder_decoder=encoder_decoder)
  if encoder_decoder:
    np.testing.assert_array_equal(b['targets'], b['source'])
  else:
    n = 10
    for inp, tgt, w in zip(b['inputs'], b['targets'], b['weights']):
      np.testing.assert_array_equal(tgt[w > 0], inp[1:n + 1])


@pytest.mark.parametrize('name', ['mqar', 'induction'])
def test_masked_token_form_hides_exactly_the_trained_tokens(name):
  cfg = ml_collections.ConfigDict(dict(name=name, seq_len=64, vocab_size=64, num_pairs=8))
  b = tasks.make_batch(cfg, seed=0, step=0, batch_size=8, vocab_size=64, causal=False)
  c = tasks.make_batch(cfg, seed=0, step=0, batch_size=8, vocab_size=64)
  hidden = b['inputs'] == 64
  trained = b['weights'] > 0
  assert trained.any() and not hidden[:, 0].any()
  # Each trained target is hidden where it is an input (one position on); nothing else is.
  np.testing.assert_array_equal(hidden[:, 1:], trained[:, :-1])
  np.testing.assert_array_equal(b['inputs'][~hidden], c['inputs'][~hidden])
  np.testing.assert_array_equal(b['targets'], c['targets'])
  if name == 'mqar':  # every answer is trained
    np.testing.assert_array_equal(trained, c['weights'] > 0)
  else:  # a random part of them
    assert trained.sum() < 0.3 * (c['weights'] > 0).sum()
