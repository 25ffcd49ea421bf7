"""The one Orbax wrapper: save and restore an nnx state (model + optimizer) by step.

PRNG key arrays are stored as their raw key data and rewrapped on restore, so the random
streams of random variants (Reformer, Performer) resume exactly.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from flax import nnx


def _is_key(x):
  return hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_saveable(state):
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x,
                      nnx.to_pure_dict(state))


class Checkpointer:
  """Keeps the newest `max_to_keep` checkpoints of a run under workdir/checkpoints."""

  def __init__(self, workdir: str, max_to_keep: int = 2):
    self.manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, 'checkpoints')),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state):
    self.manager.save(step, args=ocp.args.StandardSave(_to_saveable(state)))
    self.manager.wait_until_finished()

  def restore(self, state, step: int | None = None):
    """Restores into a state of the same structure (its arrays give shapes and shardings)."""
    step = self.manager.latest_step() if step is None else step
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saveable(state))
    pure = self.manager.restore(step, args=ocp.args.StandardRestore(target))
    template = nnx.to_pure_dict(state)
    pure = jax.tree.map(
        lambda t, x: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x,
        template, pure)
    nnx.replace_by_pure_dict(state, pure)
    return state

  def close(self):
    self.manager.close()
