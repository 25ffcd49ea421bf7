"""Eval hook: accuracy on the scored tokens (analysis.SCORED) broken down by key-query distance (MQAR) or by
position (other tasks), on the run's eval batches, written to summary.json as
summary['breakdown'] = {'by': 'distance' | 'position', 'bins': [[lo, hi], ...],
'correct': [...], 'count': [...]} (bins [lo, hi] inclusive, powers of two)."""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from attnzoo import train
from attnzoo.studies.quality_vs_cost.analysis import SCORED


def bins_upto(n: int) -> list[tuple[int, int]]:
  """[1, 1], [2, 3], [4, 7], ... covering 1..n."""
  out, lo = [], 1
  while lo <= n:
    out.append((lo, 2 * lo - 1))
    lo *= 2
  return out


def breakdown(correct, weights, where, num_bins: int) -> tuple[list[int], list[int]]:
  """Correct and scored counts per bin; correct, weights, where [B, T]; `where` is the distance
  or position (>= 1) of each scored token, binned by bins_upto."""
  scored = weights > 0
  b = np.floor(np.log2(np.maximum(where, 1))).astype(int)
  right = [int(np.sum(correct & scored & (b == i))) for i in range(num_bins)]
  count = [int(np.sum(scored & (b == i))) for i in range(num_bins)]
  return right, count


class Breakdown:
  name = 'breakdown'

  def at_end(self, run: train.Run) -> dict:
    graphdef = run.graphdef

    @jax.jit
    def predict(state, batch):
      model, _ = nnx.merge(graphdef, state)
      model.eval()
      return model(batch['inputs'], key_mask=batch.get('key_mask')).argmax(-1)

    T = run.config.task.seq_len
    bins = bins_upto(T)
    by = 'distance' if run.config.task.name == 'mqar' else 'position'
    right, count = np.zeros(len(bins), int), np.zeros(len(bins), int)
    for batch in run.eval_batches():
      pred = np.asarray(predict(run.state, train.device_batch(batch, run.sharding)))
      where = batch['distance'] if by == 'distance' else np.broadcast_to(
          np.arange(1, T + 1), batch['targets'].shape)
      scored = batch.get(f'mask_{SCORED.get(run.config.task.name)}', batch['weights'])
      r, c = breakdown(pred == batch['targets'], scored, where, len(bins))
      right += r
      count += c
    return {'by': by, 'bins': [list(b) for b in bins], 'correct': right.tolist(),
            'count': count.tolist()}
