"""Decode cost of MHA vs GQA vs MQA: per-token latency and KV-cache bytes against K/V heads.

  python experiments/decode_bench.py --workdir=runs/decode
  python experiments/decode_bench.py --workdir=runs/decode --config.study.length=8192 \
      --config.study.batch_size=4
  python experiments/decode_bench.py --workdir=runs/decode --config.study.variants=causal,blockwise
  python experiments/decode_bench.py --workdir=runs/decode --report_only

Writes decode.jsonl (one line per measured variant; a rerun skips measured ones), report.md and
decode.png. Settings: configs/decode_bench.py (`config.model.*`, `config.study.*`).
"""
import os

from absl import flags
from ml_collections import config_flags

from attnzoo import cli
from attnzoo.studies import decode

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'configs',
                           'decode_bench.py'), 'Study config file[:preset].', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for decode.jsonl, report.md and decode.png.')
flags.DEFINE_bool('report_only', False, 'Only rebuild the report from decode.jsonl.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  if not FLAGS.report_only:
    decode.run(FLAGS.config, FLAGS.workdir, log=lambda line: print(line, flush=True))
  print(decode.report(FLAGS.workdir))
  print(f'Results in {FLAGS.workdir}/: {decode.POINTS} (points), {decode.REPORT}, {decode.PLOT}')


if __name__ == '__main__':
  cli.run(main)
