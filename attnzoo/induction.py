"""Induction-head emergence (Olsson et al. 2022) for every causal attention variant.

For each variant spec, an attention-only decoder with 2 layers and a 1-layer control are
trained on the `induction` task with the same budget. Every `train.eval_every` steps (and at
step 0) each run appends to its own directory `<workdir>/<run>/`:

  metrics.jsonl   train and eval rows as `train.train_and_evaluate` writes them (loss,
                  loss_first, loss_repeat, ...) plus `icl_score`
  scores.jsonl    every head's scores, `[layer][head]` lists: `induction` (prefix matching on
                  eval sequences), `stripe` and `stripe_near` (on `[BOS] + r + r` probes of a
                  length L not used in training), `previous_token`

and at the end `attention.npz` (every head's attention on one probe sequence), `summary.json`
(head ablations through `head_mask`, argmax-offset histograms, wall time) and `config.json`.
`report(workdir)` builds report.md, report.json, curves.png and attention_<variant>.png from
those files alone, so figures can be rebuilt without retraining.

Variant specs: `name[+smear][:option=value,...]`, e.g. `longformer:window=4`,
`performer:num_features=16`, `causal+smear`. Options are the variant's attention options or
`model.*` fields (e.g. `num_kv_heads=1`); `layers=1` or `layers=2` runs one depth only.
`+smear` turns on Olsson's smeared keys and runs the 1-layer model only (the question is
whether one layer then suffices). `all` expands to every causal-capable registered variant.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import traceback
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from flax import nnx

from attnzoo import attention, jsonl, metrics, train

METRICS, SCORES, SUMMARY = 'metrics.jsonl', 'scores.jsonl', 'summary.json'
ATTENTION = 'attention.npz'

# `--variants=all`: every causal-capable registered variant, minus presets identical to
# `causal` (same mechanism, same K/V heads), with these option sets for some mechanisms ...
ALL_OPTIONS = {
    'blockwise': ('block_k=16',),  # several key blocks at T=64 (the default is one block)
    'longformer': ('window=4', 'window=32'),  # windows below and above the period (8-24)
    'performer': ('num_features=16', 'num_features=128'),
}
DENSE_DUPLICATES = ('dense', 'cross')
# ... and these extra rows.
ALL_EXTRA = ('causal+smear',)

# Verdict thresholds (stated in the report).
FORMED_LOSS = 0.5  # final repeat loss below this (nats) ...
FORMED_SCORE = 0.3  # ... and a head with induction or near-stripe score above this
# A 1-layer model reaches about ln(period) ~ 2.5 nats on the repeat by predicting "one of the
# tokens seen so far"; below this it copies at least partly.
PARTIAL_LOSS = 1.5
# A layer-1 head counts as a previous-token head above this score (uniform causal attention
# scores mean_i 1/(i+1), about 0.06 at T=64).
PREV_HEAD = 0.1

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
    ('ablation_group', 'ablating every layer-1 previous-token head (score > 0.1) raises repeat '
                       'loss > 1 nat and leaves no layer-2 head with induction score > 0.3'),
)


# ---- variant specs ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Spec:
  label: str  # canonical text, e.g. 'longformer:window=4'
  name: str  # registry name
  options: tuple[tuple[str, Any], ...] = ()  # attention options
  model: tuple[tuple[str, Any], ...] = ()  # model.* overrides
  layers: tuple[int, ...] = (2, 1)  # depths to train

  @property
  def slug(self) -> str:
    """File-name-safe label."""
    return re.sub(r'[^A-Za-z0-9+.-]+', '_', self.label.replace('=', '-'))


def _convert(text: str, like: Any, field: str):
  if isinstance(like, bool):
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'{field}={text!r}: expected true or false')
    return text.lower() in ('true', '1')
  try:
    return type(like)(text) if isinstance(like, (int, float)) else text
  except ValueError:
    raise ValueError(f'{field}={text!r}: expected {type(like).__name__}') from None


def parse_spec(text: str, model_defaults: dict[str, Any] | None = None) -> Spec:
  """`name[+smear][:key=value,...]` -> Spec (options checked against the variant's)."""
  head, _, rest = text.strip().partition(':')
  name, *flags = head.split('+')
  attention.get(name)  # unknown names fail here, listing the known ones
  for f in flags:
    if f != 'smear':
      raise ValueError(f'variant spec {text!r}: unknown suffix +{f}; known: +smear')
  if not attention.capabilities(name).causal:
    raise ValueError(f'variant spec {text!r}: {name} is not causal-capable')
  defaults = attention.default_options(name)
  model_defaults = model_defaults or {}
  options, model, layers = {}, {}, ((1,) if 'smear' in flags else (2, 1))
  if 'smear' in flags:
    model['smear_keys'] = True
  for item in filter(None, rest.split(',')):
    key, eq, value = item.partition('=')
    if not eq:
      raise ValueError(f'variant spec {text!r}: {item!r} is not key=value')
    if key == 'layers':
      layers = (_convert(value, 0, f'{name}.layers'),)
      if layers[0] < 1:
        raise ValueError(f'{name}.layers={value!r}: must be positive')
    elif key in defaults:
      options[key] = _convert(value, defaults[key], f'{name}.{key}')
    elif key in model_defaults:
      model[key] = _convert(value, model_defaults[key], f'model.{key}')
    else:
      raise ValueError(f'variant spec {text!r}: unknown option {key!r}; options of {name}: '
                       f'{", ".join(sorted(defaults)) or "(none)"}, or a model field')
  attention.base.make_options(name, **options)  # validates values
  label = name + ('+smear' if 'smear' in flags else '')
  if rest:
    label += ':' + rest
  return Spec(label, name, tuple(options.items()), tuple(model.items()), layers)


def expand_all() -> list[str]:
  """The spec strings `all` stands for."""
  out = []
  for name in attention.variant_names():
    if not attention.capabilities(name).causal or name in DENSE_DUPLICATES:
      continue
    out += [f'{name}:{o}' for o in ALL_OPTIONS[name]] if name in ALL_OPTIONS else [name]
  out.sort(key=lambda s: s.split(':')[0] != 'causal')  # dense causal first
  return out + list(ALL_EXTRA)


def parse_variants(items: Sequence[str] | str,
                   model_defaults: dict[str, Any] | None = None) -> list[Spec]:
  """Comma-split flag values -> specs. An item `key=value` without `:` continues the previous
  spec's options (so `performer:num_features=16,redraw=false` survives comma splitting)."""
  if isinstance(items, str):
    items = items.split(',')
  texts: list[str] = []
  for item in (i.strip() for i in items):
    if not item:
      continue
    if item == 'all':
      texts += expand_all()
    elif '=' in item and ':' not in item and texts:
      texts[-1] += (',' if ':' in texts[-1] else ':') + item
    else:
      texts.append(item)
  specs = [parse_spec(t, model_defaults) for t in texts]
  seen = set()
  return [s for s in specs if not (s.label in seen or seen.add(s.label))]


def run_name(spec: Spec, layers: int) -> str:
  return f'{spec.slug}-L{layers}'


def run_config(base: ml_collections.ConfigDict, spec: Spec,
               layers: int) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(base.to_dict())
  c.model.num_layers = layers
  c.model.attention.name = spec.name
  if spec.name not in c.model.attention:
    c.model.attention[spec.name] = attention.default_options(spec.name)
  c.model.attention[spec.name].update(dict(spec.options))
  c.model.update(dict(spec.model))
  c.induction = settings(base)
  c.induction.variant = spec.label
  return c


def settings(config) -> ml_collections.ConfigDict:
  """The experiment's own knobs (config.induction, with defaults)."""
  s = ml_collections.ConfigDict({'stripe_len': 28, 'score_batch': 16})
  s.update(dict(config.get('induction', {})))
  return s


# ---- one run ----------------------------------------------------------------------------------

def _device(batch):
  return {k: jnp.asarray(v) for k, v in batch.items()
          if k in train.DEVICE_KEYS or k.startswith('mask_')}


def _scores(attns, task_tokens, probe_tokens, stripe_len):
  """attns: per layer ([B, H, T, T] on task tokens, [B, H, 2L+1, 2L+1] on probes) ->
  scores {name: [L, H]} and argmax-offset histograms [L, H, 2L+1] on the probes."""
  out = {'induction': [], 'stripe': [], 'stripe_near': [], 'previous_token': []}
  hists = []
  for a_task, a_probe in attns:
    out['induction'].append(metrics.induction_score(a_task, task_tokens))
    out['previous_token'].append(metrics.previous_token_score(a_task))
    out['stripe'].append(metrics.stripe_score(a_probe, stripe_len))
    hists.append(metrics.argmax_offsets(a_probe, first_query=stripe_len + 1))
    out['stripe_near'].append(metrics.near_offset_score(hists[-1], stripe_len - 1))
  return {k: jnp.stack(v) for k, v in out.items()}, jnp.stack(hists)


def _evaluate_fn(graphdef, stripe_len: int):
  """Jitted (state, eval batch, task tokens, probe tokens, head_mask [L, H]) -> (eval metrics
  as train.metrics_of computes them, scores, offset histograms, attention [L, H, T, T] of the
  first task and probe sequences), in eval mode and with the heads of head_mask zeroed. One
  function, so each run compiles two programs in all (this and the train step)."""

  @jax.jit
  def evaluate(state, batch, task_tokens, probe_tokens, head_mask):
    model, _ = nnx.merge(graphdef, state)
    model.eval()
    ablated = lambda tokens, **kw: model(tokens, head_mask=head_mask, **kw)
    losses = train.metrics_of(ablated, batch)
    _, a_task = model(task_tokens, return_attention=True, head_mask=head_mask)
    _, a_probe = model(probe_tokens, return_attention=True, head_mask=head_mask)
    scores, hists = _scores(list(zip(a_task, a_probe)), task_tokens, probe_tokens, stripe_len)
    first = lambda attns: jnp.stack([a[0] for a in attns])  # [L, H, T, T]
    return losses, scores, hists, first(a_task), first(a_probe)

  return evaluate


def _tolist(tree):
  return jax.tree.map(lambda x: np.asarray(x).round(5).tolist(), jax.device_get(tree))


def train_run(config: ml_collections.ConfigDict, run_dir: str, *, desc: str = 'train',
              log: Callable[[str], None] = print) -> dict:
  """Trains one model, logging losses and per-head scores at every eval; returns the summary
  (also written to run_dir/summary.json) with ablations and the argmax-offset histograms."""
  start = time.perf_counter()
  s, t = config.induction, config.train
  L, H = config.model.num_layers, config.model.num_heads
  os.makedirs(run_dir, exist_ok=True)
  for name in (METRICS, SCORES, SUMMARY, ATTENTION, 'error.txt'):
    if os.path.exists(os.path.join(run_dir, name)):
      os.remove(os.path.join(run_dir, name))
  with open(os.path.join(run_dir, 'config.json'), 'w') as f:
    f.write(config.to_json(indent=2))

  model, optimizer = train.build(config)
  graphdef, state = nnx.split((model, optimizer))
  del model, optimizer
  train_step, _ = train.make_steps(graphdef)
  evaluate_fn = _evaluate_fn(graphdef, s.stripe_len)
  # The eval batches as one batch (losses are means over all their tokens).
  eval_batches = [train.batch_for(config, i, 'eval') for i in range(t.get('eval_batches', 4))]
  eval_batch = _device({k: np.concatenate([b[k] for b in eval_batches]) for k in eval_batches[0]})
  # Scores use their own sequences: task-style eval data and held-out-length probes.
  task_tokens = jnp.asarray(train.batch_for(config, 10**6, 'eval')['inputs'][:s.score_batch])
  probe = metrics.repeated_tokens(np.random.default_rng([config.seed, 7]), s.score_batch,
                                  s.stripe_len, config.task.vocab_size)
  probe_tokens = jnp.asarray(probe)
  ones = np.ones((L, H), np.float32)

  def evaluate(state, head_mask=ones):
    """Eval losses and the probe outputs (scores, histograms, attention), as NumPy."""
    losses, *probes = jax.device_get(
        evaluate_fn(state, eval_batch, task_tokens, probe_tokens, head_mask))
    ev = {k: float(v) for k, v in losses.items()}
    ev['icl_score'] = metrics.icl_score(ev['loss_first'], ev['loss_repeat'])
    return ev, probes

  def log_eval(step, train_row):
    ev, (scores, *_) = evaluate(state)
    if train_row is not None:
      jsonl.append(os.path.join(run_dir, METRICS), {'step': step, 'split': 'train', **train_row})
    jsonl.append(os.path.join(run_dir, METRICS), {'step': step, 'split': 'eval', **ev})
    jsonl.append(os.path.join(run_dir, SCORES), {'step': step, **_tolist(scores)})
    return ev

  ev = log_eval(0, None)
  bar = tqdm.tqdm(total=t.num_steps, desc=desc, unit='step', dynamic_ncols=True,
                  mininterval=2.0)
  tick, tick_step, train_s = time.perf_counter(), 0, 0.0
  for step in range(1, t.num_steps + 1):
    state, train_metrics = train_step(state, _device(train.batch_for(config, step)))
    bar.update(1)
    if step == 1:  # keep compilation out of the throughput
      jax.block_until_ready(state)
      tick, tick_step = time.perf_counter(), 1
    if step % t.eval_every == 0 or step == t.num_steps:
      train_row = {k: float(v) for k, v in jax.device_get(train_metrics).items()}
      now = time.perf_counter()
      if step > tick_step:
        train_s += now - tick
        train_row['steps_per_s'] = (step - tick_step) / (now - tick)
      ev = log_eval(step, train_row)
      bar.set_postfix(repeat=f'{ev["loss_repeat"]:.3f}')
      tick, tick_step = time.perf_counter(), step
  bar.close()

  # Circuit evidence: zero single heads (head_mask) and measure again.
  final_ev, (final_sc, hists, task_maps, probe_maps) = evaluate(state)
  ind, prev = np.asarray(final_sc['induction']), np.asarray(final_sc['previous_token'])
  targets = {}  # kind -> heads [(layer, head)] zeroed together
  if L >= 2:
    targets['previous_token'] = [(0, int(prev[0].argmax()))]
  targets['induction'] = [(L - 1, int(ind[L - 1].argmax()))]
  # Baseline: a random other head of the same layer as the first target.
  layer = next(iter(targets.values()))[0][0]
  chosen = [h for heads in targets.values() for h in heads]
  others = [h for h in range(H) if (layer, h) not in chosen]
  if others:
    rng = np.random.default_rng(config.seed)
    targets['random'] = [(layer, int(rng.choice(others)))]
  if L >= 2:  # the previous-token function may be spread over several heads
    targets['previous_token_heads'] = [(0, h) for h in range(H) if prev[0, h] > PREV_HEAD]
  ablations = []
  for kind, heads in targets.items():
    if not heads:
      continue
    mask = ones.copy()
    mask[tuple(np.array(heads).T)] = 0.0
    ev_a, (sc_a, *_) = evaluate(state, mask)
    ablations.append({'ablated': kind, 'heads': heads, **ev_a,
                      **{f'max_{k}': float(np.max(v[-1])) for k, v in sc_a.items()}})

  np.savez_compressed(os.path.join(run_dir, ATTENTION), probe_tokens=probe[0],
                      probe_attention=np.asarray(probe_maps, np.float32),
                      task_tokens=np.asarray(task_tokens[0]),
                      task_attention=np.asarray(task_maps, np.float32))
  summary = {
      'variant': s.variant, 'layers': L, 'num_steps': t.num_steps,
      'learning_rate': t.learning_rate, 'batch_size': t.batch_size,
      'stripe_len': s.stripe_len, 'final': final_ev,
      'final_scores': _tolist(final_sc), 'ablations': ablations,
      'argmax_offsets': np.asarray(hists).round(4).tolist(),
      'train_s': train_s, 'steps_per_s': (t.num_steps - 1) / max(train_s, 1e-9),
      'wall_s': time.perf_counter() - start,
      # Load on the machine at the end of the run: above the core count, the CPU was shared
      # and wall times are inflated.
      'load_avg_1min': os.getloadavg()[0] if hasattr(os, 'getloadavg') else None,
      'cpu_count': os.cpu_count(),
  }
  with open(os.path.join(run_dir, SUMMARY), 'w') as f:
    json.dump(summary, f, indent=1)
  log(f'{desc}: repeat loss {final_ev["loss_repeat"]:.3f}, max induction '
      f'{float(ind.max()):.2f}, {summary["wall_s"]:.0f}s')
  return summary


def _same_config(run_dir: str, config) -> bool:
  path = os.path.join(run_dir, 'config.json')
  if not (os.path.exists(path) and os.path.exists(os.path.join(run_dir, SUMMARY))):
    return False
  with open(path) as f:
    return json.load(f) == json.loads(config.to_json())


def run(config: ml_collections.ConfigDict, workdir: str, variants: Sequence[str] | str = 'causal',
        *, log: Callable[[str], None] = print) -> str:
  """Trains every run of `variants` (finished runs with an identical config are reused), then
  writes the report; returns its Markdown. Runs that fail are reported and raise at the end."""
  specs = parse_variants(variants, dict(config.model))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'variants.json'), 'w') as f:
    json.dump([s.label for s in specs], f)
  jobs = [(spec, n) for spec in specs for n in spec.layers]
  failed = []
  for k, (spec, layers) in enumerate(jobs, 1):
    name = run_name(spec, layers)
    run_dir = os.path.join(workdir, name)
    cfg = run_config(config, spec, layers)
    if _same_config(run_dir, cfg):
      log(f'[{k}/{len(jobs)}] {name}: already done, reusing {run_dir}')
      continue
    log(f'[{k}/{len(jobs)}] {name}: {cfg.train.num_steps} steps')
    try:
      train_run(cfg, run_dir, desc=f'[{k}/{len(jobs)}] {name}', log=log)
    except Exception as e:  # keep going: one broken variant should not cost the others
      failed.append(name)
      with open(os.path.join(run_dir, 'error.txt'), 'w') as f:
        f.write(traceback.format_exc())
      log(f'{name}: FAILED ({type(e).__name__}: {e})')
  text = report(workdir)
  if failed:
    raise RuntimeError(f'runs failed: {", ".join(failed)} (see <run>/error.txt)')
  return text


# ---- analysis (from the saved files only) -----------------------------------------------------

def load_runs(workdir: str) -> list[dict]:
  """Every finished run under workdir: summary, config, eval rows and score rows."""
  runs = []
  for name in sorted(os.listdir(workdir)):
    d = os.path.join(workdir, name)
    if not os.path.isfile(os.path.join(d, SUMMARY)):
      if os.path.isfile(os.path.join(d, 'error.txt')):
        runs.append({'name': name, 'error': True})
      continue
    with open(os.path.join(d, SUMMARY)) as f:
      summary = json.load(f)
    with open(os.path.join(d, 'config.json')) as f:
      config = json.load(f)
    evals = [r for r in jsonl.read(os.path.join(d, METRICS)) if r['split'] == 'eval']
    runs.append({'name': name, 'dir': d, 'summary': summary, 'config': config, 'evals': evals,
                 'scores': jsonl.read(os.path.join(d, SCORES))})
  return runs


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
  """One table row (plain numbers) from a loaded run."""
  s, L = run['summary'], run['summary']['layers']
  final = s['final_scores']
  last = lambda key: float(np.max(final[key][L - 1]))
  best_curve = [float(np.max(r['induction'])) for r in run['scores']]
  row = {
      'run': run['name'], 'variant': s['variant'], 'layers': L,
      'repeat_loss': s['final']['loss_repeat'], 'first_loss': s['final']['loss_first'],
      'icl_score': s['final']['loss_first'] - s['final']['loss_repeat'],
      'max_induction': float(np.max(final['induction'])), 'max_stripe': last('stripe'),
      'max_stripe_near': last('stripe_near'),
      'max_previous_token': float(np.max(final['previous_token'][0])),
      'wall_s': s['wall_s'], 'steps_per_s': s['steps_per_s'], 'num_steps': s['num_steps'],
      'phase': phase_change([r['step'] for r in run['evals']],
                            [r['loss_repeat'] for r in run['evals']], best_curve,
                            s['num_steps']),
      'ablations': s['ablations'],
  }
  # Modal argmax distance of the best near-stripe head of the last layer (induction: L-1).
  head = int(np.argmax(final['stripe_near'][L - 1]))
  row['modal_offset'] = int(np.argmax(s['argmax_offsets'][L - 1][head]))
  row['stripe_len'] = s['stripe_len']
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


def _fmt(x, spec='.3f'):
  return '—' if x is None else format(x, spec)


def _window(row):
  p = row['phase']
  if 'window' not in p or p['total_drop'] < 1.0:
    return '—'
  (a, b), (sa, sb) = p['window'], p['window_score']
  return f'{a}–{b} (ind {sa:.2f}→{sb:.2f})'


def report(workdir: str) -> str:
  """Writes report.md, report.json, curves.png and attention_<variant>.png from the saved
  files (no model needed) and returns the Markdown."""
  loaded = load_runs(workdir)
  runs = [r for r in loaded if 'error' not in r]
  errors = [r['name'] for r in loaded if 'error' in r]
  rows = [analyze(r) for r in runs]
  order_path = os.path.join(workdir, 'variants.json')
  order = json.load(open(order_path)) if os.path.exists(order_path) else []
  rank = lambda row: (order.index(row['variant']) if row['variant'] in order else len(order),
                      row['variant'], -row['layers'])
  rows.sort(key=rank)
  by_variant: dict[str, dict[int, dict]] = {}
  for row in rows:
    by_variant.setdefault(row['variant'], {})[row['layers']] = row
  variant_checks = {v: checks(d.get(2), d.get(1)) for v, d in by_variant.items()
                    if 2 in d and 1 in d}

  cfg = runs[0]['config'] if runs else {}
  t = cfg.get('train', {})
  lines = ['# Induction heads: emergence across attention variants', '',
           'Attention-only decoders (Elhage et al. 2021; Olsson et al. 2022) on the `induction` '
           'task: `[BOS]` + a segment of distinct random tokens (period '
           f'{cfg.get("task", {}).get("min_period")}–{cfg.get("task", {}).get("max_period")}, '
           'varying) repeated to '
           f'T={cfg.get("task", {}).get("seq_len")}, V={cfg.get("task", {}).get("vocab_size")}; '
           f'd={cfg.get("model", {}).get("d_model")}, {cfg.get("model", {}).get("num_heads")} '
           f'heads, {t.get("num_steps")} steps of batch {t.get("batch_size")}, Adam (AdamW, '
           f'weight decay {t.get("weight_decay")}) lr {t.get("learning_rate")} with '
           f'{t.get("warmup_steps")} warmup steps and cosine decay to '
           f'{t.get("final_lr_fraction", 0.1)}×, gradient clip {t.get("grad_clip")}; eval every '
           f'{t.get("eval_every")} steps on {t.get("eval_batches")} batches. Each variant trains a '
           '2-layer model and a 1-layer control with the same budget.', '',
           '## Results', '',
           '| variant | layers | repeat loss | ICL score | max induction | max stripe '
           '(near) | max prev-token | phase change (steps, induction score) | jump | '
           'wall s | verdict |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for row in rows:
    j = row['phase']['jump']
    jump = (f'{j["drop"]:.2f} nats in {j["steps"][0]}–{j["steps"][1]}'
            if row['phase']['total_drop'] >= 1.0 else '—')
    lines.append(
        f'| {row["variant"]} | {row["layers"]} | {row["repeat_loss"]:.3f} | '
        f'{row["icl_score"]:.2f} | {row["max_induction"]:.2f} | {row["max_stripe"]:.2f} '
        f'({row["max_stripe_near"]:.2f}) | {row["max_previous_token"]:.2f} | {_window(row)} | '
        f'{jump} | {row["wall_s"]:.0f} | {row["verdict"]} |')
  stripe_len = rows[0]['stripe_len'] if rows else None
  lines += ['',
            'Scores are per head, the table gives the best head (stripe: of the last layer, '
            'previous-token: of layer 1): *induction* = attention mass on prefix-matching keys '
            '(the token after an earlier copy of the current token) on eval sequences; '
            f'*stripe* = mean attention on the diagonal at offset −(L−1) of `[BOS] + r + r` '
            f'probes with L={stripe_len}, a length never seen in training, second-copy queries '
            'only; *near* = fraction of those queries whose most-attended key is within one '
            'position of the stripe (catches heads that implement induction one position off); '
            '*prev-token* = mean A[i, i−1]. ICL score = loss on the first period − loss on the '
            'repeated part. Phase change: from the first eval where the repeat loss has made 10% '
            'of its total drop to the first where it has made 90%; jump: the largest drop '
            'between evals at most 20% of training apart.', '',
            f'Verdict: *induction heads* if the final repeat loss < {FORMED_LOSS} nats and a head '
            f'has induction or near-stripe score > {FORMED_SCORE}; *copies without a clear '
            'induction head* if the loss is low but no head scores; *partial* if the repeat loss '
            f'is below {PARTIAL_LOSS} nats; else *none* (a 1-layer model gets about ln(period) '
            '≈ 2.5 nats by predicting one of the tokens already seen, hence its positive ICL '
            'score without induction).', '']
  if variant_checks:
    lines += ['## Checks (2-layer model and 1-layer control of each variant)', '',
              '| check | ' + ' | '.join(variant_checks) + ' |',
              '|---|' + '---|' * len(variant_checks)]
    mark = {True: 'pass', False: 'FAIL', None: '—'}
    for key, text in CHECKS:
      lines.append(f'| {text} | ' + ' | '.join(mark[c[key]] for c in variant_checks.values())
                   + ' |')
    lines.append('')
  lines += ['## Head ablations (zeroing one head via `head_mask`)', '',
            '| variant | layers | ablated | heads (layer.head) | repeat loss (before → after) | '
            'max last-layer induction | max last-layer stripe |', '|---|---|---|---|---|---|---|']
  for row in rows:
    for a in row['ablations']:
      heads = ', '.join(f'{layer + 1}.{head}' for layer, head in a['heads'])
      lines.append(
          f'| {row["variant"]} | {row["layers"]} | {a["ablated"]} | {heads} '
          f'| {row["repeat_loss"]:.3f} → {a["loss_repeat"]:.3f} | {a["max_induction"]:.2f} | '
          f'{a["max_stripe"]:.2f} |')
  lines += ['', '*previous_token*: the best layer-1 previous-token head; *induction*: the best '
            'last-layer induction head; *random*: another head of the first ablated head\'s '
            'layer, drawn with the run seed (baseline); *previous_token_heads*: every layer-1 '
            f'head with previous-token score > {PREV_HEAD} (uniform attention scores about '
            '0.06). Heads are zeroed together; induction and stripe scores after ablation are '
            'the best over the last layer\'s heads.', '']
  figures = plot_curves(rows, runs, os.path.join(workdir, 'curves.png'))
  maps = plot_attention(rows, runs, workdir)
  lines += ['## Figures', '']
  if figures:
    lines.append('![curves](curves.png) — repeat loss and best induction score against step '
                 '(1-layer controls dashed).')
  lines += [f'![{v}]({p}) — {v}: top induction and previous-token heads on a probe.'
            for v, p in maps]
  if errors:
    lines += ['', '## Failed runs', ''] + [f'- {e}: see {e}/error.txt' for e in errors]
  wall = sum(r['wall_s'] for r in rows)
  loads = [r['summary'].get('load_avg_1min') for r in runs]
  loads = [x for x in loads if x is not None]
  cores = runs[0]['summary'].get('cpu_count') if runs else None
  load = (f'; 1-minute load average at the end of the runs {min(loads):.1f}–{max(loads):.1f} '
          f'on {cores} cores (above the core count the machine was shared and wall times are '
          'inflated)' if loads else '')
  lines += ['', f'Total wall time of the runs: {wall:.0f} s ({len(rows)} runs, each including '
            f'compilation, evals and ablations{load}). Rebuild this report and the figures '
            'without retraining: `python experiments/induction_heads.py --workdir=... '
            '--report_only`.']
  text = '\n'.join(lines) + '\n'
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(text)
  with open(os.path.join(workdir, 'report.json'), 'w') as f:
    json.dump({'rows': rows, 'checks': variant_checks, 'failed': errors,
               'config': cfg}, f, indent=1)
  return text


# ---- figures ----------------------------------------------------------------------------------

def _plt():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def plot_curves(rows, runs, path) -> bool:
  if not rows:
    return False
  plt = _plt()
  by_name = {r['name']: r for r in runs}
  variants = list(dict.fromkeys(row['variant'] for row in rows))
  cmap = plt.get_cmap('tab20')  # dark shades first, then the light ones
  color_of = lambda i: cmap((2 * i) % 20 + (2 * i) // 20 % 2)
  fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(14, 4.5))
  for row in rows:
    run = by_name[row['run']]
    color = color_of(variants.index(row['variant']))
    style = '-' if row['layers'] >= 2 else '--'
    label = f'{row["variant"]} ({row["layers"]}L)'
    ax_loss.plot([r['step'] for r in run['evals']],
                 [max(r['loss_repeat'], 1e-3) for r in run['evals']], style, color=color,
                 label=label)
    ax_score.plot([r['step'] for r in run['scores']],
                  [float(np.max(r['induction'])) for r in run['scores']], style, color=color,
                  label=label)
  ax_loss.set(yscale='log', xlabel='step', ylabel='eval repeat loss (nats)',
              title='Repeat loss')
  ax_score.set(xlabel='step', ylabel='best head induction score', ylim=(0, 1.02),
               title='Induction (prefix-matching) score')
  ax_score.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.02, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot_attention(rows, runs, workdir) -> list[tuple[str, str]]:
  """attention_<variant>.png: top induction and previous-token heads of the variant's deepest
  run on its saved probe sequence."""
  plt = _plt()
  by_name = {r['name']: r for r in runs}
  deepest: dict[str, dict] = {}
  for row in rows:
    if row['variant'] not in deepest or row['layers'] > deepest[row['variant']]['layers']:
      deepest[row['variant']] = row
  out = []
  for variant, row in deepest.items():
    run = by_name[row['run']]
    data = np.load(os.path.join(run['dir'], ATTENTION))
    A, L = data['probe_attention'], row['layers']
    final = run['summary']['final_scores']
    ind = np.asarray(final['stripe'][L - 1]) + np.asarray(final['induction'][L - 1])
    h_ind, h_prev = int(ind.argmax()), int(np.argmax(final['previous_token'][0]))
    panels = [(f'top induction head {L}.{h_ind} (stripe {final["stripe"][L - 1][h_ind]:.2f})',
               A[L - 1, h_ind]),
              (f'top previous-token head 1.{h_prev} '
               f'(score {final["previous_token"][0][h_prev]:.2f})', A[0, h_prev])]
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, (title, a) in zip(axes, panels):
      ax.imshow(a, cmap='viridis', vmin=0, vmax=max(float(a.max()), 1e-6))
      ax.set(title=title, xlabel='key position', ylabel='query position')
    fig.suptitle(f'{variant}, {L} layer{"s" * (L > 1)}: attention on [BOS] + r + r, '
                 f'|r| = {row["stripe_len"]}')
    fig.tight_layout()
    name = f'attention_{Spec(variant, variant).slug}.png'
    fig.savefig(os.path.join(workdir, name), dpi=90)
    plt.close(fig)
    out.append((variant, name))
  return out
