"""Olsson et al.'s in-context-learning score on real text, beside prefix-matching heads.

Byte-level decoders (`study.depths` layers, attention-only by default, the `text` task:
`tasks.corpus()`, Python's own documentation topics) are trained through the one training loop
into `<workdir>/<run>/`. At every eval the `ICL` hook writes a `split='icl'` row:
  loss_by_position  mean loss of each context position on fixed held-out windows (nats)
  icl_score         Olsson's ICL score: mean loss at the late positions `study.late` minus at the
                    early ones `study.early` (Olsson: token 500 minus token 50 of 512; negative =
                    later tokens are predicted better thanks to the context)
  prefix_matching   every head's induction (prefix-matching) score [layer][head] on `r + r`
                    probes of distinct bytes drawn by corpus frequency (`text_probe`,
                    `metrics.induction_score`)
`report(workdir)` writes report.md and icl.png from those files alone.
"""
from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from attnzoo import config as config_lib
from attnzoo import metrics, tasks, train
from attnzoo.studies import common

# A head counts as prefix matching above this score (as the induction study's IND_HEAD).
PREFIX_HEAD = 0.3


class ICL:
  """The hook (see the module docstring)."""
  name = 'icl'

  def __init__(self, config):
    s = config.study
    batch = train.batch_for(config, 10**6, 'eval', batch_size=s.windows)
    self.inputs, self.targets = jnp.asarray(batch['inputs']), jnp.asarray(batch['targets'])
    self.probe = jnp.asarray(text_probe(np.random.default_rng([config.seed, 7]),
                                        s.probe_batch, s.probe_len))
    self.early, self.late = tuple(s.early), tuple(s.late)
    self._fn = None

  def every_eval(self, run, step):
    del step
    if self._fn is None:
      graphdef = run.graphdef

      @jax.jit
      def fn(state):
        model, _ = nnx.merge(graphdef, state)
        model.eval()
        logits = model(self.inputs).astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, self.targets)
        attns = model(self.probe, return_attention=True)[1]
        return losses.mean(0), jnp.stack([metrics.induction_score(a, self.probe) for a in attns])
      self._fn = fn
    by_pos, prefix = jax.device_get(self._fn(run.state))
    return {'loss_by_position': np.round(by_pos, 4).tolist(),
            'icl_score': icl_score(by_pos, self.early, self.late),
            'prefix_matching': np.round(prefix, 4).tolist()}


def text_probe(rng: np.random.Generator, batch_size: int, length: int) -> np.ndarray:
  """[B, 2L] probes r + r, r of L distinct bytes drawn by their frequency in `tasks.corpus()`
  (uniform random bytes, most of which never occur in the text, would probe the model off its
  training distribution; and the text has no BOS)."""
  vals, counts = np.unique(tasks.corpus(), return_counts=True)
  r = np.stack([rng.choice(vals, length, replace=False, p=counts / counts.sum())
                for _ in range(batch_size)])
  return np.concatenate([r, r], axis=1).astype(np.int32)


def icl_score(loss_by_position, early, late) -> float:
  """Mean loss over positions [late) minus over [early) (each a (start, stop) pair)."""
  x = np.asarray(loss_by_position)
  return float(x[late[0]:late[1]].mean() - x[early[0]:early[1]].mean())


def make_plan(config) -> dict[str, ml_collections.ConfigDict]:
  plan = {}
  for depth in config.study.depths:
    c = ml_collections.ConfigDict(config.to_dict())
    config_lib.set_depth(c, depth)
    plan[f'text_{depth}l_s{config.seed}'] = c
  return plan


def run(config: ml_collections.ConfigDict, workdir: str, *,
        log: Callable[[str], None] = print) -> str:
  """Trains the plan (finished runs are reused, interrupted ones resume), writes the report."""
  failed = common.run_plan(make_plan(config), workdir, lambda c: [ICL(c)], log=log)
  text = report(workdir, config)
  if failed:
    raise RuntimeError(f'runs failed: {", ".join(failed)} (see <run>/error.txt)')
  return text


def curves(run: dict) -> dict:
  """steps, ICL score, best prefix-matching score (any head) and its layer, eval loss."""
  rows = run['rows'].get('icl', [])
  evals = {r['step']: r['loss'] for r in run['rows'].get('eval', [])}
  best = [np.asarray(r['prefix_matching']) for r in rows]
  return {'steps': [r['step'] for r in rows], 'icl': [r['icl_score'] for r in rows],
          'prefix': [float(b.max()) for b in best],
          'layer': [int(np.unravel_index(b.argmax(), b.shape)[0]) + 1 for b in best],
          'loss': [evals.get(r['step']) for r in rows],
          'by_position': [r['loss_by_position'] for r in rows]}


def jump(c: dict) -> dict | None:
  """Where the best prefix-matching score first crosses PREFIX_HEAD, and the ICL score's change
  over that eval interval against the largest change over any other interval."""
  steps, icl, prefix = c['steps'], c['icl'], c['prefix']
  k = next((i for i, p in enumerate(prefix) if p > PREFIX_HEAD), None)
  if k is None or k == 0:
    return None
  deltas = np.diff(icl)
  others = np.delete(deltas, k - 1)
  return {'from': steps[k - 1], 'to': steps[k], 'icl_change': float(deltas[k - 1]),
          'largest_other': float(others[np.argmin(others)]) if len(others) else None,
          'largest_at': int(np.argmin(deltas))}


def report(workdir: str, config) -> str:
  s = config.study
  runs = {r['name']: r for r in common.load_runs(workdir) if r['summary']}
  lines = ["# In-context learning on text (Olsson et al. 2022's ICL score)", '',
           f'Byte-level decoders on `tasks.corpus()` (Python\'s documentation topics, '
           f'{config.task.heldout:.0%} held out for eval), T={config.task.seq_len}, d_model='
           f'{config.model.d_model}, {config.model.num_heads} heads, mlp={config.model.mlp}, '
           f'positions {config.model.positions}; {config.train.num_steps} steps of batch '
           f'{config.train.batch_size}, lr {config.train.learning_rate:g}. ICL score = mean loss '
           f'at positions {s.late[0]}–{s.late[1] - 1} minus at {s.early[0]}–{s.early[1] - 1} '
           f'(held-out windows). Prefix matching: best head\'s induction score on `r + r` probes, r '
           f'{s.probe_len} distinct bytes drawn by their frequency in the corpus; a head counts '
           f'above {PREFIX_HEAD}.', '']
  header = ['run', 'wall s', 'eval loss', 'ICL score', 'best prefix matching (layer)',
            'prefix matching > 0.3 first at', 'ICL change there', 'largest other change']
  body = []
  for name, r in runs.items():
    c, j = curves(r), jump(curves(r))
    body.append([name, common.fmt(r['summary'].get('wall_s'), '.0f'), common.fmt(c['loss'][-1]),
                 common.fmt(c['icl'][-1]), f'{c["prefix"][-1]:.2f} ({c["layer"][-1]})',
                 '—' if j is None else f'steps {j["from"]}–{j["to"]}',
                 '—' if j is None else f'{j["icl_change"]:+.3f}',
                 '—' if j is None or j['largest_other'] is None else
                 f'{j["largest_other"]:+.3f}'])
  lines += common.table(header, body) + ['']
  lines += ['## Findings', ''] + [f'- {f}' for f in findings(runs)] + ['']
  if runs:
    plot(runs, os.path.join(workdir, 'icl.png'))
    lines += ['![ICL score, prefix matching and loss by position](icl.png)', '']
  return common.write_report(workdir, lines)


def findings(runs: dict) -> list[str]:
  out = []
  for name, r in runs.items():
    c = curves(r)
    j = jump(c)
    first = f'ICL score {c["icl"][0]:+.2f} at step {c["steps"][0]}, {c["icl"][-1]:+.2f} at ' \
            f'step {c["steps"][-1]}'
    if j is None:
      out.append(f'{name}: {first}; no head passed prefix matching {PREFIX_HEAD} '
                 f'(best {max(c["prefix"]):.2f}).')
      continue
    big = j['largest_other'] is None or j['icl_change'] <= j['largest_other']
    out.append(f'{name}: {first}; prefix matching first passed {PREFIX_HEAD} between steps '
               f'{j["from"]} and {j["to"]}, where the ICL score changed by '
               f'{j["icl_change"]:+.3f} nats: '
               + ('the largest drop of any eval interval.' if big else
                  f'not the largest drop (that is {j["largest_other"]:+.3f}, between steps '
                  f'{c["steps"][j["largest_at"]]} and {c["steps"][j["largest_at"] + 1]}).'))
  return out


def plot(runs: dict, path: str):
  plt = common.plt()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for k, (name, r) in enumerate(runs.items()):
    c = curves(r)
    color = plt.get_cmap('tab10')(k)
    axes[0].plot(c['steps'], c['icl'], marker='.', color=color, label=name)
    axes[1].plot(c['steps'], c['prefix'], marker='.', color=color, label=name)
    T = len(c['by_position'][-1])
    for i, ls in ((0, ':'), (len(c['steps']) // 4, '--'), (-1, '-')):
      axes[2].plot(range(T), c['by_position'][i], ls=ls, color=color, lw=1,
                   label=f'{name} step {c["steps"][i]}')
  axes[0].axhline(0, color='grey', lw=0.8)
  axes[0].set(xlabel='step', ylabel='ICL score (nats; lower = more in-context learning)',
              title='ICL score over training')
  axes[1].axhline(PREFIX_HEAD, color='grey', ls=':', lw=1)
  axes[1].set(xlabel='step', ylabel='best head prefix-matching score', ylim=(0, 1),
              title='prefix-matching heads over training')
  axes[2].set(xlabel='context position', ylabel='loss (nats)', yscale='log',
              title='held-out loss by context position')
  for ax in axes:
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  common.save(fig, path)
