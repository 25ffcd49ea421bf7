"""What to train: the study config -> named training configs, and the rows dropped with a reason.

A run is (task, width, form, variant spec, seed). Form: `causal` (next-token) for variants
that can be causal, else `masked` (the bidirectional masked-token form, `model.causal=False`),
whose reference is the masked reference (dense) trained on the same task, width and budget.
Rows that would repeat another computation (same module, options and K/V heads as an earlier
spec, e.g. `cross` = `dense`) are dropped with the reason, so is a variant at a task it cannot
run. References are listed first: `study.run` trains them before the rest and skips a group
whose reference did not converge.
"""
from __future__ import annotations

import dataclasses

import ml_collections
from flax import nnx

from attnzoo import attention, cost, train
from attnzoo import config as config_lib
from attnzoo.studies import common

CAUSAL, MASKED = 'causal', 'masked'


@dataclasses.dataclass(frozen=True)
class Run:
  name: str  # directory under the study workdir
  task: str  # key of study.tasks
  width: int
  form: str
  spec: common.Spec
  seed: int
  reference: bool  # the reference of its (task, width, form) group


def check_study(config):
  """Raises ValueError naming the first bad study.* field."""
  s = config.study
  check = attention.base.check
  check(len(s.tasks) > 0, 'study.tasks', dict(s.tasks), 'needs at least one task')
  for key, t in s.tasks.items():
    check('task' in t and 'name' in t.task, f'study.tasks.{key}.task', t.get('task'),
          'needs a task sub-dict with a name')
    check(len(t.widths) > 0, f'study.tasks.{key}.widths', t.widths, 'needs at least one')
    for d in t.widths:
      check(isinstance(d, int) and d > 0 and d % config.model.num_heads == 0,
            f'study.tasks.{key}.widths', t.widths,
            f'each must be a positive multiple of model.num_heads={config.model.num_heads}')
  for field in ('seeds', 'reference_seeds'):
    check(len(s[field]) > 0 and all(isinstance(x, int) and x >= 0 for x in s[field]),
          f'study.{field}', s[field], 'must be non-empty ints >= 0')
  for field in ('threshold', 'target'):
    check(0 <= s[field] <= 1, f'study.{field}', s[field], 'must be within [0, 1]')
  check(s.cheap_task in s.tasks, 'study.cheap_task', s.cheap_task,
        f'not among study.tasks: {", ".join(s.tasks)}')
  for field in ('reference', 'masked_reference'):
    attention.get(s[field])
  check(attention.capabilities(s.reference).causal, 'study.reference', s.reference,
        'must be causal-capable')


def specs(config, field: str) -> list[common.Spec]:
  return common.parse_specs(list(config.study[field]), config.model.to_dict())


def run_config(config, task: str, width: int, form: str, spec: common.Spec,
               seed: int) -> ml_collections.ConfigDict:
  """The training config of one run: the study's budget with this task, width, form, variant."""
  c = ml_collections.ConfigDict(config.to_dict())
  t = config.study.tasks[task]
  c.task = ml_collections.ConfigDict(t.task.to_dict())
  c.train.update(t.get('train', {}))
  c.seed = seed
  c.model.d_model = width
  c.model.max_len = max(c.model.max_len, c.task.seq_len)
  c.model.causal = form == CAUSAL
  return common.with_spec(c, spec)


def _signature(config, spec: common.Spec, form: str, task: str):
  """What a spec computes in a form: equal signatures train the same model."""
  entry = attention.get(spec.name)
  options = common.fit(spec.name, {**attention.default_options(spec.name), **dict(spec.options)},
                       config.study.tasks[task].task.seq_len)
  m = config.model
  return (entry.module, tuple(sorted(options.items())), tuple(sorted(dict(spec.model).items())),
          entry.kv_heads(m.num_heads, m.num_kv_heads), form)


def form_of(spec: common.Spec) -> str:
  return CAUSAL if attention.capabilities(spec.name).causal else MASKED


def make_plan(config) -> tuple[list[Run], dict[str, str]]:
  """(runs, dropped): every run the study asks for, references first, and {row: reason} for
  each planned row that is not trained."""
  check_study(config)
  s = config.study
  ref = common.parse_spec(s.reference, config.model.to_dict())
  masked_ref = common.parse_spec(s.masked_reference, config.model.to_dict())
  main, cheap = specs(config, 'variants'), specs(config, 'cheap_variants')
  runs, dropped = [], {}
  for task, t in s.tasks.items():
    for i, width in enumerate(t.widths):
      candidates = main + (cheap if task == s.cheap_task and i == 0 else [])
      groups: dict[str, list] = {CAUSAL: [ref], MASKED: []}
      for spec in candidates:
        groups[form_of(spec)].append(spec)
      if groups[MASKED]:
        groups[MASKED].insert(0, masked_ref)
      for form, members in groups.items():
        seen = {}
        for k, spec in enumerate(members):
          row = f'{task} d={width} {spec.label} ({form})'
          sig = _signature(config, spec, form, task)
          if sig in seen:
            if spec.label != seen[sig]:
              dropped[row] = f'same computation as {seen[sig]} ({form} form)'
            continue
          try:
            config_lib.validate(run_config(config, task, width, form, spec, 0))
          except ValueError as e:
            dropped[row] = f'cannot run: {e}'
            continue
          seen[sig] = spec.label
          reference = k == 0
          for seed in (s.reference_seeds if reference else s.seeds):
            runs.append(Run(f'{task}_d{width}_{form}_{spec.slug}_s{seed}', task, width, form,
                            spec, seed, reference))
  runs.sort(key=lambda r: not r.reference)
  return runs, dropped


def configs(config, runs: list[Run]) -> dict[str, ml_collections.ConfigDict]:
  return {r.name: run_config(config, r.task, r.width, r.form, r.spec, r.seed) for r in runs}


def time_steps(config: ml_collections.ConfigDict, steps: int = 3) -> dict:
  """Compile seconds and median seconds of `steps` train steps of one config (not trained)."""
  model, optimizer = train.build(config)
  graphdef, state = nnx.split((model, optimizer))
  train_step, _ = train.make_steps(graphdef)
  batch = train.device_batch(train.batch_for(config, 1))
  stats = cost.compiled_stats(train_step, state, batch)
  step_s = cost.median_time(stats.pop('compiled'), state, batch, repeats=steps)
  return {'compile_s': stats['compile_s'], 'step_s': step_s}


def estimate(config, runs: list[Run], *, log=print) -> dict[str, float]:
  """Estimated seconds of each run from a few timed steps (seeds share one measurement): two
  compiles (train and eval step), the steps, and the evals (an eval batch ~ 1/3 of a step)."""
  out, measured = {}, {}
  for r in runs:
    key = (r.task, r.width, r.form, r.spec.label)
    c = run_config(config, r.task, r.width, r.form, r.spec, r.seed)
    if key not in measured:
      measured[key] = time_steps(c)
      log(f'  {r.name}: {measured[key]["step_s"] * 1e3:.1f} ms/step, compile '
          f'{measured[key]["compile_s"]:.1f} s')
    m = measured[key]
    evals = c.train.num_steps // c.train.eval_every + 1
    out[r.name] = (2 * m['compile_s'] + c.train.num_steps * m['step_s']
                   + evals * c.train.eval_batches * m['step_s'] / 3)
  return out


def estimate_from_runs(config, runs: list[Run], measured: list[dict]) -> float | None:
  """Seconds of `runs` on the machine that trained `measured` (common.load_runs rows of an
  earlier study, e.g. the standard preset's): each run takes the measured step time of the same
  variant at the nearest length and width, scaled by batch x length x width, and by length
  again for the N^2 share (an upper bound: all of an N^2 variant's time counted as N^2)."""
  done = [m for m in measured if m['summary'] and m['summary'].get('step_s')]
  if not done:
    return None
  total = 0.0
  for r in runs:
    c = run_config(config, r.task, r.width, r.form, r.spec, r.seed)
    same = [m for m in done if m['config']['model']['attention']['name'] == r.spec.name]
    if not same:
      same = done  # nothing of this variant measured: any run
    T, B, d = c.task.seq_len, c.train.batch_size, c.model.d_model
    def distance(m):
      mc = m['config']
      return (abs(mc['task']['seq_len'] - T) / T, abs(mc['model']['d_model'] - d) / d)
    m = min(same, key=distance)
    mc = m['config']
    mT, mB, md = mc['task']['seq_len'], mc['train']['batch_size'], mc['model']['d_model']
    scale = B * T * d / (mB * mT * md)
    if attention.capabilities(r.spec.name).cost == 'N^2':
      scale *= max(1.0, T / mT)
    total += c.train.num_steps * m['summary']['step_s'] * scale
    total += m['summary']['wall_s'] - m['summary']['train_s']  # compiles, evals
  return total

