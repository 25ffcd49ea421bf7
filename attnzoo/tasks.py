"""Toy tasks, seeded and generated on the fly with NumPy (deterministic in (seed, step)).

Every task returns a dict of arrays, next-token form:
  inputs [B, T] int32, targets [B, T] int32, weights [B, T] float32 (the training loss mask),
  and named metric masks `mask_<name>` [B, T] (e.g. `mask_repeat`), optionally `source` [B, S]
  for encoder-decoder form and `key_mask` [B, T] for the bidirectional (masked-token) form.
"""
from __future__ import annotations

import functools

import numpy as np

BOS = 0


def _check(cond, field, value, why):
  if not cond:
    raise ValueError(f'{field}={value!r}: {why}')


def _rng(seed: int, step: int, split: str) -> np.random.Generator:
  return np.random.default_rng([seed, step, {'train': 0, 'eval': 1}[split]])


def _next_token(seqs, weights, **masks):
  """seqs [B, T+1] -> inputs/targets [B, T]; weights/masks index the *target* position."""
  full = lambda m: np.broadcast_to(m, seqs.shape)[:, 1:].astype(np.float32)
  out = {'inputs': seqs[:, :-1].astype(np.int32), 'targets': seqs[:, 1:].astype(np.int32),
         'weights': full(weights)}
  out.update({f'mask_{k}': full(m) for k, m in masks.items()})
  return out


def induction(rng, *, batch_size, seq_len, vocab_size, min_period=8, max_period=24,
              max_prefix=0, max_gap=0, **_):
  """[BOS] + a segment of distinct random tokens repeated to length T; the period varies per
  sequence (with a fixed period a 1-layer model solves the task through positions alone).
  max_prefix > 0: the repeats start after a run of 0 to max_prefix random tokens from outside
  the segment, so the first copy does not always start the context. max_gap > 0: 0 to max_gap
  such tokens follow the first copy and the repeats resume at a random phase, so the earliest
  repeat finds its only earlier copy at any distance up to T - 1, not always at the period, and
  no fixed position predicts the token after the gap. Prefix and gap together leave room for
  two copies.

  mask_first: predicting the prefix, the first period, the gap and the token after it
  (unpredictable); mask_repeat: the repeated part.
  """
  _check(2 <= min_period <= max_period, 'task.min_period', min_period,
         f'need 2 <= min_period <= max_period={max_period}')
  filler = max_prefix > 0 or max_gap > 0
  _check(max_period < vocab_size - filler, 'task.max_period', max_period,
         f'a period of distinct tokens needs vocab_size={vocab_size} > max_period'
         + (' + 1 (filler tokens come from outside the segment)' if filler else ''))
  _check(2 * max_period <= seq_len, 'task.max_period', max_period,
         f'must repeat at least once within seq_len={seq_len}')
  _check(max_prefix >= 0, 'task.max_prefix', max_prefix, 'must be >= 0')
  _check(max_gap >= 0, 'task.max_gap', max_gap, 'must be >= 0')
  B, T = batch_size, seq_len
  periods = rng.integers(min_period, max_period + 1, size=B)
  perm = np.argsort(rng.random((B, vocab_size - 1)), axis=1) + 1
  segs = perm[:, :max_period]  # distinct
  pos = np.arange(T)  # position in the body (after BOS)
  room = T - 2 * periods  # filler positions two copies leave
  starts = (rng.integers(0, np.minimum(max_prefix, room) + 1) if max_prefix
            else np.zeros(B, np.int64))
  gaps = (rng.integers(0, np.minimum(max_gap, room - starts) + 1) if max_gap
          else np.zeros(B, np.int64))
  # After a gap the repeats resume at a random phase, so no fixed position predicts them.
  phases = rng.integers(0, periods) * (gaps > 0) if max_gap else np.zeros(B, np.int64)
  first_end = (starts + periods)[:, None]  # body position after the first copy
  shift = np.where(pos[None] < first_end, starts[:, None], (starts + gaps - phases)[:, None])
  body = np.take_along_axis(segs, (pos[None] - shift) % periods[:, None], axis=1)
  if filler:
    others = rng.integers(0, vocab_size - 1 - max_period, size=(B, T))
    fill = np.take_along_axis(perm[:, max_period:], others, axis=1)
    is_fill = (pos[None] < starts[:, None]) | (
        (pos[None] >= first_end) & (pos[None] < first_end + gaps[:, None]))
    body = np.where(is_fill, fill, body)
  seqs = np.concatenate([np.full((B, 1), BOS), body], axis=1)  # [B, T + 1]
  idx = np.arange(T + 1)[None]
  # seqs index of the last token before the repeats: the first copy's last, or with a gap the
  # first one after it (its input is filler), so every repeat target's input is a segment token
  end = first_end + gaps[:, None] + (gaps[:, None] > 0)
  first = (idx >= 1) & (idx <= end)
  repeat = idx > end
  return _next_token(seqs, idx >= 1, first=first, repeat=repeat) | {
      'periods': periods, 'starts': starts, 'gaps': gaps}


def copy(rng, *, batch_size, seq_len, vocab_size, encoder_decoder=False, **_):
  """Decoder-only: [BOS] x [SEP] x, loss on the copy. Encoder-decoder: source x, target x."""
  SEP, lo = 1, 2
  _check(vocab_size > lo, 'task.vocab_size', vocab_size, 'copy needs vocab_size > 2')
  B = batch_size
  if encoder_decoder:
    x = rng.integers(lo, vocab_size, size=(B, seq_len))
    seqs = np.concatenate([np.full((B, 1), BOS), x], axis=1)
    out = _next_token(seqs, np.ones_like(seqs, bool), answer=np.ones_like(seqs, bool))
    return out | {'source': x.astype(np.int32)}
  n = (seq_len - 1) // 2  # T + 1 = 1 + n + 1 + n (+ 1 pad when T is even)
  x = rng.integers(lo, vocab_size, size=(B, n))
  seqs = np.concatenate([np.full((B, 1), BOS), x, np.full((B, 1), SEP), x], axis=1)
  seqs = np.pad(seqs, [(0, 0), (0, seq_len + 1 - seqs.shape[1])])
  idx = np.arange(seq_len + 1)[None].repeat(B, 0)
  answer = (idx >= n + 2) & (idx < 2 * n + 2)
  return _next_token(seqs, answer, answer=answer)


def mqar(rng, *, batch_size, seq_len, vocab_size, num_pairs=8, **_):
  """Multi-query associative recall (Arora et al. 2023): k1 v1 ... kn vn, then queries
  q1 a1 q2 a2 ... of earlier keys; loss and accuracy on the answers a_i only. `distance`
  [B, T] holds each answer's key-query distance (not a model input)."""
  half = vocab_size // 2
  _check(num_pairs <= half - 1, 'task.num_pairs', num_pairs,
         f'needs distinct keys: at most vocab_size // 2 - 1 = {half - 1}')
  _check(4 * num_pairs <= seq_len + 1, 'task.num_pairs', num_pairs,
         f'2 * num_pairs pairs and as many query tokens must fit in seq_len={seq_len}')
  B, n = batch_size, num_pairs
  keys = np.argsort(rng.random((B, half - 1)), axis=1)[:, :n] + 1  # distinct, in [1, half)
  vals = rng.integers(half, vocab_size, size=(B, n))
  order = np.argsort(rng.random((B, n)), axis=1)  # queries: each key once, shuffled
  queries = np.take_along_axis(keys, order, 1)
  answers = np.take_along_axis(vals, order, 1)
  kv = np.stack([keys, vals], 2).reshape(B, 2 * n)
  qa = np.stack([queries, answers], 2).reshape(B, 2 * n)
  seqs = np.concatenate([kv, qa], 1)
  seqs = np.pad(seqs, [(0, 0), (0, seq_len + 1 - seqs.shape[1])])
  idx = np.arange(seq_len + 1)[None].repeat(B, 0)
  answer = (idx >= 2 * n) & (idx < 4 * n) & ((idx - 2 * n) % 2 == 1)
  out = _next_token(seqs, answer, answer=answer)
  # Key-query distance of each answer (at its target position; 0 elsewhere): the query at
  # input position 2n + 2i looks back to its key at 2 * order[i].
  distance = np.zeros((B, seq_len), np.int32)
  distance[:, 2 * n:4 * n:2] = 2 * n + 2 * np.arange(n)[None] - 2 * order
  return out | {'distance': distance}


@functools.cache
def corpus() -> np.ndarray:
  """The Python documentation topics that ship with every Python (`pydoc_data.topics`, about
  465 KB of English and code), as UTF-8 bytes in a fixed order."""
  from pydoc_data import topics  # noqa: PLC0415
  text = '\n\n'.join(topics.topics[k] for k in sorted(topics.topics))
  return np.frombuffer(text.encode('utf-8'), np.uint8)


def text(rng, *, batch_size, seq_len, vocab_size, split='train', heldout=0.1, **_):
  """Byte-level windows of `corpus()`; the last `heldout` fraction of its bytes is the eval
  split, the rest the training split. Loss on every byte (no BOS: byte 0 never occurs)."""
  _check(vocab_size == 256, 'task.vocab_size', vocab_size, 'text is byte-level: needs 256')
  _check(0 < heldout < 1, 'task.heldout', heldout, 'must be within (0, 1)')
  data = corpus()
  cut = int(len(data) * (1 - heldout))
  part = data[:cut] if split == 'train' else data[cut:]
  _check(seq_len < len(part), 'task.seq_len', seq_len,
         f'longer than the {split} split ({len(part)} bytes)')
  starts = rng.integers(0, len(part) - seq_len, size=batch_size)
  seqs = part[starts[:, None] + np.arange(seq_len + 1)]
  return _next_token(seqs, np.ones_like(seqs, bool))


TASKS = {'induction': induction, 'copy': copy, 'mqar': mqar, 'text': text}


def masked_token(batch, rng, *, mask_id: int, rate: float = 0.15):
  """Bidirectional form of a task (for non-causal variants): the model sees the whole sequence
  with some target tokens replaced by `mask_id` in its input, and predicts each hidden token from
  the position before it, as in the causal form (so the form needs no more hops than the causal
  one). Answer tokens (copy, mqar) are all hidden; tasks without answers (induction) hide a
  random `rate` of the trained tokens.
  """
  hide = batch['weights'] > 0
  if 'mask_answer' not in batch:
    hide &= rng.random(hide.shape) < rate
  out = {k: (np.where(hide, v, 0).astype(v.dtype) if k.startswith('mask_') else v)
         for k, v in batch.items()}
  # targets[:, j] is the input at j + 1: hide it there (the last target is past the inputs).
  shown = np.pad(~hide[:, :-1], [(0, 0), (1, 0)], constant_values=True)
  out['inputs'] = np.where(shown, batch['inputs'], mask_id).astype(np.int32)
  out['weights'] = hide.astype(np.float32)
  return out


def make_batch(task_cfg, *, seed: int, step: int, batch_size: int, split: str = 'train',
               causal: bool = True, vocab_size: int):
  """The batch for (seed, step, split) of task `task_cfg.name`.

  task.random_positions = P > 0 (training split only): `positions` [B, T], each sequence's
  tokens at a sorted random subset of 0 ... S - 1 instead of 0 ... T - 1, S uniform in T ... P
  (randomized positional encodings, Ruoss et al. 2023, with a random spread: some sequences
  stay nearly contiguous), so a RoPE model trains on distances up to P - 1 without training on
  sequences that long."""
  name = task_cfg.name
  _check(name in TASKS, 'task.name', name, f'known tasks: {", ".join(sorted(TASKS))}')
  rng = _rng(seed, step, split)
  kwargs = {k: v for k, v in task_cfg.items()
            if k not in ('name', 'vocab_size', 'random_positions')}
  batch = TASKS[name](rng, batch_size=batch_size, vocab_size=vocab_size, split=split, **kwargs)
  P = task_cfg.get('random_positions', 0)
  if P and split == 'train':
    B, T = batch['inputs'].shape
    _check(P >= T, 'task.random_positions', P, f'must be 0 or >= the length {T}')
    span = rng.integers(T, P + 1, size=(B, 1))  # each sequence spreads over 0 ... span - 1
    keys = np.where(np.arange(P) < span, rng.random((B, P)), 2.0)
    batch['positions'] = np.sort(np.argsort(keys, axis=1)[:, :T], axis=1)
  if not causal:
    batch = masked_token(batch, rng, mask_id=vocab_size)
  return batch
