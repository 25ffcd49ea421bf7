"""The base ConfigDict every configs/*.py file starts from.

`model.attention` holds `name` plus one sub-dict of options per registered variant, filled
from each variant's defaults, so `--config.model.attention.name=performer` swaps the variant
without losing another variant's options, and new variants appear here automatically.
"""
from __future__ import annotations

import importlib.util
import math
import os

import ml_collections

from attnzoo import attention


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def config_file(name: str, *args) -> ml_collections.ConfigDict:
  """`get_config(*args)` of configs/<name>.py (loaded by path: configs/ is not a package)."""
  spec = importlib.util.spec_from_file_location(f'configs.{name}',
                                                os.path.join(CONFIGS, f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def set_depth(config: ml_collections.ConfigDict, num_layers: int) -> None:
  """config.model.num_layers = num_layers, keeping only the RoPE-free layers (`nope_layers`)
  that the shallower or deeper model has (a study's 1-layer control of a 2-layer config)."""
  config.model.num_layers = num_layers
  config.model.nope_layers = tuple(i for i in config.model.get('nope_layers', ())
                                   if i < num_layers)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.task = ml_collections.ConfigDict()
  c.task.name = 'induction'
  c.task.seq_len = 64
  c.task.vocab_size = 64
  c.task.min_period = 8
  c.task.max_period = 24
  c.task.max_prefix = 0  # induction: up to this many random tokens before the repeats
  c.task.max_gap = 0  # induction: up to this many random tokens after the first copy
  c.task.random_positions = 0  # RoPE: train at sorted random positions in 0..this-1

  c.model = ml_collections.ConfigDict()
  c.model.num_layers = 2
  c.model.d_model = 64
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.model.mlp = False
  c.model.positions = 'learned'
  c.model.max_len = 64
  c.model.causal = True
  c.model.smear_keys = False
  c.model.nope_layers = ()  # with positions='rope': 0-based layers that skip it
  c.model.rope_fraction = 1.0  # with positions='rope': the fraction of frequencies kept
  c.model.scalable_softmax = False  # queries scaled by log(keys seen): needs causal
  c.model.attention = ml_collections.ConfigDict({'name': 'causal'})
  for name in attention.variant_names():
    c.model.attention[name] = attention.default_options(name)

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.batch_size = 64
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 50
  c.train.weight_decay = 0.0
  c.train.grad_clip = 1.0
  c.train.eval_every = 100
  c.train.eval_batches = 4
  c.train.checkpoint_every = 500
  c.train.stop_after = 0  # > 0: stop (checkpointed) after this step, e.g. to split a run

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # batch split over this many devices; -1: all the devices seq leaves
  c.mesh.seq = 1  # sequence split over this many devices (ring attention)
  return c


# ---- validation: every value checked before anything is written or compiled -------------------

def _number(config, field: str, *, kind=int, low=None, high=None, low_open: bool = False):
  """config[field] (dotted) is a `kind` (bool is not an int) within [low, high] (or (low, ...))."""
  value = config
  for part in field.split('.'):
    if part not in value:
      return  # optional field
    value = value[part]
  ok_type = isinstance(value, kind if kind is int else (int, float)) and not isinstance(value, bool)
  attention.base.check(ok_type, field, value, f'expected {"an int" if kind is int else "a number"}')
  attention.base.check(math.isfinite(value), field, value, 'must be finite')
  if low is not None:
    attention.base.check(value > low if low_open else value >= low, field, value,
                         f'must be {">" if low_open else ">="} {low}')
  if high is not None:
    attention.base.check(value <= high, field, value, f'must be <= {high}')


def validate(config: ml_collections.ConfigDict, *, num_devices: int = 1):
  """Raises ValueError naming the first bad field and its value; cheap (no tracing)."""
  from attnzoo import train  # noqa: PLC0415

  for field, low in (('seed', 0), ('train.num_steps', 1), ('train.batch_size', 1),
                     ('train.warmup_steps', 0), ('train.eval_every', 1),
                     ('train.eval_batches', 1), ('train.checkpoint_every', 1),
                     ('train.stop_after', 0), ('task.seq_len', 1), ('task.vocab_size', 2),
                     ('model.num_layers', 1), ('model.d_model', 1), ('model.num_heads', 1),
                     ('model.num_kv_heads', 1), ('model.max_len', 1)):
    _number(config, field, low=low)
  _number(config, 'train.learning_rate', kind=float, low=0, low_open=True)
  _number(config, 'train.grad_clip', kind=float, low=0, low_open=True)
  _number(config, 'train.weight_decay', kind=float, low=0)
  _number(config, 'train.final_lr_fraction', kind=float, low=0, high=1)
  _number(config, 'model.rope_fraction', kind=float, low=0, high=1, low_open=True)
  t, m = config.train, config.model
  attention.base.check(t.batch_size % num_devices == 0, 'train.batch_size', t.batch_size,
                       f'must be divisible by the {num_devices} data-parallel devices')
  attention.base.check(m.d_model % m.num_heads == 0, 'model.d_model', m.d_model,
                       f'must be divisible by model.num_heads={m.num_heads}')
  attention.base.check(m.num_heads % m.num_kv_heads == 0, 'model.num_kv_heads', m.num_kv_heads,
                       f'must divide model.num_heads={m.num_heads}')
  from attnzoo.model import POSITIONS  # noqa: PLC0415
  attention.base.check(m.get('positions', 'learned') in POSITIONS, 'model.positions',
                       m.get('positions'), f'expected one of {POSITIONS}')
  rp = config.task.get('random_positions', 0)
  attention.base.check(isinstance(rp, int) and (rp == 0 or rp >= config.task.seq_len),
                       'task.random_positions', rp,
                       f'expected 0 or an int >= task.seq_len={config.task.seq_len}')
  attention.base.check(not rp or m.get('positions') == 'rope', 'task.random_positions', rp,
                       f'needs model.positions=rope (got {m.get("positions")})')
  nope = tuple(m.get('nope_layers', ()))
  attention.base.check(all(isinstance(i, int) and 0 <= i < m.num_layers for i in nope),
                       'model.nope_layers', nope,
                       f'expected layer indices in 0..{m.num_layers - 1}')
  name = m.attention.name
  attention.get(name)  # unknown names list the known ones
  caps = attention.capabilities(name)
  causal = m.get('causal', True)
  attention.base.check(isinstance(causal, bool), 'model.causal', causal, 'expected a bool')
  ssmax = m.get('scalable_softmax', False)
  attention.base.check(isinstance(ssmax, bool), 'model.scalable_softmax', ssmax, 'expected a bool')
  attention.base.check(causal or not ssmax, 'model.scalable_softmax', ssmax,
                       'scales a query by its causal key count: needs model.causal=True')
  attention.base.check(not causal or caps.causal, 'model.attention.name', name,
                       'variant is not causal-capable; use model.causal=False')
  options = dict(m.attention.get(name, {}))
  try:
    attention.base.make_options(name, **options)
  except TypeError as e:
    raise ValueError(f'model.attention.{name}: {e}') from None
  max_len = options.get('max_len')
  if max_len is not None:
    attention.base.check(config.task.seq_len <= max_len, f'model.attention.{name}.max_len',
                         max_len, f'shorter than task.seq_len={config.task.seq_len}')
  # The task's own checks (lengths, periods, pairs): one tiny batch, NumPy only.
  train.batch_for(config, 0, batch_size=1)
