"""Induction-head emergence (Olsson et al. 2022) for every causal attention variant.

For each variant spec (see `plan`), attention-only decoders of `study.depths` layers (default
2 and a 1-layer control) are trained on the `induction` task through the one training loop,
each into `<workdir>/<run>/` as a normal run (config.json, metrics.jsonl, summary.json,
checkpoints/; `attnzoo.load_run(<run dir>)` gives the model back). The `hooks.Scores` hook adds
every head's scores at every eval (`split='scores'` rows) and ablations, offset histograms and
attention.npz at the end. `report(workdir)` builds report.md, report.json, curves.png and
attention_<variant>.png from those files alone.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import ml_collections

from attnzoo.studies import common
from attnzoo.studies.induction.hooks import Scores
from attnzoo.studies.induction.plan import make_plan, parse_variants
from attnzoo.studies.induction.report import VARIANTS, outputs, report


def run(config: ml_collections.ConfigDict, workdir: str,
        variants: Sequence[str] | str | None = None, *,
        log: Callable[[str], None] = print) -> str:
  """Trains every run of `variants` (default `config.study.variants`; finished runs are reused,
  interrupted ones resume), writes the report and returns its Markdown. Failed runs are
  reported and raise at the end."""
  specs = parse_variants(config.study.variants if variants is None else variants,
                         dict(config.model))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, VARIANTS), 'w') as f:
    json.dump([s.label for s in specs], f)
  plan = make_plan(config, specs)
  failed = common.run_plan(plan, workdir, lambda c: [Scores(c)], log=log)
  common.write_explorers(workdir, plan, log=log)
  text = report(workdir)
  if failed:
    raise RuntimeError(f'runs failed: {", ".join(failed)} (see <run>/error.txt)')
  return text
