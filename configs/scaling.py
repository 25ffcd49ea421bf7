"""Scaling: forward+backward time and compiled peak memory of every attention variant vs T.

Command:  python experiments/scaling.py --workdir=runs/scaling
          (preset: --config=configs/scaling.py:quick; one field: --config.study.lengths=512,1024;
          rebuild the report from scaling.jsonl: add --report_only)
Runtime:  tens of minutes for the default (T = 512 ... 16384) on a 2-core CPU, dense alone
          needing several GiB at 16384; quick (T <= 4096, 2 repeats) a few minutes.
Expected: per-sequence log–log slopes near 2 for dense and near 1 for longformer, linformer,
          performer and reformer. An earlier run of the default settings (then
          `python experiments/scaling.py --workdir=runs/scaling`, 2-core shared CPU; report in
          docs/results/scaling/) measured dense time 2.6 / memory 1.9, the four 0.9–1.1, all
          four faster than dense by T=1024, and dense over the time budget at 16384.
"""
import ml_collections

from attnzoo.studies import scaling

# Options over each variant's defaults at these lengths (Linformer's max_len follows T).
OPTIONS = {'longformer': 'window=128', 'linformer': 'proj_dim=256'}  # k of the paper, long T
PRESETS = {
    '': dict(lengths=(512, 1024, 2048, 4096, 8192, 16384), repeats=5, time_budget_s=30.0),
    'quick': dict(lengths=(512, 1024, 2048, 4096), repeats=2, time_budget_s=15.0),
}


def get_config(preset: str = ''):
  if preset not in PRESETS:
    raise ValueError(f'preset={preset!r}: known presets: {", ".join(map(repr, PRESETS))}')
  c = ml_collections.ConfigDict()
  c.study = ml_collections.ConfigDict()
  # Comma-joined variant specs `name[:key=value,...]`: every variant but the presets of dense.
  c.study.variants = ','.join(f'{n}:{OPTIONS[n]}' if n in OPTIONS else n
                              for n in scaling.default_variants())
  c.study.tokens = 16384  # B·T, so B = max(1, tokens // T)
  c.study.heads = 4
  c.study.head_dim = 64
  c.study.max_bytes = 0  # compiled peak above this is recorded as `oom`; 0 = from the device
  c.study.update(PRESETS[preset])  # lengths; repeats; a step slower than time_budget_s stops
  return c                         # the variant's larger lengths
