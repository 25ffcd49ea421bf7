"""Decode cost of MHA vs GQA vs MQA: per-token latency and KV-cache bytes against K/V heads.

Command:  python experiments/decode_bench.py --workdir=runs/decode
          (preset: --config=configs/decode_bench.py:quick; a longer context:
          --config.study.length=8192; rebuild the report: add --report_only)
Runtime:  about a minute for the default (T=4096, batch 8, 4 layers) on a 2-core CPU.
Expected: KV bytes MHA / GQA-G = H / G exactly; latency falls with G as the step reads less
          cache, by less than H / G on a CPU (compute-bound at small R = H / G); Ainslie et
          al. 2023 measure GQA-8 5.4x and MQA 6.3x faster than MHA end to end on T5-XXL (TPU).
"""
import ml_collections

from attnzoo.config import base_config

PRESETS = {
    '': dict(length=4096, batch_size=8, num_layers=4),
    'quick': dict(length=4096, batch_size=4, num_layers=2),
}


def get_config(preset: str = ''):
  if preset not in PRESETS:
    raise ValueError(f'preset={preset!r}: known presets: {", ".join(map(repr, PRESETS))}')
  settings = dict(PRESETS[preset])
  c = ml_collections.ConfigDict()
  c.model = base_config().model  # the decoder; a variant spec may override model.* fields
  c.model.update(vocab_size=256, d_model=512, num_heads=8, num_kv_heads=8, mlp=True,
                 positions='rope', num_layers=settings.pop('num_layers'))
  c.study = ml_collections.ConfigDict()
  # Comma-joined variant specs: G = 8 (MHA), 4 and 2 (GQA), 1 (MQA) K/V heads of 8.
  c.study.variants = 'causal,gqa:model.num_kv_heads=4,gqa:model.num_kv_heads=2,mqa'
  c.study.length = settings.pop('length')  # context T: the timed step is the last position
  c.study.batch_size = settings.pop('batch_size')
  c.study.repeats = 10  # timed steps (median)
  return c
