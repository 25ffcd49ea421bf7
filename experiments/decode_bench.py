"""Decode cost of MHA vs GQA vs MQA: per-token latency and KV-cache bytes against num_kv_heads.

  python experiments/decode_bench.py --workdir=runs/decode
  python experiments/decode_bench.py --workdir=runs/decode --length=8192 --batch_size=4

One greedy decode step with the KV cache (attnzoo/decode.py) at position T-1 of a full cache,
for num_kv_heads G in {8, 4, 2, 1} of 8 heads (d_model 512, 4 layers, T=4096, batch 8 by
default); about a minute on a 2-core CPU. Writes results.jsonl (decode lines; a rerun skips
measured points), report.md and decode.png. Expected: KV bytes MHA / GQA-G = H / G exactly;
latency falls with G as the step reads less cache (Ainslie et al. 2023: GQA-8 5.4x and MQA
6.3x faster than MHA end to end on T5-XXL).
"""
import dataclasses

from absl import app, flags

from attnzoo import sweep

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for results.jsonl, report.md and decode.png.')
flags.DEFINE_integer('length', None, 'Context length T.')
flags.DEFINE_integer('batch_size', None, 'Sequences decoded at once.')
flags.DEFINE_integer('num_layers', None, 'Decoder layers.')
flags.DEFINE_integer('d_model', None, 'Model width.')
flags.DEFINE_integer('num_heads', None, 'Query heads H.')
flags.DEFINE_list('kv_heads', None, 'K/V head counts G (each divides H).')
flags.DEFINE_integer('repeats', None, 'Timed steps (median).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  overrides = {k: getattr(FLAGS, k) for k in ('length', 'batch_size', 'num_layers', 'd_model',
                                              'num_heads', 'repeats')}
  overrides['kv_heads'] = FLAGS.kv_heads and tuple(int(g) for g in FLAGS.kv_heads)
  decode = dataclasses.replace(sweep.DecodeSettings(),
                               **{k: v for k, v in overrides.items() if v is not None})
  settings = dataclasses.replace(sweep.FULL, tasks=(), mqar_points=(), decode=decode)
  sweep.run(FLAGS.workdir, settings, log=lambda line: print(line, flush=True))
  print(sweep.report(FLAGS.workdir))


if __name__ == '__main__':
  app.run(main)
