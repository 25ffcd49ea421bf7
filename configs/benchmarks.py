"""Foundation benchmarks: decoder throughput vs flax.nnx.MultiHeadAttention, blockwise vs dense.

Command:  python experiments/benchmarks.py --workdir=runs/bench
          (preset: --config=configs/benchmarks.py:quick; one field:
          --config.study.lengths=1024,4096; rebuild the report: add --report_only)
Runtime:  several minutes on a 2-core CPU for the default (T up to 16384); quick a minute or two.
Expected: blockwise faster than dense and far smaller in compiled peak memory at long T. An
          earlier run (then `python experiments/benchmarks.py --workdir=runs/bench`, 2-core
          shared CPU) measured at T=4096 blockwise 4.1x faster with 0.14x the peak memory, and
          at T=16384 dense needing 16.5 GB (not run) against blockwise's 577 MiB.

The throughput model and task are configs/induction.py's (2 layers, no MLP, T=64, batch 64).
"""
import ml_collections

from attnzoo.config import base_config

PRESETS = {
    '': dict(steps=50, rounds=3, lengths=(1024, 4096, 16384), repeats=3),
    'quick': dict(steps=10, rounds=1, lengths=(1024, 4096), repeats=2),
}


def get_config(preset: str = ''):
  if preset not in PRESETS:
    raise ValueError(f'preset={preset!r}: known presets: {", ".join(map(repr, PRESETS))}')
  c = base_config()
  c.model.num_layers = 2
  c.model.mlp = False
  c.study = ml_collections.ConfigDict()
  c.study.heads = 4  # blockwise vs dense: H and D; batch 1
  c.study.head_dim = 64
  c.study.causal = True
  c.study.update(PRESETS[preset])  # decoder steps and rounds; lengths and timed repeats
  return c
