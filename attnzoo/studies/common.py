"""What every study shares: variant specs, running a plan of configs through the one training
loop, loading the runs back, Markdown tables and plots.

A study is a plan (named configs), hooks for `train.train_and_evaluate`, an analysis of the
saved files and a report; each run lives in `<study workdir>/<run name>/` as a normal training
run (config.json, metrics.jsonl, summary.json, checkpoints/), loadable with `attnzoo.load_run`.

Variant specs, the one way to name a variant with options everywhere (flags, configs, reports):
  `name[:key=value,...]`, keys being the variant's options or `model.<field>` overrides, e.g.
  `longformer:window=4`, `performer:num_features=16`, `causal:model.smear_keys=true`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import traceback
from typing import Any, Callable, Sequence

import ml_collections

from attnzoo import attention, jsonl, train


# ---- variant specs ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Spec:
  label: str  # canonical text, e.g. 'longformer:window=4'
  name: str  # registry name
  options: tuple[tuple[str, Any], ...] = ()  # attention options
  model: tuple[tuple[str, Any], ...] = ()  # model.* overrides

  @property
  def slug(self) -> str:
    """File-name-safe label."""
    return re.sub(r'[^A-Za-z0-9+.-]+', '_', self.label.replace('=', '-').replace(':', '_'))


def _convert(text: str, like: Any, field: str):
  if isinstance(like, bool):
    attention.base.check(text.lower() in ('true', 'false', '1', '0'), field, text,
                         'expected true or false')
    return text.lower() in ('true', '1')
  if isinstance(like, (int, float)):
    try:
      return type(like)(text)
    except ValueError:
      raise ValueError(f'{field}={text!r}: expected {type(like).__name__}') from None
  return text


def parse_spec(text: str, model_defaults: dict[str, Any] | None = None) -> Spec:
  """`name[:key=value,...]` -> Spec; names, option keys and values are checked."""
  name, _, rest = text.strip().partition(':')
  attention.get(name)  # unknown names fail here, listing the known ones
  defaults = attention.default_options(name)
  model_defaults = model_defaults or {}
  options, model = {}, {}
  for item in filter(None, (i.strip() for i in rest.split(','))):
    key, eq, value = item.partition('=')
    attention.base.check(bool(eq), f'variant spec {text!r}', item, 'expected key=value')
    if key.startswith('model.'):
      field = key[len('model.'):]
      attention.base.check(field in model_defaults, f'variant spec {text!r}', key,
                           f'unknown model field; known: {", ".join(sorted(model_defaults))}')
      model[field] = _convert(value, model_defaults[field], key)
    else:
      attention.base.check(key in defaults, f'variant spec {text!r}', key,
                           f'unknown option of {name}; known: '
                           f'{", ".join(sorted(defaults)) or "(none)"}, or model.<field>')
      options[key] = _convert(value, defaults[key], f'{name}.{key}')
  attention.base.make_options(name, **options)  # validates values
  label = name + (':' + ','.join(f'{k}={v}' for k, v in {**options, **{
      f'model.{k}': v for k, v in model.items()}}.items()) if options or model else '')
  return Spec(label, name, tuple(options.items()), tuple(model.items()))


def parse_specs(items: Sequence[str] | str, model_defaults=None) -> list[Spec]:
  """A list of specs (or one comma-joined string, as absl list flags give them): an item
  `key=value` without `:` continues the previous spec's options. Duplicates are dropped."""
  if isinstance(items, str):
    items = items.split(',')
  texts: list[str] = []
  for item in (i.strip() for i in items):
    if not item:
      continue
    if '=' in item and ':' not in item and texts:
      texts[-1] += (',' if ':' in texts[-1] else ':') + item
    else:
      texts.append(item)
  specs, seen = [], set()
  for s in (parse_spec(t, model_defaults) for t in texts):
    if s.label not in seen:
      seen.add(s.label)
      specs.append(s)
  return specs


def with_spec(config: ml_collections.ConfigDict, spec: Spec) -> ml_collections.ConfigDict:
  """A copy of `config` running `spec` (its options fitted to the task's length)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.model.attention.name = spec.name
  if spec.name not in c.model.attention:
    c.model.attention[spec.name] = attention.default_options(spec.name)
  c.model.attention[spec.name].update(fit(spec.name, dict(spec.options), c.task.seq_len))
  c.model.update(dict(spec.model))
  return c


# ---- running a plan through the training loop -------------------------------------------------

def run_plan(plan: dict[str, ml_collections.ConfigDict], workdir: str,
             hooks: Callable[[ml_collections.ConfigDict], Sequence[Any]] = lambda c: (), *,
             log: Callable[[str], None] = print) -> list[str]:
  """Trains every config of `plan` into workdir/<name>/ (finished runs are reused, interrupted
  ones resume); a failing run is recorded in <name>/error.txt and the others go on. Returns the
  names of the failed runs."""
  os.makedirs(workdir, exist_ok=True)
  failed = []
  t0 = time.perf_counter()
  for k, (name, config) in enumerate(plan.items(), 1):
    run_dir = os.path.join(workdir, name)
    log(f'[{k}/{len(plan)} {time.perf_counter() - t0:5.0f} s] {name}: '
        f'{config.train.num_steps} steps')
    error = os.path.join(run_dir, 'error.txt')
    try:
      final = train.train_and_evaluate(config, run_dir, hooks(config), log=log)
      if os.path.exists(error):
        os.remove(error)
      log(f'  {name}: eval loss {final["loss"]:.3f}, accuracy {final["accuracy"]:.3f}')
    except (train.RunError, KeyboardInterrupt):
      raise  # the user's to fix (or stop): not a failed variant
    except Exception as e:  # noqa: BLE001  (one broken variant must not cost the others)
      failed.append(name)
      os.makedirs(run_dir, exist_ok=True)
      with open(error, 'w') as f:
        f.write(traceback.format_exc())
      log(f'  {name}: FAILED ({type(e).__name__}: {str(e)[:300]})')
  return failed


def load_runs(workdir: str) -> list[dict[str, Any]]:
  """Every run under workdir: name, dir, config, summary (None if unfinished), metrics rows
  grouped by split, and error (the text of error.txt, if the run failed)."""
  runs = []
  for name in sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []:
    d = os.path.join(workdir, name)
    if not os.path.isfile(os.path.join(d, train.CONFIG)) and not os.path.isfile(
        os.path.join(d, 'error.txt')):
      continue
    rows: dict[str, list] = {}
    for r in jsonl.read(os.path.join(d, train.METRICS)):
      rows.setdefault(r['split'], []).append(r)
    error = None
    if os.path.isfile(os.path.join(d, 'error.txt')):
      with open(os.path.join(d, 'error.txt')) as f:
        error = f.read().strip().splitlines()[-1]
    config = None
    if os.path.isfile(os.path.join(d, train.CONFIG)):
      with open(os.path.join(d, train.CONFIG)) as f:
        config = json.load(f)
    runs.append({'name': name, 'dir': d, 'config': config, 'summary': train.load_summary(d),
                 'rows': rows, 'error': error})
  return runs


# ---- tables -----------------------------------------------------------------------------------

def fmt(x, spec: str = '.3f') -> str:
  return '—' if x is None else format(x, spec)


def ratio(value, ref) -> str:
  """' (1.23x)' of value / ref, or '' when either is missing."""
  return '' if value is None or not ref else f' ({value / ref:.2f}x)'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  """Markdown table lines."""
  return (['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
          + ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows])


def write_explorers(workdir: str, names: Sequence[str], log: Callable[[str], None] = print):
  """An explorer page (attnzoo.explorer) for each finished run `workdir/<name>` without one; a run the
  explorer cannot show is skipped with a line saying why."""
  from attnzoo import explorer  # noqa: PLC0415  (the explorer imports the studies' helpers)
  for name in names:
    run_dir = os.path.join(workdir, name)
    if (train.load_summary(run_dir) is None
        or os.path.exists(os.path.join(run_dir, 'explorer.html'))):
      continue  # unfinished, or its page is written already
    try:
      explorer.write(run_dir)
    except ValueError as e:
      log(f'  {name}: no explorer page ({e})')


def write_report(workdir: str, lines: Sequence[str], name: str = 'report.md') -> str:
  """Writes the report, with links to the explorer pages of its runs (if any)."""
  pages = sorted(n for n in (os.listdir(workdir) if os.path.isdir(workdir) else [])
                 if os.path.isfile(os.path.join(workdir, n, 'explorer.html')))
  if pages:
    lines = list(lines) + ['', '## Explorer pages', '',
                           'Click a token to see where every head looks '
                           '(`python experiments/explore.py --workdir=<run>`):', '']
    lines += [f'- [{n}]({n}/explorer.html)' for n in pages]
  text = '\n'.join(lines).rstrip() + '\n'
  with open(os.path.join(workdir, name), 'w') as f:
    f.write(text)
  return text


# ---- plots ------------------------------------------------------------------------------------

def plt():
  import matplotlib  # noqa: PLC0415  (the Agg backend before pyplot)
  matplotlib.use('Agg')
  import matplotlib.pyplot as pyplot  # noqa: PLC0415
  return pyplot


def color(label: str):
  """One colour per registered variant (its name before ':'), the same in every plot."""
  names = attention.variant_names()
  name = label.split(':')[0]
  cmap = plt().get_cmap('tab20')
  i = names.index(name) if name in names else len(names)
  return cmap((2 * i) % 20 + (2 * i) // 20 % 2)  # dark shades first, then the light ones


def heatmap(fig, ax, A, title: str, *, xlabel='key position', ylabel='query position'):
  """A [rows, cols] matrix with a colour bar."""
  im = ax.imshow(A, cmap='viridis', vmin=0, vmax=max(float(A.max()), 1e-6))
  ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def chance_line(ax, y: float, label: str = 'chance'):
  ax.axhline(y, color='grey', ls=':', lw=1, label=label, zorder=1)


def legend_outside(ax, **kw):
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.02, 1.0), borderaxespad=0, **kw)


def save(fig, path: str, dpi: int = 110):
  fig.savefig(path, dpi=dpi, bbox_inches='tight')
  plt().close(fig)


def fit(name: str, options: dict, seq_len: int) -> dict:
  """The variant's options at sequence length `seq_len`, as the variant declares."""
  if hasattr(attention, 'fit_options'):
    return attention.fit_options(name, options, seq_len)
  return {**options, 'max_len': seq_len} if 'max_len' in attention.default_options(name) else options
