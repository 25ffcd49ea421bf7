"""report.md, report.json and the figures of an induction study, from its saved files alone."""
from __future__ import annotations

import json
import math
import os

import numpy as np

from attnzoo.studies import common
from attnzoo.studies.induction import analysis, hooks

VARIANTS = 'variants.json'  # the study's spec labels, in the order asked for
GOAL = 0.1  # loss on predictable tokens (nats) that counts as induction working


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


def _positions(model) -> str:
  """How a run's model knows positions, in words."""
  p = f'{model.get("positions")} positions'
  if model.get('positions') == 'rope':
    f = model.get('rope_fraction', 1.0)
    p = 'rotary positions' + (f' (the highest {f:g} of the frequencies)' if f < 1 else '')
    if model.get('nope_layers'):
      p += f' except in layers {", ".join(str(i + 1) for i in model["nope_layers"])}'
  if model.get('scalable_softmax'):
    p += ', Scalable-Softmax query scaling (log_64 n)'
  return p


def load_rows(workdir: str):
  """(rows sorted as asked for, loaded runs by name, failed run names)."""
  loaded = common.load_runs(workdir)
  runs = {r['name']: r for r in loaded if r['summary'] is not None and not r['error']}
  failed = [r['name'] for r in loaded if r['error'] or r['summary'] is None]
  path = os.path.join(workdir, VARIANTS)
  order = json.load(open(path)) if os.path.exists(path) else []
  rank = lambda row: (order.index(row['variant']) if row['variant'] in order else len(order),
                      row['variant'], -row['layers'], row['d_model'], row['seed'])
  return sorted((analysis.analyze(r) for r in runs.values()), key=rank), runs, failed


def report(workdir: str) -> str:
  """Writes report.md, report.json, curves.png and attention_<variant>.png; returns the
  Markdown."""
  rows, runs, failed = load_rows(workdir)
  by_variant: dict[str, dict[int, dict]] = {}
  for row in rows:  # a variant's runs of one width and seed, by depth
    by_variant.setdefault(row['run'].replace(f'-L{row["layers"]}', ''), {})[row['layers']] = row
  variant_checks = {v: analysis.checks(d.get(2), d.get(1)) for v, d in by_variant.items()
                    if 2 in d and 1 in d}
  cfg = next(iter(runs.values()))['config'] if runs else {}
  task, model, t = cfg.get('task', {}), cfg.get('model', {}), cfg.get('train', {})
  depths = cfg.get('study', {}).get('depths', (2, 1))
  widths = sorted({row['d_model'] for row in rows}) or [model.get('d_model')]
  lines = ['# Induction heads: emergence across attention variants', '',
           'Attention-only decoders (Elhage et al. 2021; Olsson et al. 2022) on the `induction` '
           'task: `[BOS]` + a segment of distinct random tokens (period '
           f'{task.get("min_period")}–{task.get("max_period")}, varying) repeated to '
           f'T={task.get("seq_len")}, V={task.get("vocab_size")}'
           + (f', after a random prefix of 0–{task["max_prefix"]} tokens' if task.get('max_prefix')
              else '')
           + (f', with a gap of 0–{task["max_gap"]} random tokens after the first copy (the '
              'repeats resume at a random phase)' if task.get('max_gap') else '')
           + (f'; trained at sorted random positions spread over up to '
              f'0–{task["random_positions"] - 1} (evaluated at 0…T−1)'
              if task.get('random_positions') else '')
           + f'; d={", ".join(map(str, widths))}, {model.get("num_heads")} heads, '
           f'{_positions(model)}, '
           f'{t.get("num_steps")} steps of batch {t.get("batch_size")}, AdamW (weight decay '
           f'{t.get("weight_decay")}) lr {t.get("learning_rate")} with {t.get("warmup_steps")} '
           f'warmup steps and cosine decay to {t.get("final_lr_fraction", 0.1)}×, gradient clip '
           f'{t.get("grad_clip")}; eval every {t.get("eval_every")} steps on '
           f'{t.get("eval_batches")} batches. '
           + ('Each variant trains a 2-layer model and a 1-layer control with the same budget.'
              if 1 in depths else f'Layers: {", ".join(map(str, depths))} (no 1-layer control).'),
           '', '## Results', '']
  lines += common.table(
      ['run', 'variant', 'layers', 'repeat loss', 'ICL score', 'max induction', 'max stripe (near)',
       'max prev-token', 'phase change (steps, induction score)', 'jump', 'wall s', 'verdict'],
      [[r['run'], r['variant'], r['layers'], f'{r["repeat_loss"]:.3f}', f'{r["icl_score"]:.2f}',
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
  lines += seed_lines(rows, workdir) + ablation_lines(rows) + offset_lines(rows)
  lines += generalisation_lines(rows)
  lines += ['## Figures', '']
  if rows:
    plot_curves(rows, runs, os.path.join(workdir, 'curves.png'))
    lines.append('![curves](curves.png) — repeat loss and best induction score against step '
                 '(1-layer runs dashed; grey dotted: chance, i.e. the uniform prediction ln V '
                 'and the score of uniform attention).')
  if any(r['generalisation']['probe'] or r['generalisation']['task'] for r in rows):
    plot_generalisation(rows, os.path.join(workdir, 'generalisation.png'))
    lines.append('![generalisation](generalisation.png) — loss on predictable tokens against '
                 'the probe length |r| (training periods shaded), and by position on task '
                 'sequences (2-layer runs).')
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
    json.dump({'rows': [{k: v for k, v in r.items() if not k.startswith('_')} for r in rows], 'checks': variant_checks, 'failed': failed, 'config': cfg}, f,
              indent=1)
  return text


def _heads(heads):
  return ', '.join(f'{layer + 1}.{head}' for layer, head in heads)


def ablation_lines(rows) -> list[str]:
  """Path ablations and head ablations, mean and zero side by side."""
  rise = analysis.rise
  lines = ['## Path ablations (Elhage et al. 2021: Q-, K- and V-composition)', '']
  lines += common.table(
      ['run', 'earlier layers\' output removed from the last layer\'s',
       'repeat loss: mean-ablation', 'zero-ablation', 'max last-layer induction (mean / zero)'],
      [[r['run'], {'q': 'query', 'k': 'key', 'v': 'value'}[kind] + ' input',
        f'{r["repeat_loss"]:.3f} → {analysis.ablation(r, f"path_{kind}")["loss_repeat"]:.3f}',
        f'{analysis.ablation(r, f"path_{kind}", "zero")["loss_repeat"]:.3f}',
        f'{analysis.ablation(r, f"path_{kind}")["max_induction"]:.2f} / '
        f'{analysis.ablation(r, f"path_{kind}", "zero")["max_induction"]:.2f}']
       for r in rows if r['layers'] >= 2 for kind in 'qkv'])
  lines += ['', 'Only the path named is cut: the earlier layers still write to the residual '
            'stream the other inputs and the unembedding read. Mean-ablation replaces the '
            'removed signal by its mean over the eval batch at each position, zero-ablation by '
            'zero (which also removes what it says on average, e.g. about positions).', '',
            '## Head ablations', '']
  table = []
  for r in rows:
    sc = r['final_scores']
    for a in r['ablations']:
      if a['mode'] != 'mean' or a['ablated'].startswith('path_'):
        continue
      heads = a['heads']
      what = a['ablated'] if a['ablated'] != 'head' else (
          'random control' if heads == [r['random_head']] else '')
      scores = '' if len(heads) > 1 else (
          f'{sc["previous_token"][heads[0][0]][heads[0][1]]:.2f} / '
          f'{sc["induction"][heads[0][0]][heads[0][1]]:.2f}')
      table.append([r['run'], _heads(heads), what, scores,
                    f'{rise(r, a["ablated"], heads=heads):+.3f}',
                    f'{rise(r, a["ablated"], "zero", heads=heads):+.3f}',
                    f'{a["max_induction"]:.2f}'])
  lines += common.table(['run', 'heads (layer.head)', 'group', 'prev-token / '
                         'induction score', 'Δ repeat loss, mean-ablation', 'zero-ablation',
                         'max last-layer induction after (mean)'], table)
  lines += ['', f'*previous_token_heads*: every layer-1 head with previous-token score > '
            f'{hooks.PREV_HEAD}; *induction_heads*: every last-layer head with induction score '
            f'> {hooks.IND_HEAD}; *random control*: a layer-1 head other than the best '
            'previous-token head, drawn with the run seed.', '']
  for r in rows:
    if r['layers'] < 2:
      continue
    singles = [rise(r, 'head', heads=[[0, h]]) for h in range(len(r['final_scores']['induction'][0]))]
    group = rise(r, 'previous_token_heads')
    lines.append(f'- {r["run"]}: the largest rise from mean-ablating one layer-1 head is '
                 f'{max(singles):.3f} nats, ' + (
                     f'no layer-1 head has a previous-token score > {hooks.PREV_HEAD}'
                     if group is None else
                     f'from all its previous-token heads together {group:.3f} nats') + (
                     ': the previous-token function is spread over several heads (redundant).'
                     if group is not None and max(singles) < 1.0 < group else '.'))
  return lines + ['']


def seed_lines(rows, workdir) -> list[str]:
  """Spread over seeds, per variant, depth and width (when the study has several seeds or
  widths), with seeds.png."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r['variant'], r['layers'], r['d_model']), []).append(r)
  if all(len(g) == 1 for g in groups.values()) and len({r['d_model'] for r in rows}) == 1:
    return []
  spread = lambda xs: (f'{np.mean(xs):.3f} ± {np.std(xs):.3f} ({min(xs):.3f}–{max(xs):.3f})'
                       if xs else '—')
  # generalisation: loss on predictable tokens of each kind of task sequence, as in that table
  kinds = {(t['seq_len'], t['periods'][0]): f'T={t["seq_len"]}, periods '
           f'{t["periods"][0]}–{t["periods"][1]}' for r in rows for t in r['generalisation']['task']}
  table = []
  for (variant, layers, width), g in groups.items():
    steps = [r['phase_step'] for r in g]
    formed = [x for x in steps if x is not None]
    table.append([variant, layers, width, len(g),
                  ', '.join('never' if x is None else str(x) for x in steps)
                  + (f' (median {int(np.median(formed))})' if formed else ''),
                  spread([r['repeat_loss'] for r in g]), spread([r['max_induction'] for r in g]),
                  spread([r['max_stripe'] for r in g]),
                  spread([r['max_previous_token'] for r in g]),
                  *(spread([t['loss'] for r in g for t in r['generalisation']['task']
                            if (t['seq_len'], t['periods'][0]) == key]) for key in kinds)])
  plot_seeds(groups, os.path.join(workdir, 'seeds.png'))
  return (['## Seeds and widths', ''] + common.table(
      ['variant', 'layers', 'd_model', 'seeds', f'phase-change step (repeat loss < '
       f'{analysis.PHASE_LOSS} nats), per seed', 'final repeat loss: mean ± sd (min–max)',
       'max induction', 'max stripe', 'max prev-token',
       *(f'loss on predictable tokens, {name}' for name in kinds.values())], table)
          + ['', '![seeds](seeds.png) — repeat loss of every seed (left) and the phase-change '
             'step against width (right; a cross per seed, never-formed runs at the top).', ''])


def generalisation_lines(rows) -> list[str]:
  """One row per run, one column per kind of sequence (the first is in distribution)."""
  cells = {}
  for r in rows:
    g = r['generalisation']
    for t in g['task']:
      cells.setdefault(f'task T={t["seq_len"]}, periods {t["periods"][0]}–{t["periods"][1]}',
                       {})[r['run']] = t['loss']
    for p in g['probe']:
      cells.setdefault(f'probe L={p["length"]}', {})[r['run']] = p['loss']
  if not cells:
    return []
  body = [[r['run']] + [common.fmt(c.get(r['run']), '.3f') for c in cells.values()] for r in rows]
  return (['## Generalisation: loss on predictable tokens (nats)', '',
           'Predictable: the input token occurred one period earlier (task sequences) or is in '
           'the second copy (`[BOS] + r + r` probes of |r| = L, from its second token on). The '
           'first column is in distribution. Lengths beyond a model\'s learned positions are '
           f'left out (—). Goal: below {GOAL} nats everywhere, in particular at 2× the training '
           'length and at periods never trained on.', ''] + common.table(['run', *cells], body)
          + [''])


def offset_lines(rows) -> list[str]:
  """Each head's most-attended distance on the probes: an induction head peaks at L-1, a
  previous-token head at 1; other circuits show here when the named scores miss them."""
  body = []
  for r in rows:
    offsets = np.asarray(r['argmax_offsets'])  # [L, H, T]
    body += [[r['run'], layer + 1] + [f'{int(np.argmax(h))} ({h.max():.2f})' for h in heads]
             for layer, heads in enumerate(offsets)]
  if not body:
    return []
  H = max(len(b) - 2 for b in body)
  return (['## Most-attended distance of each head', '',
           f'On the `[BOS] + r + r` probes (L = {rows[0]["stripe_len"]}, second-copy queries): '
           'the distance i − j of the most-attended key and, in brackets, the share of queries '
           f'whose most-attended key is at that distance. Induction: {rows[0]["stripe_len"] - 1}; '
           'previous token: 1.', ''] + common.table(['run', 'layer', *(f'head {h}' for h in
                                                                     range(H))], body) + [''])


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
              ls='-' if row['layers'] >= 2 else '--', label=row['run'])
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


def plot_generalisation(rows, path):
  plt = common.plt()
  style = _style(rows)
  fig, (ax_len, ax_pos) = plt.subplots(1, 2, figsize=(13, 4.5))
  for row in rows:
    g, (color, marker) = row['generalisation'], style[row['variant']]
    label = row["run"]
    ls = '-' if row['layers'] >= 2 else '--'
    if g['probe']:
      ax_len.plot([p['length'] for p in g['probe']], [max(p['loss'], 1e-4) for p in g['probe']],
                  ls=ls, marker=marker or 'o', markersize=4, color=color, label=label)
    if row['layers'] >= 2:
      for t, tls in zip(g['task'], ('-', '--', ':')):
        y = [np.nan if v is None else max(v, 1e-4) for v in t['by_position']]
        ax_pos.plot(y, ls=tls, color=color, lw=1, label=f'{label}: T={t["seq_len"]}, periods '
                    f'{t["periods"][0]}–{t["periods"][1]}')
  task = rows[0]['generalisation']['task']
  if task:
    lo, hi = task[0]['periods']
    ax_len.axvspan(lo, hi, color='grey', alpha=0.15, label='training periods')
    ax_pos.axvline(task[0]['seq_len'], color='grey', ls=':', lw=1, label='training length')
  for ax in (ax_len, ax_pos):
    ax.axhline(GOAL, color='black', ls=':', lw=1, label=f'goal: {GOAL} nats')
  ax_len.set(yscale='log', xlabel='probe length |r| (the period)', ylabel='loss on predictable '
             'tokens (nats)', title='Held-out periods ([BOS] + r + r)')
  ax_pos.set(yscale='log', xlabel='position', ylabel='loss on predictable tokens (nats)',
             title='Loss by position (task sequences)')
  common.legend_outside(ax_len)
  common.legend_outside(ax_pos)
  fig.subplots_adjust(wspace=0.6)
  common.save(fig, path)


def plot_seeds(groups, path):
  plt = common.plt()
  fig, (ax_loss, ax_step) = plt.subplots(1, 2, figsize=(13, 4.5))
  widths = sorted({w for _, _, w in groups})
  styles = dict(zip(widths, ('-', '--', ':', '-.')))
  top = max(r['num_steps'] for g in groups.values() for r in g)
  for (variant, layers, width), g in groups.items():
    color = common.color(variant)
    for i, r in enumerate(g):
      evals = r['_evals']
      ax_loss.plot([e['step'] for e in evals], [max(e['loss_repeat'], 1e-3) for e in evals],
                   color=color, ls=styles.get(width, '-'), lw=1, alpha=0.8,
                   label=f'{variant} ({layers}L), d={width}' if i == 0 else None)
    steps = [top if r['phase_step'] is None else r['phase_step'] for r in g]
    ax_step.scatter([width] * len(steps), steps, marker='x', color=color,
                    label=f'{variant} ({layers}L)' if width == widths[0] else None)
  common.chance_line(ax_loss, analysis.PHASE_LOSS, f'phase-change threshold {analysis.PHASE_LOSS}')
  ax_step.axhline(top, color='grey', ls=':', lw=1, label=f'end of training ({top}): never')
  ax_loss.set(yscale='log', xlabel='step', ylabel='eval repeat loss (nats)',
              title='Repeat loss, every seed')
  ax_step.set(xscale='log', xticks=widths, xlabel='d_model', ylabel='phase-change step',
              title='Phase-change step vs width')
  ax_step.set_xticklabels([str(w) for w in widths])
  ax_step.minorticks_off()
  common.legend_outside(ax_loss)
  common.legend_outside(ax_step)
  fig.subplots_adjust(wspace=0.8)
  common.save(fig, path)
