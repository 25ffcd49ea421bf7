"""What runs inside the training loop: per-head scores at every eval, ablations at the end.

`Scores(config)` is a `train.train_and_evaluate` hook named `scores`:
  every_eval  a `split='scores'` row of metrics.jsonl: every head's scores as `[layer][head]`
              lists: `induction` (prefix matching on task-style sequences), `stripe` and
              `stripe_near` (on `[BOS] + r + r` probes with |r| = study.stripe_len, a length
              not used in training), `previous_token`
  at_end      summary.json's `scores`: the final scores, argmax-offset histograms, path
              ablations (earlier layers' output out of the last layer's q, k or v input), single-
              head and head-group ablations (mean and zero, `circuit.forward_masked`), loss on
              predictable tokens in and out of the training distribution (`generalisation`),
              the induction score of uniform attention (chance); and attention.npz (every
              head's attention on one task and one probe sequence)
"""
from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from attnzoo import metrics, tasks, train
from attnzoo.studies.induction import circuit

ATTENTION = 'attention.npz'
# A layer-1 head counts as a previous-token head above this score (uniform causal attention
# scores mean_i 1/(i+1), about 0.06 at T=64).
PREV_HEAD = 0.1
# A head counts as an induction head above this induction score.
IND_HEAD = 0.3


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
    """Jitted functions of the state: scores of the model as it is; eval losses and scores of
    a `circuit.forward_masked` ablation; logits."""
    if self._fns is None:
      task, probe = jnp.asarray(self.task_tokens), jnp.asarray(self.probe_tokens)

      def model_of(state):
        model, _ = nnx.merge(graphdef, state)
        model.eval()
        return model

      def scores_of(a_task, a_probe):
        sc, hists = head_scores(a_task, task, a_probe, self.stripe_len)
        first = lambda attns: jnp.stack([a[0] for a in attns])  # [L, H, T, T]
        return sc, hists, first(a_task), first(a_probe)

      @jax.jit
      def scores(state):
        model = model_of(state)
        return scores_of(model(task, return_attention=True)[1],
                         model(probe, return_attention=True)[1])

      @functools.partial(jax.jit, static_argnames='mode')
      def ablated_scores(state, keep_paths, keep_heads, mode):
        model = model_of(state)
        run = lambda x: circuit.forward_masked(model, x, keep_paths, keep_heads, mode=mode)[1]
        return scores_of(run(task), run(probe))[0]

      @functools.partial(jax.jit, static_argnames='mode')
      def ablated_losses(state, batch, keep_paths, keep_heads, mode):
        model = model_of(state)
        return train.metrics_of(lambda x, **kw: circuit.forward_masked(
            model, x, keep_paths, keep_heads, mode=mode)[0], batch)

      @jax.jit
      def logits(state, tokens):
        return model_of(state)(tokens)

      self._fns = scores, ablated_scores, ablated_losses, logits
    return self._fns

  def every_eval(self, run, step):
    del step
    return _tolist(self._compiled(run.graphdef)[0](run.state)[0])

  def _ablated(self, run, model, mode, paths=(), heads=()):
    """Eval losses (averaged over the eval batches, as the loop does) and the best last-layer
    scores with `paths` and `heads` removed (`circuit.masks`)."""
    _, scores_fn, losses_fn, _ = self._compiled(run.graphdef)
    keep = circuit.masks(model, paths, heads)
    batches = run.eval_batches()
    ev = {}
    for b in batches:
      out = losses_fn(run.state, train.device_batch(b, run.sharding), *keep, mode=mode)
      for k, v in jax.device_get(out).items():
        ev[k] = ev.get(k, 0.0) + float(v) / len(batches)
    sc = jax.device_get(scores_fn(run.state, *keep, mode=mode))
    return {'mode': mode, 'paths': [list(p) for p in paths], 'heads': [list(h) for h in heads],
            **ev, **{f'max_{k}': float(np.max(v[-1])) for k, v in sc.items()}}

  def ablations(self, run, sc) -> list[dict]:
    """Path ablations (every earlier layer's output out of the last layer's q, k or v input),
    every single head, and the groups of previous-token and induction heads; each with mean-
    and zero-ablation."""
    L, H = self.L, self.H
    model = run.model()
    ind, prev = np.asarray(sc['induction']), np.asarray(sc['previous_token'])
    groups = {'induction_heads': [(L - 1, h) for h in range(H) if ind[L - 1, h] > IND_HEAD]}
    if L >= 2:  # the previous-token function may be spread over several heads
      groups['previous_token_heads'] = [(0, h) for h in range(H) if prev[0, h] > PREV_HEAD]
    out = []
    for mode in circuit.MODES:
      if L >= 2:
        for kind in circuit.INPUTS:
          paths = [(src, L - 1, kind) for src in range(L - 1)]
          out.append({'ablated': f'path_{kind}', **self._ablated(run, model, mode, paths)})
      for layer in range(L):
        for head in range(H):
          out.append({'ablated': 'head', **self._ablated(run, model, mode, heads=[(layer, head)])})
      for name, heads in groups.items():
        if heads:
          out.append({'ablated': name, **self._ablated(run, model, mode, heads=heads)})
    return out

  def generalisation(self, run) -> dict:
    """Loss on the predictable tokens (those whose input token occurred before) in and out of
    the training distribution: task sequences at the training length, at study.long_factor x
    it with the training periods and with study.heldout_periods, and `[BOS] + r + r` probes of
    each length in study.probe_lens; each with its loss by position. Lengths the model cannot
    take (learned positions beyond max_len) are left out."""
    config, s = run.config, run.config.study
    logits_fn = self._compiled(run.graphdef)[3]
    max_len, V = train.model_config(config).max_len, config.task.vocab_size
    rng = np.random.default_rng([config.seed, 11])

    def loss(tokens, targets, mask):
      logits = logits_fn(run.state, jnp.asarray(tokens))
      xent = np.asarray(optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), jnp.asarray(targets)))
      n = mask.sum(0)
      return {'loss': float((xent * mask).sum() / mask.sum()),
              'by_position': [float(x) if c else None for x, c in
                              zip((xent * mask).sum(0) / np.maximum(n, 1), n)]}

    out = {'task': [], 'probe': []}
    T, lo, hi = config.task.seq_len, config.task.min_period, config.task.max_period
    for length, (a, b) in ((T, (lo, hi)), (s.long_factor * T, (lo, hi)),
                           (s.long_factor * T, tuple(s.heldout_periods))):
      if length > max_len or b >= V or 2 * b > length:
        continue
      batch = tasks.induction(rng, batch_size=s.generalisation_batch, seq_len=length,
                              vocab_size=V, min_period=a, max_period=b)
      idx = np.arange(length)[None]
      mask = (idx > batch['periods'][:, None]).astype(np.float32)  # input seen one period ago
      out['task'].append({'seq_len': length, 'periods': [a, b],
                          **loss(batch['inputs'], batch['targets'], mask)})
    for n in s.probe_lens:
      if 2 * n + 1 > max_len or n >= V:
        continue
      seqs = metrics.repeated_tokens(rng, s.generalisation_batch, n, V)
      idx = np.arange(2 * n)[None]
      mask = np.broadcast_to((idx > n) & (idx < 2 * n), (len(seqs), 2 * n)).astype(np.float32)
      out['probe'].append({'length': n, **loss(seqs[:, :-1], seqs[:, 1:], mask)})
    return out

  def at_end(self, run):
    sc, hists, task_maps, probe_maps = jax.device_get(self._compiled(run.graphdef)[0](run.state))
    np.savez_compressed(os.path.join(run.workdir, ATTENTION), probe_tokens=self.probe_tokens[0],
                        probe_attention=np.asarray(probe_maps, np.float32),
                        task_tokens=self.task_tokens[0],
                        task_attention=np.asarray(task_maps, np.float32))
    B, T = self.task_tokens.shape
    causal = np.tril(np.ones((T, T), np.float32))
    uniform = np.broadcast_to(causal / causal.sum(-1, keepdims=True), (B, 1, T, T))
    others = [h for h in range(self.H) if self.L < 2 or h != int(np.argmax(sc['previous_token'][0]))]
    return {'final_scores': _tolist(sc), 'argmax_offsets': np.asarray(hists).round(4).tolist(),
            'ablations': self.ablations(run, sc), 'generalisation': self.generalisation(run),
            # the control of single-head ablations: a random other head of layer 1
            'random_head': [0, int(np.random.default_rng(self.seed).choice(others))],
            'stripe_len': self.stripe_len,
            # the induction score of uniform causal attention on the same sequences
            'chance_induction': float(metrics.induction_score(uniform, self.task_tokens)[0]),
            # above the core count the CPU was shared and wall times are inflated
            'load_avg_1min': os.getloadavg()[0] if hasattr(os, 'getloadavg') else None,
            'cpu_count': os.cpu_count(),
            'run_s': time.perf_counter() - self.t0}  # of this process, compiles included
