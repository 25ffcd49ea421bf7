"""JSON lines, the one format for metrics and results in a workdir (one object per line)."""
from __future__ import annotations

import json
import os
from typing import Any


def read(path: str) -> list[dict[str, Any]]:
  """All rows of `path`, or [] if it does not exist yet."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def append(path: str, *rows: dict[str, Any]):
  with open(path, 'a') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)


def write(path: str, rows):
  with open(path, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
