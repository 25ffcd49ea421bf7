"""Which runs the induction study trains: variant specs x depths -> named configs.

Specs are the shared `common.parse_spec` syntax (`causal`, `longformer:window=4`,
`causal:model.smear_keys=true`). Each spec trains `study.depths` (default a 2-layer model and a
1-layer control) unless it fixes the depth itself: `model.num_layers=N` trains that depth only,
and `model.smear_keys=true` trains 1 layer only (Olsson et al.'s question: does one layer with
smeared keys suffice?). `all` stands for every causal-capable registered variant.
"""
from __future__ import annotations

from typing import Any, Sequence

import ml_collections

from attnzoo import attention
from attnzoo import config as config_lib
from attnzoo.studies import common

# `all`: every causal-capable registered variant, minus presets identical to `causal` (same
# mechanism, same K/V heads), with these option sets for some mechanisms ...
ALL_OPTIONS = {
    'blockwise': ('block_k=16',),  # several key blocks at T=64 (the default is one block)
    'longformer': ('window=4', 'window=32'),  # windows below and above the period (8-24)
    'performer': ('num_features=16', 'num_features=128'),
}
DENSE_DUPLICATES = ('dense', 'cross')
# ... and these extra rows.
ALL_EXTRA = ('causal:model.smear_keys=true',)


def expand_all() -> list[str]:
  """The spec strings `all` stands for (dense causal first)."""
  out = []
  for name in attention.variant_names():
    if not attention.capabilities(name).causal or name in DENSE_DUPLICATES:
      continue
    out += [f'{name}:{o}' for o in ALL_OPTIONS[name]] if name in ALL_OPTIONS else [name]
  out.sort(key=lambda s: s.split(':')[0] != 'causal')
  return out + list(ALL_EXTRA)


def parse_variants(items: Sequence[str] | str,
                   model_defaults: dict[str, Any] | None = None) -> list[common.Spec]:
  """Flag values (comma-split or not) -> specs; `all` expands; variants must be causal."""
  if isinstance(items, str):
    items = items.split(',')
  texts = [t for item in items for t in (expand_all() if item.strip() == 'all' else [item])]
  specs = common.parse_specs(texts, model_defaults)
  for s in specs:
    attention.base.check(attention.capabilities(s.name).causal, 'variant spec', s.label,
                         f'{s.name} is not causal-capable')
  return specs


def depths(spec: common.Spec, config) -> tuple[int, ...]:
  model = dict(spec.model)
  if 'num_layers' in model:
    return (model['num_layers'],)
  if model.get('smear_keys'):
    return (1,)
  return tuple(config.study.depths)


def run_name(spec: common.Spec, layers: int) -> str:
  return f'{spec.slug}-L{layers}'


def make_plan(config: ml_collections.ConfigDict,
              specs: Sequence[common.Spec]) -> dict[str, ml_collections.ConfigDict]:
  """{run name: config}; each run's `study.variant` names its spec. `study.widths` and
  `study.seeds`, when given, multiply the runs (names get `-d<width>` and `-s<seed>`)."""
  widths, seeds = tuple(config.study.get('widths', ())), tuple(config.study.get('seeds', ()))
  plan = {}
  for spec in specs:
    for layers in depths(spec, config):
      for width in widths or (None,):
        for seed in seeds or (None,):
          c = common.with_spec(config, spec)
          config_lib.set_depth(c, layers)
          name = run_name(spec, layers)
          if width is not None:
            c.model.d_model, name = width, f'{name}-d{width}'
          if seed is not None:
            c.seed, name = seed, f'{name}-s{seed}'
          for key in ('variants', 'widths', 'seeds'):  # the plan's business, not the run's
            if key in c.study:
              del c.study[key]
          c.study.variant = spec.label
          plan[name] = c
  return plan
