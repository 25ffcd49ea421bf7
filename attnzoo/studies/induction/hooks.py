"""What runs inside the training loop: per-head scores at every eval, ablations at the end.

`Scores(config)` is a `train.train_and_evaluate` hook named `scores`:
  every_eval  a `split='scores'` row of metrics.jsonl: every head's scores as `[layer][head]`
              lists: `induction` (prefix matching on task-style sequences), `stripe` and
              `stripe_near` (on `[BOS] + r + r` probes with |r| = study.stripe_len, a length
              not used in training), `previous_token`
  at_end      summary.json's `scores`: the final scores, argmax-offset histograms, head
              ablations, the induction score of uniform attention (chance); and attention.npz
              (every head's attention on one task and one probe sequence)
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attnzoo import metrics, train

ATTENTION = 'attention.npz'
# A layer-1 head counts as a previous-token head above this score (uniform causal attention
# scores mean_i 1/(i+1), about 0.06 at T=64).
PREV_HEAD = 0.1


def head_scores(attns, task_tokens, probe_attns, stripe_len: int):
  """Per-layer attention on task tokens and on probes -> ({score: [L, H]}, offset histograms
  [L, H, 2L+1] on the probes)."""
  out = {'induction': [], 'stripe': [], 'stripe_near': [], 'previous_token': []}
  hists = []
  for a_task, a_probe in zip(attns, probe_attns):
    out['induction'].append(metrics.induction_score(a_task, task_tokens))
    out['previous_token'].append(metrics.previous_token_score(a_task))
    out['stripe'].append(metrics.stripe_score(a_probe, stripe_len))
    hists.append(metrics.argmax_offsets(a_probe, first_query=stripe_len + 1))
    out['stripe_near'].append(metrics.near_offset_score(hists[-1], stripe_len - 1))
  return {k: jnp.stack(v) for k, v in out.items()}, jnp.stack(hists)


def _tolist(tree):
  return jax.tree.map(lambda x: np.asarray(x).round(5).tolist(), jax.device_get(tree))


class Scores:
  """The study's hook (see the module docstring)."""
  name = 'scores'

  def __init__(self, config):
    s = config.study
    self.stripe_len, self.seed = s.stripe_len, config.seed
    self.L, self.H = config.model.num_layers, config.model.num_heads
    # Scores use their own sequences: task-style eval data and held-out-length probes.
    self.task_tokens = train.batch_for(config, 10**6, 'eval')['inputs'][:s.score_batch]
    self.probe_tokens = metrics.repeated_tokens(np.random.default_rng([config.seed, 7]),
                                                s.score_batch, s.stripe_len,
                                                config.task.vocab_size)
    self._fns = None
    self.t0 = time.perf_counter()  # the hooks are made just before the run starts

  def _compiled(self, graphdef):
    """Jitted (state, head_mask [L, H]) -> scores, histograms, first sequences' attention, and
    (state, batch, head_mask) -> eval losses, both with the heads of head_mask zeroed."""
    if self._fns is None:
      task, probe = jnp.asarray(self.task_tokens), jnp.asarray(self.probe_tokens)

      def model_of(state):
        model, _ = nnx.merge(graphdef, state)
        model.eval()
        return model

      @jax.jit
      def scores(state, head_mask):
        model = model_of(state)
        _, a_task = model(task, return_attention=True, head_mask=head_mask)
        _, a_probe = model(probe, return_attention=True, head_mask=head_mask)
        sc, hists = head_scores(a_task, task, a_probe, self.stripe_len)
        first = lambda attns: jnp.stack([a[0] for a in attns])  # [L, H, T, T]
        return sc, hists, first(a_task), first(a_probe)

      @jax.jit
      def losses(state, batch, head_mask):
        model = model_of(state)
        return train.metrics_of(lambda x, **kw: model(x, head_mask=head_mask, **kw), batch)

      self._fns = scores, losses
    return self._fns

  def every_eval(self, run, step):
    del step
    scores, *_ = self._compiled(run.graphdef)[0](run.state, np.ones((self.L, self.H), np.float32))
    return _tolist(scores)

  def _ablated(self, run, head_mask):
    """Eval losses (averaged over the eval batches, as the loop does) and scores."""
    scores_fn, losses_fn = self._compiled(run.graphdef)
    batches = run.eval_batches()
    ev = {}
    for b in batches:
      for k, v in jax.device_get(losses_fn(run.state, train.device_batch(b, run.sharding), head_mask)).items():
        ev[k] = ev.get(k, 0.0) + float(v) / len(batches)
    return ev, jax.device_get(scores_fn(run.state, head_mask)[0])

  def at_end(self, run):
    L, H = self.L, self.H
    ones = np.ones((L, H), np.float32)
    sc, hists, task_maps, probe_maps = jax.device_get(
        self._compiled(run.graphdef)[0](run.state, ones))
    ind, prev = np.asarray(sc['induction']), np.asarray(sc['previous_token'])
    targets = {}  # kind -> heads [(layer, head)] zeroed together
    if L >= 2:
      targets['previous_token'] = [(0, int(prev[0].argmax()))]
    targets['induction'] = [(L - 1, int(ind[L - 1].argmax()))]
    # Baseline: a random other head of the same layer as the first target.
    layer = next(iter(targets.values()))[0][0]
    chosen = [h for heads in targets.values() for h in heads]
    others = [h for h in range(H) if (layer, h) not in chosen]
    if others:
      targets['random'] = [(layer, int(np.random.default_rng(self.seed).choice(others)))]
    if L >= 2:  # the previous-token function may be spread over several heads
      targets['previous_token_heads'] = [(0, h) for h in range(H) if prev[0, h] > PREV_HEAD]
    ablations = []
    for kind, heads in targets.items():
      if not heads:
        continue
      mask = ones.copy()
      mask[tuple(np.array(heads).T)] = 0.0
      ev, sc_a = self._ablated(run, mask)
      ablations.append({'ablated': kind, 'heads': heads, **ev,
                        **{f'max_{k}': float(np.max(v[-1])) for k, v in sc_a.items()}})
    np.savez_compressed(os.path.join(run.workdir, ATTENTION), probe_tokens=self.probe_tokens[0],
                        probe_attention=np.asarray(probe_maps, np.float32),
                        task_tokens=self.task_tokens[0],
                        task_attention=np.asarray(task_maps, np.float32))
    B, T = self.task_tokens.shape
    causal = np.tril(np.ones((T, T), np.float32))
    uniform = np.broadcast_to(causal / causal.sum(-1, keepdims=True), (B, 1, T, T))
    return {'final_scores': _tolist(sc), 'argmax_offsets': np.asarray(hists).round(4).tolist(),
            'ablations': ablations, 'stripe_len': self.stripe_len,
            # above the core count the CPU was shared and wall times are inflated
            'load_avg_1min': os.getloadavg()[0] if hasattr(os, 'getloadavg') else None,
            'cpu_count': os.cpu_count(),
            'run_s': time.perf_counter() - self.t0,  # of this process, compiles included
            # the induction score of uniform causal attention on the same sequences
            'chance_induction': float(metrics.induction_score(uniform, self.task_tokens)[0])}
