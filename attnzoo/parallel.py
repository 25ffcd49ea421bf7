"""The device mesh from the config and how a batch lies on it.

Two axes: `data` (batch split, parameters replicated) and `seq` (sequence split; the `ring`
attention variant passes K/V around it, other layers act per token). `config.mesh.data = -1`
takes all devices not used by `seq`, so the same config runs on 1 CPU, 8 fake CPU devices, a
GPU host or many hosts (after `jax.distributed.initialize()`).
"""
from __future__ import annotations

import jax
import ml_collections
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ('data', 'seq')


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int]:
  """(data, seq) for `num_devices` devices; ValueError naming the field if they do not fit."""
  mesh = config.get('mesh') or {'data': -1, 'seq': 1}  # configs saved before `mesh` existed
  seq, data = mesh['seq'], mesh['data']
  if not isinstance(seq, int) or seq < 1:
    raise ValueError(f'mesh.seq={seq!r}: must be an int >= 1')
  if data == -1:
    if num_devices % seq:
      raise ValueError(f'mesh.seq={seq}: must divide the {num_devices} devices')
    data = num_devices // seq
  if not isinstance(data, int) or data < 1 or data * seq != num_devices:
    raise ValueError(f'mesh.data={data!r} x mesh.seq={seq}: the product must equal the '
                     f'{num_devices} devices (mesh.data=-1 takes all the devices seq leaves)')
  seq_len, batch = config.task.seq_len, config.train.batch_size
  if seq_len % seq:
    raise ValueError(f'task.seq_len={seq_len}: must be divisible by mesh.seq={seq}')
  if batch % data:
    raise ValueError(f'train.batch_size={batch}: must be divisible by mesh.data={data}')
  return data, seq


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """The ('data', 'seq') mesh over all devices (of all processes); checked before compiling."""
  shape = mesh_shape(config, jax.device_count())
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[B, T] host arrays: batch over `data`, positions over `seq`."""
  return NamedSharding(mesh, P('data', 'seq'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
