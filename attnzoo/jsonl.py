"""JSON lines, the one format for metrics and results in a workdir (one object per line).

Crash-safe: a row is appended with one write of a whole line, so a kill leaves at most a torn
last line, which `read` drops (with a warning) and removes from the file; `write` replaces a
file atomically (temporary file + rename).
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any


def read(path: str) -> list[dict[str, Any]]:
  """All rows of `path`, or [] if it does not exist yet. A torn (unparsable) last line is
  dropped from the file with a warning; an unparsable line before it is an error."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split('\n')
  rows = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      if any(rest.strip() for rest in lines[i + 1:]):
        raise ValueError(f'{path}: line {i + 1} is not JSON (and is not the last line): '
                         f'{line[:80]!r}') from None
      warnings.warn(f'{path}: dropped a torn last line (an interrupted write): {line[:80]!r}')
      write(path, rows)
      return rows
  if lines[-1]:  # the last row has no newline: end it, so the next append starts a line
    write(path, rows)
  return rows


def append(path: str, *rows: dict[str, Any]):
  text = ''.join(json.dumps(r) + '\n' for r in rows)
  with open(path, 'a') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def write(path: str, rows):
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
