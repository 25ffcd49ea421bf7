"""What every experiments/ script shares: absl's app.run with user errors as one line.

A user error (bad flag or config value, locked or incompatible workdir, divergence) prints
`error: ...` on one line and exits with status 2 (1 for divergence); `--verbose` shows the
traceback instead. absl's and JAX's start-up chatter (e.g. no TPU found) is kept quiet.
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags

from attnzoo.train import Diverged, RunError

flags.DEFINE_bool('verbose', False, 'Show tracebacks of user errors.')


def _one_line(e: BaseException) -> str:
  text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  return ' '.join(str(text).split())


def run(main):
  """app.run(main), printing user errors as one line."""
  verbose = any(a in ('--verbose', '--verbose=true', '--verbose=True') for a in sys.argv)
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.ERROR)
  started = []

  def wrapped(argv):
    started.append(True)
    from absl import logging as absl_logging  # noqa: PLC0415
    absl_logging.set_verbosity(absl_logging.WARNING)
    return main(argv)

  try:
    app.run(wrapped)
  except (RunError, Diverged, ValueError, KeyError) as e:
    if verbose or (isinstance(e, KeyError) and started):  # a KeyError in main is a bug
      raise
    where = '' if started else 'unknown config key ' if isinstance(e, KeyError) else ''
    print(f'error: {where}{_one_line(e)}', file=sys.stderr)
    sys.exit(1 if isinstance(e, Diverged) else 2)
