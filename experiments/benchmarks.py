"""Foundation benchmarks: decoder training throughput vs flax.nnx.MultiHeadAttention, and
blockwise vs dense exact attention (time and compiled peak memory).

  python experiments/benchmarks.py --workdir=runs/bench
  python experiments/benchmarks.py --workdir=runs/bench_quick --config=configs/benchmarks.py:quick
  python experiments/benchmarks.py --workdir=runs/bench --report_only

Writes benchmarks.jsonl (one line per measurement; a rerun skips measured ones), report.md and
benchmarks.png. Settings: configs/benchmarks.py (`config.model/task/train.*`, `config.study.*`).
"""
import os

from absl import flags
from ml_collections import config_flags

from attnzoo import cli
from attnzoo.studies import benchmarks

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'configs',
                           'benchmarks.py'), 'Study config file[:preset].', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for benchmarks.jsonl, report.md and the plot.')
flags.DEFINE_bool('report_only', False, 'Only rebuild the report from benchmarks.jsonl.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  if not FLAGS.report_only:
    benchmarks.run(FLAGS.config, FLAGS.workdir, log=lambda line: print(line, flush=True))
  print(benchmarks.report(FLAGS.workdir))
  print(f'Results in {FLAGS.workdir}/: {benchmarks.POINTS} (points), {benchmarks.REPORT}, '
        f'{benchmarks.PLOT}')


if __name__ == '__main__':
  cli.run(main)
