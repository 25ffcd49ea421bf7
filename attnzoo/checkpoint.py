"""The one Orbax wrapper: save and restore an nnx state (model + optimizer) by step.

PRNG key arrays are stored as their raw key data and rewrapped on restore, so the random
streams of random variants (Reformer, Performer) resume exactly. Orbax writes each checkpoint
into a temporary directory and renames it when complete, so a kill mid-save leaves no
half-checkpoint behind; `restore_newest` falls back past checkpoints that do not restore
(deleted or scrambled files), moving each aside to `checkpoints.bad/` and saying why.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import warnings

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

  def __init__(self, workdir: str, max_to_keep: int = 2, create: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    if not create and not os.path.isdir(self.directory):
      raise ValueError(f'workdir={workdir!r}: no checkpoints/ directory (not a training run, '
                       'or it never reached its first checkpoint)')
    # Orbax logs every save and restore at INFO; keep a user's console for progress.
    logging.getLogger('absl').setLevel(logging.WARNING)
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

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

  def restore_newest(self, state, *, set_aside: bool = True):
    """(step, state) from the newest checkpoint that restores, or (None, state) if none does.
    Each one that fails is reported (warning) and, if `set_aside`, moved to checkpoints.bad/."""
    for step in reversed(self.steps()):
      try:
        return step, self.restore(state, step)
      except Exception as e:  # noqa: BLE001  (any corruption: missing or scrambled files)
        reason = f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'
        where = ''
        # A failed restore can leave the manager's item handlers confused: start afresh.
        self.manager.close()
        self.manager = ocp.CheckpointManager(self.directory, options=self._options)
        if set_aside:
          bad = os.path.join(self.workdir, 'checkpoints.bad', f'{step}-{int(time.time())}')
          os.makedirs(os.path.dirname(bad), exist_ok=True)
          shutil.move(os.path.join(self.directory, str(step)), bad)
          self.manager.reload()
          where = f'; moved to {os.path.relpath(bad, self.workdir)}'
        warnings.warn(f'checkpoint at step {step} does not restore, skipped ({reason}){where}')
    return None, state

  def close(self):
    self.manager.close()
