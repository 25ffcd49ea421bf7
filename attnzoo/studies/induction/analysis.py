"""Analysis of the saved files of a run (no model needed): phase change, verdict, checks."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from attnzoo.studies.induction.hooks import PREV_HEAD

# Verdict thresholds (stated in the report).
FORMED_LOSS = 0.5  # final repeat loss below this (nats) ...
FORMED_SCORE = 0.3  # ... and a head with induction or near-stripe score above this
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
    ('ablation', 'ablating the best layer-1 previous-token head raises repeat loss > 1 nat'),
    ('ablation_random', '... by more than ablating a random other layer-1 head'),
    ('ablation_group', f'ablating every layer-1 previous-token head (score > {PREV_HEAD}) raises '
                       'repeat loss > 1 nat and leaves no layer-2 head with induction score > '
                       f'{FORMED_SCORE}'),
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
      'chance_induction': study['chance_induction'],
  }
  # Modal argmax distance of the best near-stripe head of the last layer (induction: L-1).
  head = int(np.argmax(final['stripe_near'][L - 1]))
  row['modal_offset'] = int(np.argmax(study['argmax_offsets'][L - 1][head]))
  row['verdict'] = verdict(row)
  return row


def checks(two: dict | None, one: dict | None) -> dict[str, bool | None]:
  """CHECKS for a variant's 2-layer and 1-layer rows (None where a row is missing)."""
  out: dict[str, bool | None] = {key: None for key, _ in CHECKS}
  if two is not None:
    jump = two['phase']['jump']
    ablated = {a['ablated']: a for a in two['ablations']}
    out |= {
        'repeat_loss_2l': two['repeat_loss'] < 0.1,
        'jump': jump['drop'] >= 2.0 and jump['fraction'] <= 0.2,
        'score_rises': jump['score'][1] - jump['score'][0] >= 0.3,
        'stripe_2l': two['max_stripe'] > 0.5,
        'prev_2l': two['max_previous_token'] > 0.15,
    }
    if 'previous_token' in ablated:
      out['ablation'] = ablated['previous_token']['loss_repeat'] - two['repeat_loss'] > 1.0
      if 'random' in ablated:
        out['ablation_random'] = (ablated['previous_token']['loss_repeat']
                                  > ablated['random']['loss_repeat'])
    if 'previous_token_heads' in ablated:
      a = ablated['previous_token_heads']
      out['ablation_group'] = (a['loss_repeat'] - two['repeat_loss'] > 1.0
                               and a['max_induction'] <= FORMED_SCORE)
  if one is not None:
    out['control_loss'] = one['repeat_loss'] > 1.5
    out['control_stripe'] = one['max_stripe'] < 0.15
  return out
