"""report.md, report.json and the figures of an induction study, from its saved files alone."""
from __future__ import annotations

import json
import math
import os

import numpy as np

from attnzoo.studies import common
from attnzoo.studies.induction import analysis, hooks

VARIANTS = 'variants.json'  # the study's spec labels, in the order asked for


def _window(row):
  p = row['phase']
  if 'window' not in p or p['total_drop'] < 1.0:
    return '—'
  (a, b), (sa, sb) = p['window'], p['window_score']
  return f'{a}–{b} (ind {sa:.2f}→{sb:.2f})'


def _jump(row):
  j = row['phase']['jump']
  return f'{j["drop"]:.2f} nats in {j["steps"][0]}–{j["steps"][1]}' if (
      row['phase']['total_drop'] >= 1.0) else '—'


def load_rows(workdir: str):
  """(rows sorted as asked for, loaded runs by name, failed run names)."""
  loaded = common.load_runs(workdir)
  runs = {r['name']: r for r in loaded if r['summary'] is not None and not r['error']}
  failed = [r['name'] for r in loaded if r['error'] or r['summary'] is None]
  path = os.path.join(workdir, VARIANTS)
  order = json.load(open(path)) if os.path.exists(path) else []
  rank = lambda row: (order.index(row['variant']) if row['variant'] in order else len(order),
                      row['variant'], -row['layers'])
  return sorted((analysis.analyze(r) for r in runs.values()), key=rank), runs, failed


def report(workdir: str) -> str:
  """Writes report.md, report.json, curves.png and attention_<variant>.png; returns the
  Markdown."""
  rows, runs, failed = load_rows(workdir)
  by_variant: dict[str, dict[int, dict]] = {}
  for row in rows:
    by_variant.setdefault(row['variant'], {})[row['layers']] = row
  variant_checks = {v: analysis.checks(d.get(2), d.get(1)) for v, d in by_variant.items()
                    if 2 in d and 1 in d}
  cfg = next(iter(runs.values()))['config'] if runs else {}
  task, model, t = cfg.get('task', {}), cfg.get('model', {}), cfg.get('train', {})
  lines = ['# Induction heads: emergence across attention variants', '',
           'Attention-only decoders (Elhage et al. 2021; Olsson et al. 2022) on the `induction` '
           'task: `[BOS]` + a segment of distinct random tokens (period '
           f'{task.get("min_period")}–{task.get("max_period")}, varying) repeated to '
           f'T={task.get("seq_len")}, V={task.get("vocab_size")}; d={model.get("d_model")}, '
           f'{model.get("num_heads")} heads, {model.get("positions")} positions, '
           f'{t.get("num_steps")} steps of batch {t.get("batch_size")}, AdamW (weight decay '
           f'{t.get("weight_decay")}) lr {t.get("learning_rate")} with {t.get("warmup_steps")} '
           f'warmup steps and cosine decay to {t.get("final_lr_fraction", 0.1)}×, gradient clip '
           f'{t.get("grad_clip")}; eval every {t.get("eval_every")} steps on '
           f'{t.get("eval_batches")} batches. Each variant trains a 2-layer model and a 1-layer '
           'control with the same budget.', '', '## Results', '']
  lines += common.table(
      ['variant', 'layers', 'repeat loss', 'ICL score', 'max induction', 'max stripe (near)',
       'max prev-token', 'phase change (steps, induction score)', 'jump', 'wall s', 'verdict'],
      [[r['variant'], r['layers'], f'{r["repeat_loss"]:.3f}', f'{r["icl_score"]:.2f}',
        f'{r["max_induction"]:.2f}', f'{r["max_stripe"]:.2f} ({r["max_stripe_near"]:.2f})',
        f'{r["max_previous_token"]:.2f}', _window(r), _jump(r), f'{r["wall_s"]:.0f}',
        r['verdict']] for r in rows])
  stripe_len = rows[0]['stripe_len'] if rows else None
  chance = rows[0]['chance_induction'] if rows else None
  lines += ['',
            'Scores are per head, the table gives the best head (stripe: of the last layer, '
            'previous-token: of layer 1): *induction* = attention mass on prefix-matching keys '
            '(the token after an earlier copy of the current token) on eval sequences (uniform '
            f'causal attention scores {common.fmt(chance, ".2f")}); *stripe* = mean attention on '
            f'the diagonal at offset −(L−1) of `[BOS] + r + r` probes with L={stripe_len}, a '
            'length never seen in training, second-copy queries only; *near* = fraction of '
            'those queries whose most-attended key is within one position of the stripe '
            '(catches heads that implement induction one position off); *prev-token* = mean '
            'A[i, i−1]. ICL score = loss on the first period − loss on the repeated part (not '
            'Olsson et al.\'s score, which compares a late and an early token position). Phase '
            'change: from the first eval where the repeat loss has made 10% of its total drop '
            'to the first where it has made 90%; jump: the largest drop between evals at most '
            '20% of training apart.', '',
            f'Verdict: *induction heads* if the final repeat loss < {analysis.FORMED_LOSS} nats '
            f'and a head has induction or near-stripe score > {analysis.FORMED_SCORE}; *copies '
            'without a clear induction head* if the loss is low but no head scores; *partial* '
            f'if the repeat loss is below {analysis.PARTIAL_LOSS} nats; else *none* (a 1-layer '
            'model gets about ln(period) ≈ 2.5 nats by predicting one of the tokens already '
            'seen, hence its positive ICL score without induction).', '']
  if variant_checks:
    mark = {True: 'pass', False: 'FAIL', None: '—'}
    lines += ['## Checks (2-layer model and 1-layer control of each variant)', '']
    lines += common.table(['check', *variant_checks],
                          [[text, *(mark[c[key]] for c in variant_checks.values())]
                           for key, text in analysis.CHECKS])
    lines.append('')
  lines += ['## Head ablations (zeroing heads via `head_mask`)', '']
  lines += common.table(
      ['variant', 'layers', 'ablated', 'heads (layer.head)', 'repeat loss (before → after)',
       'max last-layer induction', 'max last-layer stripe'],
      [[r['variant'], r['layers'], a['ablated'],
        ', '.join(f'{layer + 1}.{head}' for layer, head in a['heads']),
        f'{r["repeat_loss"]:.3f} → {a["loss_repeat"]:.3f}', f'{a["max_induction"]:.2f}',
        f'{a["max_stripe"]:.2f}'] for r in rows for a in r['ablations']])
  lines += ['', '*previous_token*: the best layer-1 previous-token head; *induction*: the best '
            'last-layer induction head; *random*: another head of the first ablated head\'s '
            'layer, drawn with the run seed (baseline); *previous_token_heads*: every layer-1 '
            f'head with previous-token score > {hooks.PREV_HEAD}. Heads are zeroed together; '
            'induction and stripe scores after ablation are the best over the last layer\'s '
            'heads.', '']
  lines += ['## Figures', '']
  if rows:
    plot_curves(rows, runs, os.path.join(workdir, 'curves.png'))
    lines.append('![curves](curves.png) — repeat loss and best induction score against step '
                 '(1-layer runs dashed; grey dotted: chance, i.e. the uniform prediction ln V '
                 'and the score of uniform attention).')
  lines += [f'![{v}]({p}) — {v}: top induction and previous-token heads on a probe.'
            for v, p in plot_attention(rows, runs, workdir)]
  if failed:
    lines += ['', '## Failed or unfinished runs', ''] + [
        f'- {name}: see {name}/error.txt' for name in failed]
  loads = [r['summary']['scores'].get('load_avg_1min') for r in runs.values()]
  loads = [x for x in loads if x is not None]
  cores = next(iter(runs.values()))['summary']['scores'].get('cpu_count') if runs else None
  load = (f'; 1-minute load average at the end of the runs {min(loads):.1f}–{max(loads):.1f} '
          f'on {cores} cores (above the core count the machine was shared and wall times are '
          'inflated)' if loads else '')
  lines += ['', f'Total wall time of the runs: {sum(r["wall_s"] for r in rows):.0f} s '
            f'({len(rows)} runs, each including compilation, evals, checkpoints and '
            f'ablations{load}). Every run is a training run: `attnzoo.load_run(<run dir>)`. '
            'Rebuild this report without retraining: `python experiments/induction_heads.py '
            '--workdir=... --report_only`.']
  text = common.write_report(workdir, lines)
  with open(os.path.join(workdir, 'report.json'), 'w') as f:
    json.dump({'rows': rows, 'checks': variant_checks, 'failed': failed, 'config': cfg}, f,
              indent=1)
  return text


# ---- figures ----------------------------------------------------------------------------------

def _style(rows):
  """{variant: (colour, marker)}: the shared colour of the variant's mechanism, and a marker
  telling apart option sets of one mechanism."""
  out, seen = {}, {}
  markers = ('', 'o', 's', '^', 'v', 'D')
  for v in dict.fromkeys(r['variant'] for r in rows):
    n = seen.setdefault(v.split(':')[0], [])
    out[v] = (common.color(v), markers[len(n) % len(markers)])
    n.append(v)
  return out


def plot_curves(rows, runs, path):
  plt = common.plt()
  style = _style(rows)
  fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(13, 4.5))
  for row in rows:
    run = runs[row['run']]
    color, marker = style[row['variant']]
    kw = dict(color=color, marker=marker, markersize=3, markevery=4,
              ls='-' if row['layers'] >= 2 else '--', label=f'{row["variant"]} ({row["layers"]}L)')
    evals, scores = run['rows']['eval'], run['rows']['scores']
    ax_loss.plot([r['step'] for r in evals], [max(r['loss_repeat'], 1e-3) for r in evals], **kw)
    ax_score.plot([r['step'] for r in scores], [float(np.max(r['induction'])) for r in scores],
                  **kw)
  vocab = next(iter(runs.values()))['config']['task']['vocab_size']
  common.chance_line(ax_loss, math.log(vocab), f'chance: ln V = {math.log(vocab):.2f}')
  common.chance_line(ax_score, rows[0]['chance_induction'], 'chance: uniform attention')
  ax_loss.set(yscale='log', xlabel='step', ylabel='eval repeat loss (nats)', title='Repeat loss')
  ax_score.set(xlabel='step', ylabel='best head induction score', ylim=(0, 1.02),
               title='Induction (prefix-matching) score')
  common.legend_outside(ax_score)
  ax_loss.legend(handles=ax_loss.get_lines()[-1:], fontsize=7, loc='lower left')
  common.save(fig, path)


def plot_attention(rows, runs, workdir) -> list[tuple[str, str]]:
  """attention_<variant>.png: top induction and previous-token heads of the variant's deepest
  run on its saved probe sequence."""
  plt = common.plt()
  deepest: dict[str, dict] = {}
  for row in rows:
    if row['variant'] not in deepest or row['layers'] > deepest[row['variant']]['layers']:
      deepest[row['variant']] = row
  out = []
  for variant, row in deepest.items():
    run = runs[row['run']]
    A = np.load(os.path.join(run['dir'], hooks.ATTENTION))['probe_attention']
    L = row['layers']
    final = run['summary']['scores']['final_scores']
    ind = np.asarray(final['stripe'][L - 1]) + np.asarray(final['induction'][L - 1])
    h_ind, h_prev = int(ind.argmax()), int(np.argmax(final['previous_token'][0]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    common.heatmap(fig, axes[0], A[L - 1, h_ind], f'top induction head {L}.{h_ind} '
                   f'(stripe {final["stripe"][L - 1][h_ind]:.2f})')
    common.heatmap(fig, axes[1], A[0, h_prev], f'top previous-token head 1.{h_prev} '
                   f'(score {final["previous_token"][0][h_prev]:.2f})')
    fig.suptitle(f'{variant}, {L} layer{"s" * (L > 1)}: attention on [BOS] + r + r, '
                 f'|r| = {row["stripe_len"]}')
    name = f'attention_{common.Spec(variant, variant).slug}.png'
    common.save(fig, os.path.join(workdir, name), dpi=90)
    out.append((variant, name))
  return out


def outputs(workdir: str) -> str:
  """Where a study's outputs are, with one line per run (what the experiment script prints)."""
  with open(os.path.join(workdir, 'report.json')) as f:
    rows = json.load(f)['rows']
  figures = sorted(n for n in os.listdir(workdir) if n.endswith('.png'))
  lines = [f'report: {os.path.join(workdir, "report.md")} (and report.json)',
           f'figures: {", ".join(figures)}',
           f'runs (attnzoo.load_run): {os.path.join(workdir, "<run>")}/']
  lines += [f'  {r["run"]}: repeat loss {r["repeat_loss"]:.3f}, best induction '
            f'{r["max_induction"]:.2f}, stripe {r["max_stripe"]:.2f}: {r["verdict"]}'
            for r in rows]
  return '\n'.join(lines)
