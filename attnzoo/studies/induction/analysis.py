"""Analysis of the saved files of a run (no model needed): phase change, verdict, checks."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from attnzoo.studies.induction.hooks import IND_HEAD, PREV_HEAD

# Verdict thresholds (stated in the report).
FORMED_LOSS = 0.5  # final repeat loss below this (nats) ...
FORMED_SCORE = IND_HEAD  # ... and a head with induction or near-stripe score above this
# A 1-layer model reaches about ln(period) ~ 2.5 nats on the repeat by predicting "one of the
# tokens seen so far"; below this it copies at least partly.
PARTIAL_LOSS = 1.5

# The acceptance checks of the 2-layer / 1-layer pair of a variant.
CHECKS = (
    ('repeat_loss_2l', '2-layer final repeat loss < 0.1 nats'),
    ('jump', 'repeat loss drops >= 2 nats within <= 20% of training'),
    ('score_rises', 'best induction score rises by >= 0.3 in that window'),
    ('stripe_2l', 'best layer-2 stripe score > 0.5 on the held-out length'),
    ('prev_2l', 'best layer-1 previous-token score > 0.15'),
    ('control_loss', '1-layer control repeat loss > 1.5 nats'),
    ('control_stripe', '1-layer control best stripe score < 0.15'),
    ('path_k', 'mean-ablating layer-1 output in layer-2\'s key input raises repeat loss > 1 nat '
               '(K-composition)'),
    ('path_qv', '... in its query input and in its value input: < 0.5 nats each'),
    ('prev_group', f'mean-ablating every layer-1 previous-token head (score > {PREV_HEAD}) '
                   'raises repeat loss > 1 nat and leaves no layer-2 head with induction score '
                   f'> {IND_HEAD}'),
    ('prev_single', 'mean-ablating the best layer-1 previous-token head raises repeat loss more '
                    'than mean-ablating a random other layer-1 head (control)'),
    ('induction_group', f'mean-ablating every layer-2 head with induction score > {IND_HEAD} '
                        'raises repeat loss > 1 nat'),
)


def phase_change(steps: Sequence[int], losses: Sequence[float], scores: Sequence[float],
                 num_steps: int, max_fraction: float = 0.2) -> dict:
  """The phase change of a repeat-loss curve sampled at `steps` (step 0 first).

  window: from the first step where the loss has made 10% of its total drop (first value to
  last value), i.e. is below 90% of it, to the first where it is below 10% of it, with the
  best induction score at both ends. jump: the largest loss decrease between two samples at
  most `max_fraction * num_steps` apart, with the induction score at both ends.
  """
  steps, losses, scores = map(np.asarray, (steps, losses, scores))
  first, last = float(losses[0]), float(losses[-1])
  drop = first - last
  out: dict[str, Any] = {'total_drop': drop}
  if drop > 0:
    a = int(np.argmax(losses <= last + 0.9 * drop))
    b = int(np.argmax(losses <= last + 0.1 * drop))
    out['window'] = [int(steps[a]), int(steps[b])]
    out['window_loss'] = [float(losses[a]), float(losses[b])]
    out['window_score'] = [float(scores[a]), float(scores[b])]
  best = (0.0, 0, 0)
  for i in range(len(steps)):
    for j in range(i + 1, len(steps)):
      if steps[j] - steps[i] > max_fraction * num_steps:
        break
      best = max(best, (float(losses[i] - losses[j]), i, j))
  d, i, j = best
  out['jump'] = {'drop': d, 'steps': [int(steps[i]), int(steps[j])],
                 'fraction': float((steps[j] - steps[i]) / num_steps),
                 'loss': [float(losses[i]), float(losses[j])],
                 'score': [float(scores[i]), float(scores[j])]}
  return out


def verdict(row: dict) -> str:
  best = max(row['max_induction'], row['max_stripe_near'])
  if row['repeat_loss'] < FORMED_LOSS and best > FORMED_SCORE:
    return 'induction heads'
  if row['repeat_loss'] < FORMED_LOSS:
    return 'copies without a clear induction head'
  if row['repeat_loss'] < PARTIAL_LOSS:
    return 'partial'
  return 'none'


def analyze(run: dict) -> dict:
  """One table row (plain numbers) from a run of `common.load_runs`."""
  s, cfg = run['summary'], run['config']
  L, num_steps = cfg['model']['num_layers'], cfg['train']['num_steps']
  study = s['scores']
  final = study['final_scores']
  last = lambda key: float(np.max(final[key][L - 1]))
  evals, score_rows = run['rows']['eval'], run['rows']['scores']
  row = {
      'run': run['name'], 'variant': cfg['study']['variant'], 'layers': L,
      'repeat_loss': s['final']['loss_repeat'], 'first_loss': s['final']['loss_first'],
      'icl_score': s['final']['loss_first'] - s['final']['loss_repeat'],
      'max_induction': float(np.max(final['induction'])), 'max_stripe': last('stripe'),
      'max_stripe_near': last('stripe_near'),
      'max_previous_token': float(np.max(final['previous_token'][0])),
      'wall_s': study['run_s'], 'steps_per_s': 1 / s['step_s'], 'num_steps': num_steps,
      'phase': phase_change([r['step'] for r in evals], [r['loss_repeat'] for r in evals],
                            [float(np.max(r['induction'])) for r in score_rows], num_steps),
      'ablations': study['ablations'], 'stripe_len': study['stripe_len'],
      'final_scores': final, 'random_head': study['random_head'],
      'generalisation': study['generalisation'], 'seed': cfg['seed'],
      'd_model': cfg['model']['d_model'], 'phase_step': phase_step(run), '_evals': evals,
      'chance_induction': study['chance_induction'], 'argmax_offsets': study['argmax_offsets'],
  }
  # Modal argmax distance of the best near-stripe head of the last layer (induction: L-1).
  head = int(np.argmax(final['stripe_near'][L - 1]))
  row['modal_offset'] = int(np.argmax(study['argmax_offsets'][L - 1][head]))
  row['verdict'] = verdict(row)
  return row


def ablation(row: dict, name: str, mode: str = 'mean', heads=None) -> dict | None:
  """The ablation `name` (and `heads`, for single heads) of a row, or None."""
  for a in row['ablations']:
    if a['ablated'] == name and a['mode'] == mode and (heads is None or a['heads'] == heads):
      return a
  return None


def rise(row: dict, name: str, mode: str = 'mean', heads=None) -> float | None:
  """How much an ablation raises the repeat loss (nats)."""
  a = ablation(row, name, mode, heads)
  return None if a is None else a['loss_repeat'] - row['repeat_loss']


def checks(two: dict | None, one: dict | None) -> dict[str, bool | None]:
  """CHECKS for a variant's 2-layer and 1-layer rows (None where a row or ablation is missing)."""
  out: dict[str, bool | None] = {key: None for key, _ in CHECKS}
  compare = lambda x, f: None if x is None else bool(f(x))
  if two is not None:
    jump = two['phase']['jump']
    q, k, v = (rise(two, f'path_{kind}') for kind in 'qkv')
    best_prev = [0, int(np.argmax(two['final_scores']['previous_token'][0]))]
    single = rise(two, 'head', heads=[best_prev])
    control = rise(two, 'head', heads=[two['random_head']])
    group = ablation(two, 'previous_token_heads')
    out |= {
        'repeat_loss_2l': two['repeat_loss'] < 0.1,
        'jump': jump['drop'] >= 2.0 and jump['fraction'] <= 0.2,
        'score_rises': jump['score'][1] - jump['score'][0] >= 0.3,
        'stripe_2l': two['max_stripe'] > 0.5,
        'prev_2l': two['max_previous_token'] > 0.15,
        'path_k': compare(k, lambda x: x > 1.0),
        'path_qv': None if q is None else q < 0.5 and v < 0.5,
        'prev_group': None if group is None else bool(
            group['loss_repeat'] - two['repeat_loss'] > 1.0 and group['max_induction'] <= IND_HEAD),
        'prev_single': None if single is None or best_prev == two['random_head'] else single > control,
        'induction_group': compare(rise(two, 'induction_heads'), lambda x: x > 1.0),
    }
  if one is not None:
    out['control_loss'] = one['repeat_loss'] > 1.5
    out['control_stripe'] = one['max_stripe'] < 0.15
  return out


PHASE_LOSS = 1.0  # the phase-change step: the first eval with repeat loss below this (nats)


def phase_step(run: dict) -> int | None:
  """The first eval step with repeat loss < PHASE_LOSS (None if never)."""
  return next((r['step'] for r in run['rows']['eval'] if r['loss_repeat'] < PHASE_LOSS), None)
