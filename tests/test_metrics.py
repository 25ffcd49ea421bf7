"""Induction-head metrics on hand-built attention patterns: ideal patterns score ~1, uniform
and previous-token patterns score ~chance."""
import numpy as np
import pytest

from attnzoo import metrics, tasks

L, B = 10, 3  # probe `[BOS] + r + r` with |r| = L, so T = 2L + 1


def probe():
  return metrics.repeated_tokens(np.random.default_rng(0), B, L, vocab_size=32)


def pattern(T, key_of):
  """[B, 1, T, T] one-hot attention: query i -> key key_of(i) (clipped to 0..i)."""
  A = np.zeros((B, 1, T, T), np.float32)
  for i in range(T):
    A[:, 0, i, min(max(key_of(i), 0), i)] = 1.0
  return A


def uniform(T, batch=B):
  causal = np.tril(np.ones((T, T), np.float32))
  return np.broadcast_to(causal / causal.sum(-1, keepdims=True), (batch, 1, T, T))


def test_repeated_tokens_layout():
  x = probe()
  assert x.shape == (B, 2 * L + 1) and (x[:, 0] == metrics.BOS).all()
  np.testing.assert_array_equal(x[:, 1:L + 1], x[:, L + 1:])
  assert all(len(set(row[1:L + 1])) == L for row in x) and (x[:, 1:] > 0).all()
  with pytest.raises(ValueError, match='length'):
    metrics.repeated_tokens(np.random.default_rng(0), 1, 32, vocab_size=32)


def test_prefix_matches_by_hand():
  x = np.array([[0, 5, 6, 5, 6, 7]])
  m = np.asarray(metrics.prefix_matches(x))[0]
  # query 3 (token 5): key 2 follows the earlier 5; query 4 (token 6): key 3 follows the 6.
  assert set(zip(*np.nonzero(m))) == {(3, 2), (4, 3)}


def test_ideal_induction_head_scores_one():
  T = 2 * L + 1
  A = pattern(T, lambda i: i - (L - 1) if i > L else 0)
  x = probe()
  np.testing.assert_allclose(metrics.induction_score(A, x), [1.0], atol=1e-6)
  np.testing.assert_allclose(metrics.stripe_score(A, L), [1.0], atol=1e-6)
  offsets = metrics.argmax_offsets(A, first_query=L + 1)
  assert np.asarray(offsets)[0].argmax() == L - 1
  np.testing.assert_allclose(metrics.near_offset_score(offsets, L - 1), [1.0], atol=1e-6)
  assert float(metrics.previous_token_score(A)[0]) < 0.2


def test_ideal_induction_head_on_task_sequences():
  batch = tasks.induction(np.random.default_rng(1), batch_size=4, seq_len=64, vocab_size=64)
  x = batch['inputs']
  match = np.asarray(metrics.prefix_matches(x), np.float32)  # several earlier copies
  A = match / np.maximum(match.sum(-1, keepdims=True), 1.0)
  A[..., 0] += match.sum(-1) == 0  # queries without a match rest on BOS
  np.testing.assert_allclose(metrics.induction_score(A[:, None], x), [1.0], atol=1e-6)


def test_uniform_attention_scores_chance():
  T = 2 * L + 1
  A = uniform(T)
  assert float(metrics.induction_score(A, probe())[0]) < 0.1  # 1 / (i + 1) per query
  assert float(metrics.stripe_score(A, L)[0]) < 0.1
  assert float(metrics.previous_token_score(A)[0]) < 0.25
  batch = tasks.induction(np.random.default_rng(2), batch_size=4, seq_len=64, vocab_size=64)
  # On task data a query has about (i / period) matches out of i + 1 keys.
  assert float(metrics.induction_score(uniform(64, 4), batch['inputs'])[0]) < 0.15


def test_previous_token_head_scores_zero_induction():
  T = 2 * L + 1
  A = pattern(T, lambda i: i - 1)
  np.testing.assert_allclose(metrics.previous_token_score(A), [1.0], atol=1e-6)
  assert float(metrics.induction_score(A, probe())[0]) == 0.0
  assert float(metrics.stripe_score(A, L)[0]) == 0.0
  assert np.asarray(metrics.argmax_offsets(A, first_query=1))[0].argmax() == 1


def test_off_by_one_stripe_is_caught_by_the_offset_histogram():
  T = 2 * L + 1
  A = pattern(T, lambda i: i - L if i > L else 0)  # duplicate-token head: the earlier copy
  assert float(metrics.stripe_score(A, L)[0]) == 0.0
  offsets = metrics.argmax_offsets(A, first_query=L + 1)
  np.testing.assert_allclose(metrics.near_offset_score(offsets, L - 1), [1.0], atol=1e-6)
  np.testing.assert_allclose(metrics.near_offset_score(offsets, L - 1, tolerance=0), [0.0])


def test_scores_are_per_head():
  T = 2 * L + 1
  A = np.concatenate([pattern(T, lambda i: i - (L - 1) if i > L else 0),
                      pattern(T, lambda i: i - 1), uniform(T)], axis=1)  # [B, 3, T, T]
  assert metrics.stripe_score(A, L).shape == (3,)
  assert np.asarray(metrics.stripe_score(A, L)).argmax() == 0
  assert np.asarray(metrics.previous_token_score(A)).argmax() == 1
  with pytest.raises(ValueError, match='2 \\* length \\+ 1'):
    metrics.stripe_score(A, L + 1)


def test_icl_score():
  assert metrics.icl_score(4.0, 0.5) == pytest.approx(3.5)
